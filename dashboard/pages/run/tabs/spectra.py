"""Spectra tab: one layer's singular values over steps and at a step, and every layer's spectral
metric as a layer x step heatmap."""

from __future__ import annotations

from dash import Input, State, html

from .... import figures as F
from .... import ids
from ....components import graph
from ....queries import SV_METRICS, Catalog, array_at, array_matrix
from ....state import current_api, current_config
from .. import keep_view
from .base import Registrar, Tab, layer_heatmap, only_on

HINT = ("no spectra logged yet — enable them with probe.attach(model, optimizer, run=run), which logs "
        "singular values of 2-D weights on its spectra cadence (spectra_every=)")
MUON_SUMMARIES = {  # spectra-tab summaries that belong to the Muon family: (quantity, title)
    "not_lifted": ("sv.pre_orth.not_lifted",
                   "momentum directions Newton–Schulz does not lift (σ < 1e-3·‖U‖_F) — all layers"),
    "orth_err": ("orth_err", "orthogonality error ‖OOᵀ−I‖_F/√k — all layers"),
}
SUMMARY_METRICS = (*SV_METRICS, *MUON_SUMMARIES)
UNITS = {"cond": "σmax/σmin", "stable_rank": "‖W‖F²/‖W‖2²", "spectral_norm": "σmax", "eff_rank": "exp(entropy)",
         "orth_err": "error", "not_lifted": "fraction of σ"}


def body() -> html.Div:
    return html.Div([
        html.Div([graph(ids.RUN_SPEC_HEATMAP), graph(ids.RUN_SPEC_AT_STEP)], className="grid2"),
        graph(ids.RUN_SPEC_SUMMARY),
    ])


def _has_data(catalog: Catalog) -> bool:
    """Spectra arrays, or only their per-layer measures (``sv.<S>.cond/L``, ``orth_err/L``)."""
    return bool(catalog.sv_sources() or any(q.startswith("sv.") or q == "orth_err" for q in catalog.quantities))


TAB = Tab("spectra", "Spectra", frozenset({"layer", "source", "step", "metric", "rows"}), HINT, body,
          has_data=_has_data, enable="spectra_every=")


def src_label(source: str | None) -> str:
    return {"weight": "W", "update": "ΔW", "pre_orth": "momentum before orthogonalization",
            "post_orth": "orthogonalized update"}.get(source or "", source or "?")


def heatmap(layer, source, _state, tab, run_id):
    """Step x singular-value-index heatmap of one layer (log colour); one logged step is drawn as the
    spectrum it is (a one-column heatmap got a −0.4…0.4 x axis)."""
    only_on(tab, "spectra")
    title = f"singular values of {src_label(source)} — {layer or 'no layer'}"
    if not layer or not source:
        return F.empty_figure("singular values over steps", HINT)
    steps, rows = array_matrix(current_api(), run_id, f"sv.{source}", layer,
                               max_steps=current_config().heatmap_steps)
    if not rows:
        return F.empty_figure(title, HINT)
    if len(steps) == 1:
        return F.spectrum_figure([(f"step {steps[0]}", rows[0])], title=f"{title} (one step logged: {steps[0]})",
                                 empty_message=HINT, uirevision=f"{run_id}:spec:{layer}:{source}")
    transposed = [list(col) for col in zip(*rows)]  # y = index, x = step
    return F.heatmap_figure(steps, list(range(1, len(transposed) + 1)), transposed, title=title, x_title="step",
                            y_title="index i (descending σ)", colorbar_title="σ", log_color=True, reverse_y=True,
                            uirevision=f"{run_id}:spec:{layer}:{source}")


def at_step(layer, source, step, tab, run_id, keys):
    """The spectrum at the chosen step; for the Muon family, before vs after orthogonalization overlaid."""
    only_on(tab, "spectra")
    if not layer or not source:
        return F.empty_figure("spectrum at step", HINT)
    catalog = Catalog.from_store(keys)
    sources = catalog.sv_sources(layer)
    shown = [source]
    if source in ("pre_orth", "post_orth") and {"pre_orth", "post_orth"} <= set(sources):
        shown = ["pre_orth", "post_orth"]
    api = current_api()
    spectra = []
    at = None
    for src in shown:
        got = array_at(api, run_id, f"sv.{src}", layer, step)
        if got:
            at = got[0] if at is None else at
            spectra.append((f"{src_label(src)} @ step {got[0]}", got[1]))
    title = (f"before vs after orthogonalization — {layer}" if len(shown) == 2
             else f"spectrum of {src_label(source)} — {layer}")
    if at is not None:
        title += f" (step {at})"
    return F.spectrum_figure(spectra, title=title, empty_message=HINT, uirevision=f"{run_id}:sat:{layer}")


def summary(metric, source, _state, tab, rows, run_id, keys):
    """All layers at once: a spectral metric as a layer x step heatmap (max per column: spikes stay)."""
    only_on(tab, "spectra")
    catalog = Catalog.from_store(keys)
    muon_only = MUON_SUMMARIES.get(metric)  # measures of the Muon family, whatever the chosen source
    if muon_only is not None:
        quantity, title = muon_only
    else:
        quantity = f"sv.{source or 'weight'}.{metric}"
        title = f"{metric.replace('_', ' ')} of {src_label(source)} — all layers"
    layers = catalog.layers_with(quantity)
    if not layers:
        return F.empty_figure(title, HINT if muon_only is None else
                              f"no {metric.replace('_', ' ')} logged — it is measured for the Muon family")
    return layer_heatmap(current_api(), run_id, quantity, layers, rows=rows, bins=current_config().layer_grid_bins,
                         title=title, unit=UNITS.get(metric, metric),
                         log_color=metric in ("cond", "spectral_norm", "orth_err"),
                         z_range=(0.0, 1.0) if metric == "not_lifted" else None)


def register(app: Registrar) -> None:
    app.callback(
        keep_view.output(ids.RUN_SPEC_HEATMAP),
        Input(ids.RUN_LAYER, "value"), Input(ids.RUN_SOURCE, "value"), Input(ids.RUN_STATE, "data"),
        Input(ids.RUN_TABS, "value"), State(ids.RUN_ID, "data"),
    )(heatmap)
    app.callback(
        keep_view.output(ids.RUN_SPEC_AT_STEP),
        Input(ids.RUN_LAYER, "value"), Input(ids.RUN_SOURCE, "value"), Input(ids.RUN_STEP, "value"),
        Input(ids.RUN_TABS, "value"), State(ids.RUN_ID, "data"), State(ids.RUN_KEYS, "data"),
    )(at_step)
    app.callback(
        keep_view.output(ids.RUN_SPEC_SUMMARY),
        Input(ids.RUN_SPEC_METRIC, "value"), Input(ids.RUN_SOURCE, "value"), Input(ids.RUN_STATE, "data"),
        Input(ids.RUN_TABS, "value"), Input(ids.RUN_ROWS, "value"), State(ids.RUN_ID, "data"),
        State(ids.RUN_KEYS, "data"),
    )(summary)
