"""The compare page's per-layer comparison over time: one per-layer diagnostic, one layer or an
all-layer aggregate, every selected run (or group) against step or samples seen.

The matched-step panels answer "how do the spectra differ at step 400"; this one answers "when did
NorMuon's neuron norms become more even than Muon's, and in which layers" — the question issue 19
found could only be asked one step at a time. An aggregate is taken per run and per logged step over
the layers that logged the diagnostic at that step (median, or max: the worst layer), optionally over
one block (``blocks.3``) or one layer role (``blocks.*.fc.weight``) only.

The callbacks register through :func:`register`, which the package's ``__init__`` calls each time the app
re-executes it (see ``dashboard.app._load_pages``), with the ids of the page's group stores.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from dash import Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from ... import figures as F
from ... import group_figures as GF
from ... import ids
from ...api import ApiError
from ...colors import group_color, run_color, run_dash
from ...components import control, graph
from ...series import X_SAMPLES, X_STEP, X_TITLES, block_of, steps_to_samples
from ...state import current_api
from .layer_aggregate import AGG_MAX, AGG_MEDIAN, aggregate

__all__ = ["AGG_MEDIAN", "AGG_MAX", "ALL_LAYERS", "PREFERRED", "quantity_options", "default_quantity",
           "layer_options", "scope_options", "layers_in_scope", "aggregate", "role_of", "layer_controls",
           "draw_layer_over_time", "draw_when_seen", "register"]

AGGREGATES = {AGG_MEDIAN: "median over layers", AGG_MAX: "max over layers"}
ALL_LAYERS = "~all"
LAYER_POINTS = 2000  # per (run, layer) series: per-layer diagnostics are logged every few steps, so exact
# Points read for one chart, over every (run, layer) series. The median over 48 layers of 20 runs logged at
# every one of 2,000 steps read 1.9M points (~17 s on a loaded 2-core host, the server busy for all of it,
# so the next page opened behind it — issue 19's run-page slowdown): past this budget each series is
# downsampled on the server and an aggregate is taken over step ranges (``aggregate(bins=)``).
LAYER_POINT_BUDGET = 200_000
MIN_LAYER_POINTS = 100  # the fewest points asked per series, however many runs and layers
# the diagnostics issue 19 names, offered first; any other per-layer quantity follows
PREFERRED = ("neuron.", "sv.", "update_ratio", "gdiff.", "kfac.")


def _rank(quantity: str) -> tuple[int, str]:
    return next((i for i, p in enumerate(PREFERRED) if quantity.startswith(p)), len(PREFERRED)), quantity


def quantity_options(quantities: Mapping[str, Sequence[str]]) -> list[str]:
    """Per-layer quantities any picked run logged, the named diagnostics first."""
    return sorted(quantities, key=_rank)


def default_quantity(quantities: Mapping[str, Sequence[str]], wanted: str | None) -> str | None:
    options = quantity_options(quantities)
    return wanted if wanted in options else (options[0] if options else None)


def role_of(layer: str) -> str:
    """``blocks.3.fc.weight`` -> ``blocks.*.fc.weight`` (layers of one kind across blocks)."""
    return re.sub(r"(^|\.)\d+(?=\.|$)", r"\1*", layer)


def layer_options(layers: Sequence[str]) -> list[dict[str, str]]:
    """The aggregates, then every layer that logged the quantity (model order)."""
    return [{"label": label, "value": v} for v, label in AGGREGATES.items()] + \
        [{"label": layer, "value": layer} for layer in layers]


def scope_options(layers: Sequence[str]) -> list[dict[str, str]]:
    """Which layers an aggregate runs over: all, one layer role (``blocks.*.fc.weight``), or one block."""
    roles = [r for r in dict.fromkeys(role_of(layer) for layer in layers) if "*" in r]
    blocks = [b for b in dict.fromkeys(block_of(layer) for layer in layers)]
    return ([{"label": "all layers", "value": ALL_LAYERS}] + [{"label": f"role {r}", "value": f"role:{r}"} for r in roles]
            + ([{"label": f"block {b}", "value": f"block:{b}"} for b in blocks] if len(blocks) > 1 else []))


def layers_in_scope(layers: Sequence[str], scope: str | None) -> list[str]:
    if not scope or scope == ALL_LAYERS:
        return list(layers)
    kind, _, name = scope.partition(":")
    if kind == "role":
        return [layer for layer in layers if role_of(layer) == name]
    if kind == "block":
        return [layer for layer in layers if block_of(layer) == name]
    return list(layers)


def title(quantity: str, layer: str, scope: str | None, n: int, unit: str) -> str:
    what = AGGREGATES.get(layer)
    if what:
        where = "" if not scope or scope == ALL_LAYERS else f" ({scope.replace(':', ' ', 1)})"
        return f"{quantity}: {what}{where} — {n} {unit}"
    return f"{quantity} — {layer} — {n} {unit}"


def points_per_series(n_series: int) -> int:
    """Points to ask per (run, layer) series so that one chart reads at most ~:data:`LAYER_POINT_BUDGET`."""
    return int(max(MIN_LAYER_POINTS, min(LAYER_POINTS, LAYER_POINT_BUDGET // max(n_series, 1))))


def series_lines(series: Sequence[Mapping[str, Any]], meta: Mapping[str, Mapping[str, Any]], quantity: str,
                 layer: str, layers: Sequence[str], colors: Mapping[str, tuple[str, str]], *,
                 points: int = LAYER_POINTS) -> list[tuple[str, F.Line]]:
    """(run id, line) per run that logged it: the layer's series, or the aggregate over ``layers``; ``colors``: run id ->
    (colour, dash). ``x`` is the step; the caller converts to samples seen. ``points``: what was asked per
    series — below :data:`LAYER_POINTS` the series may be downsampled, so an aggregate bins the steps."""
    max_steps = None if points >= LAYER_POINTS else points
    by_run: dict[str, dict[str, Mapping[str, Any]]] = {}
    for s in series:
        by_run.setdefault(s["run_id"], {})[s["key"]] = s
    lines = []
    for rid, m in meta.items():
        got = by_run.get(rid, {})
        if layer in AGGREGATES:
            per = [(got[k]["steps"], got[k]["y"]) for k in (f"{quantity}/{lay}" for lay in layers) if k in got]
            steps, ys = aggregate(per, layer, max_steps=max_steps)
        else:
            s = got.get(f"{quantity}/{layer}")
            steps, ys = (list(s["steps"]), list(s["y"])) if s else ([], [])
        if steps:
            color, dash = colors[rid]
            lines.append((rid, F.Line(m["name"], [float(v) for v in steps], ys, color=color, steps=steps, dash=dash)))
    return lines


# -- controls and callbacks ------------------------------------------------------------------------

def layer_controls(catalog: Mapping[str, Any] | None, quantity: str | None, layer: str | None,
                   scope: str | None) -> tuple:
    """(diagnostic options, diagnostic, layer options, layer, scope options, scope) for the runs'
    merged catalog, keeping choices that are still valid (default: the median over all layers)."""
    quantities = (catalog or {}).get("layer_quantities") or {}
    quantity = default_quantity(quantities, quantity)
    layers = list(quantities.get(quantity, [])) if quantity else []
    layer_opts = layer_options(layers)
    layer = layer if layer in {o["value"] for o in layer_opts} else AGG_MEDIAN
    scope_opts = scope_options(layers)
    scope = scope if scope in {o["value"] for o in scope_opts} else ALL_LAYERS
    return quantity_options(quantities), quantity, layer_opts, layer, scope_opts, scope


def fill_layer_quantities(catalog, quantity):
    """Offer the per-layer diagnostics the picked runs logged (keeping the choice when still valid)."""
    options, quantity, *_ = layer_controls(catalog, quantity, None, None)
    return options, quantity


def fill_layer_choices(quantity, catalog, layer, scope):
    """The layers (and aggregates, and scopes) that logged the chosen diagnostic."""
    return layer_controls(catalog, quantity, layer, scope)[2:]


def draw_layer_over_time(quantity, layer, scope, x, meta, groups, band, catalog):
    """The chosen diagnostic (one layer, or the median / max over layers) for every run against step
    or samples seen; grouped, each group's mean with its band."""
    meta = meta or {}
    hint = ("no per-layer diagnostics logged for these runs — probe.attach(model, optimizer, run=run) logs "
            "spectra, neuron norms and update ratios per layer")
    if not meta or not quantity or not layer:
        return F.empty_figure("per-layer diagnostics over time", hint)
    layers = list(((catalog or {}).get("layer_quantities") or {}).get(quantity, []))
    if layer in AGGREGATES:
        layers = layers_in_scope(layers, scope)
    elif layer not in layers:
        return F.empty_figure("per-layer diagnostics over time", f"no picked run logged {quantity} for {layer}")
    else:
        layers = [layer]
    api = current_api()
    run_ids = list(meta)
    keys = [f"{quantity}/{lay}" for lay in layers]
    try:
        points = points_per_series(len(run_ids) * len(keys))
        series = api.series(run_ids, keys, x="step", points=points)
        samples = {s["run_id"]: (s["steps"], s["y"]) for s in api.series(run_ids, ["samples_seen"], x="step",
                                                                         points=5000)} if x == X_SAMPLES else {}
    except ApiError as exc:
        return F.empty_figure("per-layer diagnostics over time", f"cannot load the series: {exc}")
    colors = {rid: (run_color(rid), run_dash(rid)) for rid in run_ids}
    by_run = dict(series_lines(series, meta, quantity, layer, layers, colors, points=points))
    if x == X_SAMPLES:
        by_run = {rid: F.Line(ln.name, steps_to_samples(ln.steps, *samples.get(rid, ([], []))), ln.y, color=ln.color,
                              steps=ln.steps, dash=ln.dash) for rid, ln in by_run.items()}
    lines = list(by_run.values())
    x_title = X_TITLES[x if x in (X_STEP, X_SAMPLES) else X_STEP]
    empty = f"no picked run logged {quantity}" + ("" if layer in AGGREGATES else f" for {layer}")
    if (groups or {}).get("grouped"):
        curves = []
        for g in groups["groups"]:
            members = [by_run[rid] for rid in g["run_ids"] if rid in by_run]
            if members:
                curves.append(GF.group_curve(g["group"], members, band=band or "minmax", color=group_color(g["group"], g["run_ids"])))
        fig = GF.band_figure(curves, title=title(quantity, layer, scope, len(curves), "groups") + ", "
                             + GF.BAND_LABELS[band or "minmax"], x_title=x_title, y_title=quantity,
                             band=band or "minmax", uirevision=f"cmp-lt:{quantity}:{layer}:{scope}:{x}:groups",
                             empty_message=empty)
    else:
        fig = F.line_figure(lines, title=title(quantity, layer, scope, len(lines), "runs"), x_title=x_title,
                            y_title=quantity, uirevision=f"cmp-lt:{quantity}:{layer}:{scope}:{x}",
                            empty_message=empty, live=False)
    return fig


# The section sits below the fold. Its all-layer aggregate reads every layer of every run (~1 s of
# the server's CPU for 20 runs x 48 layers on a loaded 2-core host) and the matched-step panels and
# the next page a user opens waited behind it, so it is drawn once its graph scrolls into view (or
# at once where IntersectionObserver is missing). The observer is set up once the time-to-target
# table above is in (the scalar charts come with the page; until that table fills, the sections
# above are short and this one would be in view), on the section (the graph's own node is replaced
# when its dcc.Loading re-renders), and wants the section in view for 400 ms.
WHEN_SEEN_JS = """(above, seen) => {
    const no = window.dash_clientside.no_update;
    if (seen) return no;
    const el = document.getElementById('%s');
    if (!el || !window.IntersectionObserver) return true;
    if (el.__optiscopeWatched) return no;
    el.__optiscopeWatched = true;
    // in view for a moment, not only while the sections above are still empty and short
    const inView = () => { const r = el.getBoundingClientRect(); return r.top < window.innerHeight && r.bottom > 0; };
    let timer = null;
    const watch = new IntersectionObserver((entries) => {
        if (!entries.some(e => e.isIntersecting) || timer) return;
        timer = setTimeout(() => {
            timer = null;
            if (!inView()) return;
            watch.disconnect();
            window.dash_clientside.set_props('%s', {data: true});
        }, 400);
    });
    watch.observe(el);
    return no;
}""" % (ids.CMP_LT_SECTION, ids.CMP_LT_SEEN)


def draw_when_seen(seen, quantity, layer, scope, x, meta, groups, band, catalog):
    """:func:`draw_layer_over_time`, once the graph has been in view (see ``WHEN_SEEN_JS``)."""
    if not seen:
        raise PreventUpdate
    return draw_layer_over_time(quantity, layer, scope, x, meta, groups, band, catalog)


def section(lt: Sequence[Any], lt_x: str | None) -> html.Section:
    """The diagnostic, layer, scope and x-axis controls and the graph (``lt``: ``layer_controls``)."""
    return html.Section([
        html.H3("Per-layer diagnostics over time"),
        html.P("One per-layer diagnostic for every run (or each group's mean with its band) against step: "
               "a single layer, or the median / max over the layers (all, one role such as "
               "blocks.*.fc.weight, or one block) at each logged step.", className="hint"),
        html.Div([
            control("diagnostic", dcc.Dropdown(id=ids.CMP_LT_QUANTITY, options=lt[0], value=lt[1],
                                               clearable=False, placeholder="no per-layer diagnostics"),
                    width="280px"),
            control("layer", dcc.Dropdown(id=ids.CMP_LT_LAYER, options=lt[2], value=lt[3], clearable=False),
                    width="280px"),
            control("over", dcc.Dropdown(id=ids.CMP_LT_BLOCK, options=lt[4], value=lt[5], clearable=False),
                    width="240px"),
            control("x axis", dcc.RadioItems(id=ids.CMP_LT_X, inline=True,
                                             value=lt_x if lt_x in (X_STEP, X_SAMPLES) else X_STEP,
                                             options=[{"label": " step", "value": X_STEP},
                                                      {"label": " samples seen", "value": X_SAMPLES}])),
        ], className="controls"),
        dcc.Loading(graph(ids.CMP_LT_GRAPH), type="dot", delay_show=400),
        dcc.Store(id=ids.CMP_LT_SEEN, data=False),
    ], className="section", id=ids.CMP_LT_SECTION)


def register(app: Any, *, groups_id: str, band_id: str) -> None:
    """Register the section's callbacks on ``app`` (a Dash app, or the ``dash`` module's global list);
    ``groups_id`` / ``band_id``: the compare page's group store and band choice."""
    app.callback(
        Output(ids.CMP_LT_QUANTITY, "options"), Output(ids.CMP_LT_QUANTITY, "value"),
        Input(ids.CMP_KEYS, "data"), State(ids.CMP_LT_QUANTITY, "value"),
        prevent_initial_call=True,
    )(fill_layer_quantities)
    app.callback(
        Output(ids.CMP_LT_LAYER, "options"), Output(ids.CMP_LT_LAYER, "value"),
        Output(ids.CMP_LT_BLOCK, "options"), Output(ids.CMP_LT_BLOCK, "value"),
        Input(ids.CMP_LT_QUANTITY, "value"), State(ids.CMP_KEYS, "data"), State(ids.CMP_LT_LAYER, "value"),
        State(ids.CMP_LT_BLOCK, "value"),
        prevent_initial_call=True,
    )(fill_layer_choices)
    app.clientside_callback(WHEN_SEEN_JS, Output(ids.CMP_LT_SEEN, "data"), Input(ids.CMP_TTT_TABLE, "children"),
                            State(ids.CMP_LT_SEEN, "data"))
    app.callback(
        Output(ids.CMP_LT_GRAPH, "figure"),
        Input(ids.CMP_LT_SEEN, "data"),
        Input(ids.CMP_LT_QUANTITY, "value"), Input(ids.CMP_LT_LAYER, "value"), Input(ids.CMP_LT_BLOCK, "value"),
        Input(ids.CMP_LT_X, "value"), Input(ids.CMP_META, "data"), Input(groups_id, "data"), Input(band_id, "value"),
        State(ids.CMP_KEYS, "data"),
    )(draw_when_seen)
