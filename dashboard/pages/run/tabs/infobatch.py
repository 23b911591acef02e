"""InfoBatch tab: the per-epoch ledger (pruned fraction, cumulative saving, threshold, per class)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from dash import Input, State, html

from .... import figures as F
from .... import ids
from ....components import graph
from ....queries import Catalog, array_at
from ....state import current_api
from .. import keep_view
from .base import Registrar, Tab, only_on

HINT = ("no InfoBatch ledger logged yet — wrap your dataset with probe.data.InfoBatch and pass it to "
        "probe.attach(..., infobatch=...)")
PRUNED = "infobatch.pruned_frac"


def body() -> html.Div:
    return html.Div([
        html.Div([graph(ids.RUN_IB_PRUNED), graph(ids.RUN_IB_SAVED)], className="grid2"),
        html.Div([graph(ids.RUN_IB_THRESHOLD), graph(ids.RUN_IB_CLASS)], className="grid2"),
    ])


def _has_data(catalog: Catalog) -> bool:
    return any(k.startswith("infobatch.") for k in catalog.globals) or "infobatch.class_pruned_frac" in catalog.arrays


TAB = Tab("infobatch", "InfoBatch", frozenset({"step"}), HINT, body, has_data=_has_data, enable="infobatch=")


def pruning_epoch(epochs: Sequence[int], pruned: Sequence[float]) -> int | None:
    """The epoch the per-class view opens on: the last one that pruned anything (InfoBatch's final
    annealing epochs prune nothing, so "the latest" opened on an empty chart)."""
    hits = [e for e, v in zip(epochs, pruned) if math.isfinite(v) and v > 0]
    return hits[-1] if hits else (epochs[-1] if epochs else None)


def panels(epoch, _state, tab, run_id):
    """InfoBatch's ledger per epoch: pruned fraction, cumulative saved, threshold, per-class rate."""
    only_on(tab, "infobatch")
    api = current_api()
    keys = [PRUNED, "infobatch.saved_frac_cum", "infobatch.threshold"]
    found = {s["key"]: s for s in api.series([run_id], keys, x="step", points=5000)}

    def xy(key):
        s = found.get(key) or {"steps": [], "y": []}
        return s["steps"], s["y"]

    pruned = F.bar_figure(*xy(PRUNED), title="pruned fraction per epoch", x_title="epoch",
                          y_title="fraction of samples pruned", empty_message=HINT)
    steps, vals = xy("infobatch.saved_frac_cum")
    saved = F.line_figure([F.Line("saved (cumulative)", steps, vals)], title="cumulative fraction of samples saved",
                          x_title="epoch", y_title="fraction saved", empty_message=HINT)
    steps, vals = xy("infobatch.threshold")
    # The first epoch has no scores yet, so InfoBatch has no threshold there: that is not a
    # non-finite measurement and is left out of the line rather than marked as one.
    title = "pruning threshold (mean score)"
    if steps and not math.isfinite(vals[0]):
        steps, vals = steps[1:], vals[1:]
        title += " — none in the first epoch (no scores yet)"
    threshold = F.line_figure([F.Line("threshold", steps, vals)], title=title, x_title="epoch",
                              y_title="score (loss)", empty_message=HINT)
    if epoch is None:
        epoch = pruning_epoch(*xy(PRUNED))
    got = array_at(api, run_id, "infobatch.class_pruned_frac", "", epoch)
    cls = (F.bar_figure(list(range(len(got[1]))), got[1], title=f"pruned fraction per class (epoch {got[0]})",
                        x_title="class", y_title="fraction pruned")
           if got else F.empty_figure("pruned fraction per class", HINT + " (with labels known)"))
    return pruned, saved, threshold, cls


def register(app: Registrar) -> None:
    app.callback(
        keep_view.output(ids.RUN_IB_PRUNED), keep_view.output(ids.RUN_IB_SAVED),
        keep_view.output(ids.RUN_IB_THRESHOLD), keep_view.output(ids.RUN_IB_CLASS),
        Input(ids.RUN_STEP, "value"), Input(ids.RUN_STATE, "data"), Input(ids.RUN_TABS, "value"),
        State(ids.RUN_ID, "data"),
    )(panels)
