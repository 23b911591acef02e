"""Gradient-difference tab: FOP's (or the two-half-batch measurement's) parallel/orthogonal parts,
s_proj, β*/η*, the noise scale and the KL-norm split, per layer over time."""

from __future__ import annotations

from dash import Input, State, html

from .... import figures as F
from .... import ids
from ....components import graph
from ....queries import Catalog, x_lines
from ....series import X_STEP, X_TITLES
from ....state import current_api, current_config
from .. import keep_view
from .base import Registrar, Tab, layer_heatmap, only_on
from .lines import per_layer_lines

HINT = ("no gradient-difference projections logged yet — use probe.optim.FOP, or turn on the two-half-batch "
        "measurement for any optimizer with probe.attach(..., gdiff_every=10)")


def body() -> html.Div:
    return html.Div([
        html.Div([graph(ids.RUN_GDIFF_PARTS), graph(ids.RUN_GDIFF_SPROJ)], className="grid2"),
        html.Div([graph(ids.RUN_GDIFF_BETA), graph(ids.RUN_GDIFF_SUMMARY)], className="grid2"),
        html.Div([graph(ids.RUN_GDIFF_NOISE), graph(ids.RUN_GDIFF_KL)], className="grid2"),
    ])


def _has_data(catalog: Catalog) -> bool:
    return bool(catalog.layers_with_prefix("fop.") or catalog.layers_with_prefix("gdiff.")
                or {"fop.noise_scale", "gdiff.noise_scale"} & set(catalog.globals))


TAB = Tab("gdiff", "Gradient difference", frozenset({"layer", "x", "smooth", "log", "rows"}), HINT, body,
          has_data=_has_data, enable="gdiff_every=")


def panels(layer, x, smooth, log, state, tab, run_id, keys):
    """Parallel vs Fisher-orthogonal parts, s_proj, and FOP's β*/η* for one layer over time."""
    only_on(tab, "gdiff")
    catalog = Catalog.from_store(keys)
    prefix = "fop" if catalog.layers_with_prefix("fop.") else "gdiff"
    if not layer:
        return [F.empty_figure(t, HINT) for t in ("parallel vs orthogonal parts", "s_proj", "β* and η*")]
    x = x or X_STEP
    smooth = float(smooth or 0)
    origin = (state or {}).get("created_at")
    xt = X_TITLES[x]
    parts = F.line_figure(per_layer_lines(prefix, ["parallel", "orthogonal", "gdiff_norm"], layer, x, origin, run_id),
                          title=f"g_diff: parallel vs Fisher-orthogonal parts — {layer}", x_title=xt,
                          y_title="norm (L2)", log_y="log" in (log or []), smoothing=smooth, empty_message=HINT,
                          uirevision=f"{run_id}:gd1:{layer}:{x}:{bool(log)}")
    sproj = F.line_figure(per_layer_lines(prefix, ["s_proj", "cos_g1_g2"], layer, x, origin, run_id),
                          title=f"s_proj and cos(g₁, g₂) — {layer}", x_title=xt, y_title="value (dimensionless)",
                          smoothing=smooth, empty_message=HINT, uirevision=f"{run_id}:gd2:{layer}:{x}")
    if prefix == "fop":
        lines = per_layer_lines(prefix, ["beta", "eta"], layer, x, origin, run_id)
        lines += x_lines(current_api(), run_id, ["fop.beta_neg_frac"], x=x, origin=origin,
                         names={"fop.beta_neg_frac": "share of layers with negative β* (global)"},
                         points=current_config().series_points)
        beta = F.line_figure(lines, title=f"β* and η* — {layer}", x_title=xt, y_title="coefficient",
                             smoothing=smooth, empty_message=HINT, uirevision=f"{run_id}:gd3:{layer}:{x}")
    else:
        beta = F.empty_figure(f"β* and η* — {layer}", "β* and η* are FOP's step coefficients: they exist for runs "
                              "using probe.optim.FOP")
    return parts, sproj, beta


def summary(_state, tab, rows, run_id, keys):
    """s_proj of every layer over time."""
    only_on(tab, "gdiff")
    catalog = Catalog.from_store(keys)
    quantity = "fop.s_proj" if catalog.layers_with("fop.s_proj") else "gdiff.s_proj"
    layers = catalog.layers_with(quantity)
    title = "s_proj — all layers"
    if not layers:
        return F.empty_figure(title, HINT)
    return layer_heatmap(current_api(), run_id, quantity, layers, rows=rows,
                         bins=current_config().layer_grid_bins, title=title, unit="s_proj")


def noise_and_kl(layer, x, smooth, state, tab, run_id, keys):
    """The simple noise scale (global) and FOP's KL-norm split of g_comb for one layer."""
    only_on(tab, "gdiff")
    catalog = Catalog.from_store(keys)
    x = x or X_STEP
    smooth = float(smooth or 0)
    origin = (state or {}).get("created_at")
    key = "fop.noise_scale" if "fop.noise_scale" in catalog.globals else "gdiff.noise_scale"
    noise = F.line_figure(
        x_lines(current_api(), run_id, [key], x=x, origin=origin, names={key: "tr(Σ)/‖G‖²"},
                points=current_config().series_points),
        title="simple noise scale — the batch size beyond which more samples stop paying", x_title=X_TITLES[x],
        y_title="samples", log_y=True, smoothing=smooth, uirevision=f"{run_id}:gd4:{x}",
        empty_message="no noise scale logged — pass batch_size= to probe.attach (FOP, or the two-half-batch "
                      "measurement with gdiff_every=)")
    title = f"KL-norm split of g_comb — {layer or 'no layer'}"
    if layer and catalog.layers_with_prefix("fop."):
        kl = F.line_figure(per_layer_lines("fop", ["kl_base", "kl_cross", "kl_orth"], layer, x, origin, run_id),
                           title=title, x_title=X_TITLES[x], y_title="gᵀM⁻¹FM⁻¹g term", smoothing=smooth,
                           empty_message=HINT, uirevision=f"{run_id}:gd5:{layer}:{x}")
    else:
        kl = F.empty_figure(title, "the KL-norm split is FOP's: it exists for runs using probe.optim.FOP")
    return noise, kl


def register(app: Registrar) -> None:
    app.callback(
        keep_view.output(ids.RUN_GDIFF_PARTS), keep_view.output(ids.RUN_GDIFF_SPROJ),
        keep_view.output(ids.RUN_GDIFF_BETA),
        Input(ids.RUN_LAYER, "value"), Input(ids.RUN_X, "value"), Input(ids.RUN_SMOOTH, "value"),
        Input(ids.RUN_LOG, "value"), Input(ids.RUN_STATE, "data"), Input(ids.RUN_TABS, "value"),
        State(ids.RUN_ID, "data"), State(ids.RUN_KEYS, "data"),
    )(panels)
    app.callback(
        keep_view.output(ids.RUN_GDIFF_SUMMARY),
        Input(ids.RUN_STATE, "data"), Input(ids.RUN_TABS, "value"), Input(ids.RUN_ROWS, "value"),
        State(ids.RUN_ID, "data"), State(ids.RUN_KEYS, "data"),
    )(summary)
    app.callback(
        keep_view.output(ids.RUN_GDIFF_NOISE), keep_view.output(ids.RUN_GDIFF_KL),
        Input(ids.RUN_LAYER, "value"), Input(ids.RUN_X, "value"), Input(ids.RUN_SMOOTH, "value"),
        Input(ids.RUN_STATE, "data"), Input(ids.RUN_TABS, "value"),
        State(ids.RUN_ID, "data"), State(ids.RUN_KEYS, "data"),
    )(noise_and_kl)
