"""Layers tab: any per-layer quantity the run logged — the built-ins (``update_ratio``, ``grad_norm``,
``nonfinite``, ``neuron.*``, ``sv.*``, …) and a user's own ``probe.Quantity`` — as an all-layer
heatmap over steps and one layer's line, so a custom diagnostic shows up like the built-in ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dash import Input, Output, State, dcc, html

from .... import figures as F
from .... import ids
from ....components import graph
from ....queries import Catalog, x_lines
from ....series import X_STEP, X_TITLES
from ....state import current_api, current_config
from .. import keep_view
from .base import Registrar, Tab, layer_heatmap, only_on

HINT = "no per-layer diagnostics logged yet — probe.attach(model, optimizer, run=run) logs them per layer"
# What the quantity picker opens on when the run has it: the relative step size is the one every run has.
_FIRST = ("update_ratio", "grad_norm")


def body() -> html.Div:
    return html.Div([
        html.Div([html.Label("per-layer quantity", htmlFor=ids.RUN_LAYERS_QUANTITY, className="hint"),
                  dcc.Dropdown(id=ids.RUN_LAYERS_QUANTITY, options=[], value=None, clearable=False,
                               style={"minWidth": "320px"})],
                 style={"maxWidth": "480px", "marginBottom": "8px"}),
        html.Div([graph(ids.RUN_LAYERS_HEATMAP), graph(ids.RUN_LAYERS_LINE)], className="grid2"),
    ])


def _has_data(catalog: Catalog) -> bool:
    return bool(catalog.quantities)


TAB = Tab("layers", "Layers", frozenset({"layer", "x", "smooth", "log", "rows"}), HINT, body, has_data=_has_data)


def choose_quantity(keys: Any, current: str | None) -> tuple[list[dict[str, str]], str | None]:
    """The picker's options (every per-layer quantity, sorted) and its value: the user's pick while the
    run still has it, else ``update_ratio`` (or ``grad_norm``), else the first."""
    names: Sequence[str] = sorted(Catalog.from_store(keys).quantities)
    options = [{"label": n, "value": n} for n in names]
    if current in names:
        return options, current
    first = next((n for n in _FIRST if n in names), names[0] if names else None)
    return options, first


def heatmap(quantity, _state, tab, rows, run_id, keys):
    only_on(tab, "layers")
    title = f"{quantity or 'per-layer quantity'} — all layers"
    layers = Catalog.from_store(keys).layers_with(quantity) if quantity else []
    if not layers:
        return F.empty_figure(title, HINT)
    return layer_heatmap(current_api(), run_id, quantity, layers, rows=rows, bins=current_config().layer_grid_bins,
                         title=title, unit=quantity)


def line(quantity, layer, x, smooth, log, state, tab, run_id, keys):
    only_on(tab, "layers")
    catalog = Catalog.from_store(keys)
    if quantity and layer not in catalog.layers_with(quantity or ""):
        layers = catalog.layers_with(quantity)
        layer = layers[0] if layers else None
    title = f"{quantity or 'per-layer quantity'} — {layer or 'no layer'}"
    if not quantity or not layer:
        return F.empty_figure(title, HINT)
    x = x or X_STEP
    key = f"{quantity}/{layer}"
    lines = x_lines(current_api(), run_id, [key], x=x, origin=(state or {}).get("created_at"), names={key: layer},
                    points=current_config().series_points)
    return F.line_figure(lines, title=title, x_title=X_TITLES[x], y_title=quantity, log_y="log" in (log or []),
                         smoothing=float(smooth or 0), empty_message=HINT,
                         uirevision=f"{run_id}:layers:{quantity}:{layer}:{x}:{bool(log)}")


def register(app: Registrar) -> None:
    app.callback(
        Output(ids.RUN_LAYERS_QUANTITY, "options"), Output(ids.RUN_LAYERS_QUANTITY, "value"),
        Input(ids.RUN_KEYS, "data"), State(ids.RUN_LAYERS_QUANTITY, "value"),
    )(choose_quantity)
    app.callback(
        keep_view.output(ids.RUN_LAYERS_HEATMAP),
        Input(ids.RUN_LAYERS_QUANTITY, "value"), Input(ids.RUN_STATE, "data"), Input(ids.RUN_TABS, "value"),
        Input(ids.RUN_ROWS, "value"), State(ids.RUN_ID, "data"), State(ids.RUN_KEYS, "data"),
    )(heatmap)
    app.callback(
        keep_view.output(ids.RUN_LAYERS_LINE),
        Input(ids.RUN_LAYERS_QUANTITY, "value"), Input(ids.RUN_LAYER, "value"), Input(ids.RUN_X, "value"),
        Input(ids.RUN_SMOOTH, "value"), Input(ids.RUN_LOG, "value"), Input(ids.RUN_STATE, "data"),
        Input(ids.RUN_TABS, "value"), State(ids.RUN_ID, "data"), State(ids.RUN_KEYS, "data"),
    )(line)
