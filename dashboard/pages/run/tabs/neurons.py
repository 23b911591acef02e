"""Neuron-norms tab: per-row update norms of one layer at a step, NorMuon's v and row-RMS spread,
and every layer's CV / frozen fraction over time."""

from __future__ import annotations

from dash import Input, State, html

from .... import figures as F
from .... import ids
from ....components import graph
from ....queries import Catalog, array_at
from ....series import X_STEP, X_TITLES
from ....state import current_api, current_config
from .. import keep_view
from .base import Registrar, Tab, layer_heatmap, only_on
from .lines import per_layer_lines

HINT = "no neuron update norms logged yet — probe.attach(...) logs per-row update norms of 2-D layers"


def body() -> html.Div:
    return html.Div([
        html.Div([graph(ids.RUN_NEURON_DIST), graph(ids.RUN_NEURON_V)], className="grid2"),
        html.Div([graph(ids.RUN_NEURON_CV), graph(ids.RUN_NEURON_FROZEN)], className="grid2"),
        graph(ids.RUN_NEURON_ROWS),
    ])


def _has_data(catalog: Catalog) -> bool:
    return bool(catalog.array_layers("neuron.update_norm") or catalog.layers_with("neuron.cv"))


TAB = Tab("neurons", "Neuron norms", frozenset({"layer", "step", "rows"}), HINT, body, has_data=_has_data,
          enable="neuron_every=")


def distribution(layer, step, tab, run_id, keys):
    """Per-row update norms of one layer at the chosen step, and NorMuon's v when logged."""
    only_on(tab, "neurons")
    catalog = Catalog.from_store(keys)
    api = current_api()
    dist_title = f"neuron update norms — {layer or 'no layer'}"
    got = (array_at(api, run_id, "neuron.update_norm", layer, step)
           if layer and "neuron.update_norm" in catalog.arrays else None)
    dist = (F.distribution_figure([(f"step {got[0]}", got[1])], title=f"{dist_title} (step {got[0]})",
                                  x_title="‖ΔW_row‖₂ (L2 norm of a neuron's update)")
            if got else F.empty_figure(dist_title, HINT))
    v_title = f"NorMuon second moment v — {layer or 'no layer'}"
    got_v = array_at(api, run_id, "normuon.v", layer, step) if layer and "normuon.v" in catalog.arrays else None
    vfig = (F.distribution_figure([(f"step {got_v[0]}", got_v[1])], title=f"{v_title} (step {got_v[0]})",
                                  x_title="v (per-neuron second moment)", log_x=True)
            if got_v else F.empty_figure(v_title, "no NorMuon v logged — it exists for runs using probe.optim.NorMuon"))
    return dist, vfig


def summary(_state, tab, rows, run_id, keys):
    """CV and frozen fraction of neuron update norms over time, all layers."""
    only_on(tab, "neurons")
    catalog = Catalog.from_store(keys)
    api, bins = current_api(), current_config().layer_grid_bins
    out = []
    for quantity, title, unit, z_range in (
            ("neuron.cv", "coefficient of variation of neuron update norms — all layers", "CV (std/mean)", None),
            ("neuron.frozen_frac", "frozen-neuron fraction — all layers", "fraction frozen", (0.0, 1.0))):
        layers = catalog.layers_with(quantity)
        if not layers:
            out.append(F.empty_figure(title, HINT))
            continue
        out.append(layer_heatmap(api, run_id, quantity, layers, rows=rows, bins=bins, title=title, unit=unit,
                                 z_range=z_range))
    return out


def row_rms(layer, state, tab, run_id):
    """NorMuon's row-RMS spread of O (before) and Ô (after its row normalization) for one layer."""
    only_on(tab, "neurons")
    title = f"NorMuon: row-RMS spread of O and Ô — {layer or 'no layer'}"
    if not layer:
        return F.empty_figure(title, HINT)
    lines = per_layer_lines("normuon", ["row_rms_cv_before", "row_rms_cv_after"], layer, X_STEP,
                            (state or {}).get("created_at"), run_id)
    return F.line_figure(lines, title=title, x_title=X_TITLES[X_STEP], y_title="CV of row RMS",
                         empty_message="no row-RMS spread logged — it is measured for probe.optim.NorMuon",
                         uirevision=f"{run_id}:rows:{layer}")


def register(app: Registrar) -> None:
    app.callback(
        keep_view.output(ids.RUN_NEURON_DIST), keep_view.output(ids.RUN_NEURON_V),
        Input(ids.RUN_LAYER, "value"), Input(ids.RUN_STEP, "value"), Input(ids.RUN_TABS, "value"),
        State(ids.RUN_ID, "data"), State(ids.RUN_KEYS, "data"),
    )(distribution)
    app.callback(
        keep_view.output(ids.RUN_NEURON_CV), keep_view.output(ids.RUN_NEURON_FROZEN),
        Input(ids.RUN_STATE, "data"), Input(ids.RUN_TABS, "value"), Input(ids.RUN_ROWS, "value"),
        State(ids.RUN_ID, "data"), State(ids.RUN_KEYS, "data"),
    )(summary)
    app.callback(
        keep_view.output(ids.RUN_NEURON_ROWS),
        Input(ids.RUN_LAYER, "value"), Input(ids.RUN_STATE, "data"), Input(ids.RUN_TABS, "value"),
        State(ids.RUN_ID, "data"),
    )(row_rms)
