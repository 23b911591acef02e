"""KFAC tab: factor eigenvalue ranges, relative damping and KL clip, factor spectra at a step."""

from __future__ import annotations

from dash import Input, State, html

from .... import figures as F
from .... import ids
from ....components import graph
from ....queries import Catalog, array_at, x_lines
from ....series import X_STEP, X_TITLES
from ....state import current_api
from .. import keep_view
from .base import Registrar, Tab, only_on
from .lines import per_layer_lines

HINT = ("no KFAC internals logged yet — they appear for runs using probe.optim.KFAC or FOP "
        "(probe.attach(..., internals_every=10))")


def body() -> html.Div:
    return html.Div([
        html.Div([graph(ids.RUN_KFAC_EIGS), graph(ids.RUN_KFAC_DAMPING)], className="grid2"),
        graph(ids.RUN_KFAC_SPECTRUM),
    ])


def _has_data(catalog: Catalog) -> bool:
    return bool(catalog.layers_with_prefix("kfac.") or catalog.array_layers("kfac.A_eigs"))


TAB = Tab("kfac", "KFAC", frozenset({"layer", "step", "x"}), HINT, body, has_data=_has_data,
          enable="internals_every= (probe.optim.KFAC or FOP)")


def panels(layer, x, step, state, tab, run_id, keys):
    """Factor eigenvalue ranges and relative damping of one layer; the KL-clip factor; factor spectra."""
    only_on(tab, "kfac")
    if not layer:
        return [F.empty_figure(t, HINT) for t in ("factor eigenvalue ranges", "damping", "factor spectra")]
    x = x or X_STEP
    origin = (state or {}).get("created_at")
    xt = X_TITLES[x]
    eigs = F.line_figure(per_layer_lines("kfac", ["A_eig_min", "A_eig_max", "G_eig_min", "G_eig_max"], layer, x,
                                         origin, run_id),
                         title=f"KFAC factor eigenvalue ranges — {layer}", x_title=xt, y_title="eigenvalue",
                         log_y=True, empty_message=HINT, uirevision=f"{run_id}:kf1:{layer}:{x}")
    api = current_api()
    damping_lines = per_layer_lines("kfac", ["damping_rel", "damping_rel_mean"], layer, x, origin, run_id)
    damping_lines += x_lines(api, run_id, ["kfac.kl_nu"], x=x, origin=origin,
                             names={"kfac.kl_nu": "KL clip ν (global)"})
    damping = F.line_figure(damping_lines, title=f"relative damping and KL clip — {layer}", x_title=xt,
                            y_title="ratio", log_y=True, empty_message=HINT, uirevision=f"{run_id}:kf2:{layer}:{x}")
    spectra = []
    for key, name in (("kfac.A_eigs", "A (activations)"), ("kfac.G_eigs", "G (gradients)")):
        got = array_at(api, run_id, key, layer, step)
        if got:
            spectra.append((f"{name} @ step {got[0]}", got[1]))
    # eigh returns eigenvalues in ascending order and the probe logs them as they come
    spec = F.spectrum_figure(spectra, title=f"KFAC factor eigenvalues — {layer}", y_title="eigenvalue λᵢ",
                             x_title="index i (ascending λ)", empty_message=HINT,
                             uirevision=f"{run_id}:kf3:{layer}")
    return eigs, damping, spec


def register(app: Registrar) -> None:
    app.callback(
        keep_view.output(ids.RUN_KFAC_EIGS), keep_view.output(ids.RUN_KFAC_DAMPING),
        keep_view.output(ids.RUN_KFAC_SPECTRUM),
        Input(ids.RUN_LAYER, "value"), Input(ids.RUN_X, "value"), Input(ids.RUN_STEP, "value"),
        Input(ids.RUN_STATE, "data"), Input(ids.RUN_TABS, "value"),
        State(ids.RUN_ID, "data"), State(ids.RUN_KEYS, "data"),
    )(panels)
