"""Run page ("/runs/<run_id>"): every diagnostic of one run, live while it runs.

Shape: a header, a controls bar that persists across tabs (layer, step, source, x axis, smoothing,
log scale: one source of truth, mirrored into the URL with ``history.replaceState`` so a view can be
shared without the pages router re-rendering on each change), and a tab body that holds only the
active tab's graphs (other tabs cost nothing).

Live: a 1 s ``dcc.Interval`` asks ``/series?after_step=<cursor>`` for the scalar charts and appends
the raw points with ``Patch()`` (no redraw, zoom kept by ``uirevision``); the heavier panels refresh
on a slower beat only when the run's last step moved.
"""

from __future__ import annotations

import math
from urllib.parse import urlencode
from collections.abc import Mapping, Sequence
from typing import Any

from dash import ALL, Input, Output, Patch, State, callback, clientside_callback, dcc, html, no_update
from dash.exceptions import PreventUpdate

from .. import figures as F
from .. import ids
from ..api import ApiError, NotFound
from ..components import (
    control, flatten, fmt_datetime, fmt_duration, fmt_value, graph, key_value_table, message, parse_time,
    run_duration, status_badge,
)
from ..queries import SV_METRICS, Catalog, array_at, array_matrix, quantity_grid, x_lines
from ..series import X_CHOICES, X_SAMPLES, X_STEP, X_TIME, X_TITLES, ema, relative_time, steps_to_samples
from ..state import current_api, current_config

TITLE = "Optiscope · run"
TABS = (
    ("scalars", "Scalars"),
    ("spectra", "Spectra"),
    ("neurons", "Neuron norms"),
    ("gdiff", "Gradient difference"),
    ("kfac", "KFAC"),
    ("infobatch", "InfoBatch"),
    ("alerts", "Alerts"),
    ("config", "Config"),
)
TAB_IDS = tuple(t for t, _ in TABS)
MUON_SUMMARIES = {  # spectra-tab summaries that belong to the Muon family: (quantity, title)
    "not_lifted": ("sv.pre_orth.not_lifted", "momentum directions Newton–Schulz does not lift (σ < 1e-3·‖U‖_F) — all layers"),
    "orth_err": ("orth_err", "orthogonality error ‖OOᵀ−I‖_F/√k — all layers"),
}
SUMMARY_METRICS = (*SV_METRICS, *MUON_SUMMARIES)
# Which shared controls each tab uses (the others are hidden, keeping their values).
TAB_CONTROLS = {
    "scalars": {"keys", "x", "smooth", "log"},
    "spectra": {"layer", "source", "step", "metric"},
    "neurons": {"layer", "step"},
    "gdiff": {"layer", "x", "smooth", "log"},
    "kfac": {"layer", "step", "x"},
    "infobatch": {"step"},
    "alerts": set(),
    "config": set(),
}
HEAVY_REFRESH_TICKS = 5  # heavy panels refresh at most every 5 polls while live
MAX_LIVE_POINTS = 5000  # more new points than this in one poll -> redraw (downsampled) instead of append

HINTS = {
    "spectra": "no spectra logged yet — enable them with probe.attach(model, optimizer, run=run), which logs "
               "singular values of 2-D weights on its spectra cadence",
    "neurons": "no neuron update norms logged yet — probe.attach(...) logs per-row update norms of 2-D layers",
    "gdiff": "no gradient-difference projections logged yet — use probe.optim.FOP, or enable the two-half-batch "
             "measurement in probe.attach(...) for any optimizer",
    "kfac": "no KFAC internals logged yet — they appear for runs using probe.optim.KFAC or FOP with introspection on",
    "infobatch": "no InfoBatch ledger logged yet — wrap your dataset with probe.data.InfoBatch and pass it to "
                 "probe.attach(..., infobatch=...)",
    "scalars": "no scalars logged yet — call run.log({'loss': loss}, step=step) in your training loop",
}
ALERT_TAB = {"cond_explode": "spectra", "frozen_neurons": "neurons", "nonfinite": "scalars", "update_ratio": "scalars"}


# -- layout ---------------------------------------------------------------------------------------

def layout(run_id: str | None = None, tab: str | None = None, layer: str | None = None, step: str | None = None,
           x: str | None = None, smooth: str | None = None, log: str | None = None, source: str | None = None,
           metric: str | None = None, keys: str | None = None, **_: Any) -> html.Div:
    """Fetch the run and its key catalog once; a missing run or server is a message, not a traceback."""
    api = current_api()
    try:
        run = api.get_run(run_id or "")
        catalog = Catalog.from_keys(api.keys(run["id"]))
    except NotFound:
        return html.Div([
            message("Run not found", f"There is no run with id “{run_id}”. It may have been deleted, or the "
                    "link is mistyped.", kind="error", id="run-not-found"),
            dcc.Link("← all runs", href="/"),
        ])
    except ApiError as exc:
        return message("Cannot load this run", str(exc), kind="error")

    cfg = current_config()
    tab = tab if tab in TAB_IDS else "scalars"
    x = x if x in X_CHOICES else X_STEP
    try:
        smooth_v = min(max(float(smooth), 0.0), 0.99) if smooth else 0.0
    except ValueError:
        smooth_v = 0.0
    all_keys = catalog.global_scalars
    chosen_keys = [k for k in (keys.split(",") if keys else []) if k in catalog.globals] or _default_keys(all_keys)
    try:
        step_v = int(step) if step not in (None, "") else None
    except ValueError:
        step_v = None
    # A "crashed" run (no heartbeat for a while) may resume sending, so only finished runs stop polling.
    live = run.get("status") != "finished"
    log_y = log in ("1", "true", "log")
    # The first scalar charts are drawn here, in the page's own response: one round trip less
    # before the page is useful (draw_scalars takes over for later changes).
    first_graphs: list[Any] = []
    cursor = None
    if tab == "scalars" and chosen_keys:
        figs, cursor = scalar_figures(api, run["id"], chosen_keys, x=x, smooth=smooth_v, log_y=log_y,
                                      origin=_created_ts(run), points=cfg.series_points)
        first_graphs = [graph(scalar_graph_id(k), fig) for k, fig in zip(chosen_keys, figs)]
    return html.Div(
        [
            dcc.Store(id=ids.RUN_ID, data=run["id"]),
            dcc.Store(id=ids.RUN_KEYS, data=catalog.to_store()),
            dcc.Store(id=ids.RUN_CURSOR, data=cursor),
            dcc.Store(id=ids.RUN_STATE, data={"status": run.get("status"), "last_step": run.get("last_step"),
                                              "version": 0, "created_at": _created_ts(run)}),
            dcc.Interval(id=ids.RUN_INTERVAL, interval=cfg.poll_interval_ms, disabled=not live),
            html.Div(id=ids.RUN_HEADER, children=header(run), className="run-header"),
            dcc.Tabs(id=ids.RUN_TABS, value=tab, children=[dcc.Tab(label=label, value=value)
                                                           for value, label in _tab_labels(run)]),
            html.Div(_controls(
                [
                    control("scalars", dcc.Dropdown(id=ids.RUN_KEYS + "-select", options=all_keys, value=chosen_keys,
                                                    multi=True, placeholder="pick scalars"), width="340px"),
                    control("x axis", dcc.RadioItems(id=ids.RUN_X, value=x, inline=True,
                                                     options=[{"label": " " + X_TITLES[c].split(" (")[0], "value": c}
                                                              for c in X_CHOICES])),
                    control("smoothing (EMA)", dcc.Slider(id=ids.RUN_SMOOTH, min=0, max=0.99, step=0.01,
                                                          value=smooth_v, marks={0: "0", 0.5: "0.5", 0.9: "0.9"},
                                                          tooltip={"placement": "bottom"}), width="220px"),
                    control("y scale", dcc.Checklist(id=ids.RUN_LOG, options=[{"label": " log", "value": "log"}],
                                                     value=["log"] if log_y else [])),
                    control("layer", dcc.Dropdown(id=ids.RUN_LAYER, options=[], value=layer, clearable=False,
                                                  placeholder="layer"), width="300px"),
                    control("spectrum of", dcc.RadioItems(id=ids.RUN_SOURCE, options=[], value=source, inline=True)),
                    control("all-layer metric", dcc.Dropdown(
                        id=ids.RUN_SPEC_METRIC, clearable=False, value=metric if metric in SUMMARY_METRICS else "cond",
                        options=[{"label": m.replace("_", " "), "value": m} for m in SUMMARY_METRICS]),
                        width="170px"),
                    control("step", html.Div([
                        dcc.Slider(id=ids.RUN_STEP, min=0, max=1, step=1, value=step_v, marks=None,
                                   updatemode="mouseup", tooltip={"placement": "bottom", "always_visible": True}),
                    ]), width="360px"),
                
                ]),
                className="controls", id="run-controls",
            ),
            html.Div([html.Div(tab_body(t, first_graphs), id=f"run-tab-{t}",
                               style={"display": "block" if t == tab else "none"}) for t in TAB_IDS],
                     id=ids.RUN_TAB_BODY),
            html.Div(id=ids.RUN_URL_SINK, hidden=True),
        ]
    )


def _controls(controls: list[html.Div]) -> list[html.Div]:
    """Give each control wrapper an id (``run-control-<name>``) so tabs can show or hide it."""
    for name, wrapper in zip(CONTROL_NAMES, controls):
        wrapper.id = f"run-control-{name}"
    return controls


def _default_keys(all_keys: Sequence[str]) -> list[str]:
    """The scalars shown before the user picks: loss/accuracy-like keys and a few others (at most 4;
    samples_seen is an x-axis choice, not a chart)."""
    preferred = [k for k in all_keys if not k.startswith(("infobatch.", "probe.")) and k != "samples_seen"]
    return preferred[:4]


def _created_ts(run: Mapping[str, Any]) -> float | None:
    """The run's start (unix s): the origin of the wall-time axis, so runs compare from their start."""
    dt = parse_time(run.get("created_at"))
    return dt.timestamp() if dt else None


def _tab_labels(run: Mapping[str, Any]) -> list[tuple[str, str]]:
    n = run.get("alerts_count") or 0
    return [(v, f"{label} ({n})" if v == "alerts" and n else label) for v, label in TABS]


def header(run: Mapping[str, Any]) -> list[Any]:
    """Name, status (live badge), and the facts a user checks first. All text children: escaped."""
    facts = [
        ("project", run.get("project")), ("optimizer", run.get("optimizer") or "—"),
        ("step", fmt_value(run.get("last_step"))), ("started", fmt_datetime(run.get("created_at"))),
        ("duration", fmt_duration(run_duration(run))), ("alerts", fmt_value(run.get("alerts_count") or 0)),
        ("id", run.get("id")),
    ]
    return [
        html.H2(run.get("name") or run.get("id"), id="run-name"),
        status_badge(run.get("status")),
        html.Span([html.Span([html.B(f"{k}: "), str(v), "  "]) for k, v in facts], className="run-meta"),
    ]


# -- controls -------------------------------------------------------------------------------------

CONTROL_NAMES = ("keys", "x", "smooth", "log", "layer", "source", "metric", "step")
CONTROL_WIDTHS = {"keys": "340px", "smooth": "220px", "layer": "300px", "metric": "170px", "step": "360px"}


@callback(
    [Output(f"run-control-{name}", "style") for name in CONTROL_NAMES],
    Input(ids.RUN_TABS, "value"),
)
def show_controls(tab: str):
    """Show only the controls the active tab uses (hidden ones keep their values)."""
    wanted = TAB_CONTROLS.get(tab, set())
    return [{"display": "flex" if name in wanted else "none", "minWidth": CONTROL_WIDTHS.get(name, "auto")}
            for name in CONTROL_NAMES]


def layer_choices(catalog: Catalog, tab: str) -> list[str]:
    """Layers that have data for the tab."""
    if tab == "spectra":
        seen: dict[str, None] = {}
        for src in catalog.sv_sources():
            seen.update(dict.fromkeys(catalog.array_layers(f"sv.{src}")))
        return list(seen)
    if tab == "neurons":
        layers = catalog.array_layers("neuron.update_norm")
        return layers or catalog.layers_with("neuron.cv")
    if tab == "gdiff":
        return catalog.layers_with_prefix("fop.") or catalog.layers_with_prefix("gdiff.")
    if tab == "kfac":
        return catalog.layers_with_prefix("kfac.") or catalog.array_layers("kfac.A_eigs")
    return []


def step_range(catalog: Catalog, tab: str, layer: str | None, source: str | None) -> tuple[int, int] | None:
    """The slider's range: the steps at which the tab's array for this layer was logged."""
    key = {"spectra": f"sv.{source}", "neurons": "neuron.update_norm", "kfac": "kfac.A_eigs",
           "infobatch": "infobatch.class_pruned_frac"}.get(tab)
    if key is None:
        return None
    return catalog.array_range(key, "" if tab == "infobatch" else layer)


@callback(
    Output(ids.RUN_LAYER, "options"),
    Output(ids.RUN_LAYER, "value"),
    Input(ids.RUN_TABS, "value"),
    Input(ids.RUN_KEYS, "data"),
    State(ids.RUN_LAYER, "value"),
    State(ids.RUN_LAYER, "options"),
)
def layer_options(tab: str, keys: Mapping[str, Any], layer: str | None, current: list[str] | None):
    """Layers with data for the tab; keep the chosen layer when it has data here too. Unchanged
    options and value are not re-sent: every panel listening to the layer would redraw for nothing."""
    options = layer_choices(Catalog.from_store(keys), tab)
    value = (layer if layer in options else options[0]) if options else layer
    if options == (current or []) and value == layer:
        raise PreventUpdate
    return options, value


@callback(
    Output(ids.RUN_SOURCE, "options"),
    Output(ids.RUN_SOURCE, "value"),
    Input(ids.RUN_LAYER, "value"),
    Input(ids.RUN_KEYS, "data"),
    State(ids.RUN_SOURCE, "value"),
    State(ids.RUN_SOURCE, "options"),
)
def source_options(layer: str | None, keys: Mapping[str, Any], source: str | None, current: list | None):
    """Spectrum sources logged for the layer (weight, update, and for Muon pre/post orthogonalization);
    nothing is sent when they did not change (switching layer must not redraw the all-layer panel)."""
    sources = Catalog.from_store(keys).sv_sources(layer)
    labels = {"weight": " W", "update": " ΔW", "pre_orth": " before orth.", "post_orth": " after orth."}
    options = [{"label": labels[s], "value": s} for s in sources]
    value = (source if source in sources else sources[0]) if sources else None
    if options == (current or []) and value == source:
        raise PreventUpdate
    return options, value


@callback(
    Output(ids.RUN_STEP, "min"),
    Output(ids.RUN_STEP, "max"),
    Output(ids.RUN_STEP, "value"),
    Output(ids.RUN_STEP, "marks"),
    Input(ids.RUN_TABS, "value"),
    Input(ids.RUN_LAYER, "value"),
    Input(ids.RUN_SOURCE, "value"),
    Input(ids.RUN_KEYS, "data"),
    State(ids.RUN_STEP, "value"),
    State(ids.RUN_STEP, "min"),
    State(ids.RUN_STEP, "max"),
)
def step_slider(tab: str, layer: str | None, source: str | None, keys: Mapping[str, Any], value: int | None,
                old_min: int, old_max: int):
    """Slider over the steps the array was logged at; a slider parked at the end follows new data.
    Sends nothing when range and value are unchanged (the panels at this step need no redraw)."""
    rng = step_range(Catalog.from_store(keys), tab, layer, source)
    if rng is None:
        raise PreventUpdate
    lo, hi = rng
    top = max(hi, lo + 1) if hi == lo else hi
    follow = value is None or value >= (old_max or 0) or value > hi
    new_value = hi if follow else max(lo, min(int(value), hi))
    if (lo, top, new_value) == (old_min, old_max, value):
        raise PreventUpdate
    marks = {lo: str(lo), hi: str(hi)} if hi > lo else {hi: str(hi)}
    return lo, top, new_value, marks


clientside_callback(
    """(runId, tab, layer, step, x, smooth, log, source, metric, keys) => {
        if (!runId || !window.location.pathname.startsWith('/runs/')) return '';
        const p = new URLSearchParams();
        if (tab && tab !== 'scalars') p.set('tab', tab);
        if (layer) p.set('layer', layer);
        if (step !== null && step !== undefined) p.set('step', step);
        if (x && x !== 'step') p.set('x', x);
        if (smooth) p.set('smooth', smooth);
        if (log && log.length) p.set('log', '1');
        if (source) p.set('source', source);
        if (metric && metric !== 'cond') p.set('metric', metric);
        if (keys && keys.length) p.set('keys', keys.join(','));
        const s = p.toString();
        window.history.replaceState(null, '', window.location.pathname + (s ? '?' + s : ''));
        return '';
    }""",
    Output(ids.RUN_URL_SINK, "children"),
    Input(ids.RUN_ID, "data"), Input(ids.RUN_TABS, "value"), Input(ids.RUN_LAYER, "value"),
    Input(ids.RUN_STEP, "value"), Input(ids.RUN_X, "value"), Input(ids.RUN_SMOOTH, "value"),
    Input(ids.RUN_LOG, "value"), Input(ids.RUN_SOURCE, "value"), Input(ids.RUN_SPEC_METRIC, "value"),
    Input(ids.RUN_KEYS + "-select", "value"),
)


# -- tab bodies -----------------------------------------------------------------------------------

def tab_body(tab: str, scalar_graphs: list[Any] | None = None) -> Any:
    """The graphs of one tab (empty but for the first scalar charts; callbacks fill them)."""
    if tab == "scalars":
        return html.Div(scalar_graphs or [], id=ids.RUN_SCALARS, className="grid2")
    if tab == "spectra":
        return html.Div([
            html.Div([graph(ids.RUN_SPEC_HEATMAP), graph(ids.RUN_SPEC_AT_STEP)], className="grid2"),
            graph(ids.RUN_SPEC_SUMMARY),
        ])
    if tab == "neurons":
        return html.Div([
            html.Div([graph(ids.RUN_NEURON_DIST), graph(ids.RUN_NEURON_V)], className="grid2"),
            html.Div([graph(ids.RUN_NEURON_CV), graph(ids.RUN_NEURON_FROZEN)], className="grid2"),
            graph(ids.RUN_NEURON_ROWS),
        ])
    if tab == "gdiff":
        return html.Div([
            html.Div([graph(ids.RUN_GDIFF_PARTS), graph(ids.RUN_GDIFF_SPROJ)], className="grid2"),
            html.Div([graph(ids.RUN_GDIFF_BETA), graph(ids.RUN_GDIFF_SUMMARY)], className="grid2"),
            html.Div([graph(ids.RUN_GDIFF_NOISE), graph(ids.RUN_GDIFF_KL)], className="grid2"),
        ])
    if tab == "kfac":
        return html.Div([
            html.Div([graph(ids.RUN_KFAC_EIGS), graph(ids.RUN_KFAC_DAMPING)], className="grid2"),
            graph(ids.RUN_KFAC_SPECTRUM),
        ])
    if tab == "infobatch":
        return html.Div([
            html.Div([graph(ids.RUN_IB_PRUNED), graph(ids.RUN_IB_SAVED)], className="grid2"),
            html.Div([graph("run-ib-threshold"), graph(ids.RUN_IB_CLASS)], className="grid2"),
        ])
    if tab == "alerts":
        return html.Div(id=ids.RUN_ALERTS)
    return html.Div(id=ids.RUN_CONFIG)


@callback([Output(f"run-tab-{t}", "style") for t in TAB_IDS], Input(ids.RUN_TABS, "value"))
def show_tab(tab: str):
    """All tab bodies are in the layout (so every callback output exists); only the active one shows,
    and the panels' callbacks skip work for hidden tabs."""
    return [{"display": "block" if t == tab else "none"} for t in TAB_IDS]


# -- scalars (live) -------------------------------------------------------------------------------

def scalar_graph_id(key: str) -> dict[str, str]:
    return {"type": ids.RUN_SCALAR_GRAPH, "key": key}


def scalar_figures(api, run_id: str, keys: Sequence[str], *, x: str, smooth: float, log_y: bool,
                   origin: float | None, points: int) -> tuple[list[Any], dict[str, Any]]:
    """One figure per scalar key and the live cursor that continues them."""
    lines = x_lines(api, run_id, keys, x=x, origin=origin, points=points)
    figs = []
    cursor: dict[str, Any] = {"x": x, "smooth": smooth, "origin": origin, "keys": list(keys), "last": {}, "ema": {},
                              "level": {}}
    for key, line in zip(keys, lines):
        x_title = X_TITLES[x]
        fig = F.line_figure([line], title=key, x_title=x_title, y_title=_unit(key), log_y=log_y, smoothing=smooth,
                            uirevision=f"{run_id}:{key}:{x}", empty_message=HINTS["scalars"])
        figs.append(fig)
        cursor["last"][key] = line.steps[-1] if line.steps else -1
        cursor["level"][key] = F.marker_level([line.y])
        if smooth:
            cursor["ema"][key] = list(ema(line.y, smooth)[1])
    if x == X_SAMPLES:
        cursor["samples_last"] = None  # x of new points is re-mapped from samples_seen on each poll
    return figs, cursor


def _unit(key: str) -> str:
    """Y-axis title with the unit where the key implies one."""
    units = {"lr": "learning rate", "step_time": "seconds per step (s)", "probe.overhead": "probe time / step time",
             "grad_norm": "‖g‖₂", "samples_seen": "samples"}
    if key in units:
        return units[key]
    if key.startswith(("acc", "val_acc")):
        return f"{key} (fraction)"
    return f"{key} (value)"


@callback(
    Output(ids.RUN_SCALARS, "children"),
    Output(ids.RUN_CURSOR, "data"),
    Input(ids.RUN_KEYS + "-select", "value"),
    Input(ids.RUN_X, "value"),
    Input(ids.RUN_SMOOTH, "value"),
    Input(ids.RUN_LOG, "value"),
    Input(ids.RUN_TABS, "value"),
    State(ids.RUN_ID, "data"),
    State(ids.RUN_STATE, "data"),
    prevent_initial_call=True,
)
def draw_scalars(keys, x, smooth, log, tab, run_id, state):
    """Full draw of the scalar charts (downsampled on the server); resets the live cursor."""
    if tab != "scalars":
        raise PreventUpdate
    keys = list(keys or [])
    if not keys:
        return [message("No scalars picked", HINTS["scalars"] if not keys else "")], None
    cfg = current_config()
    figs, cursor = scalar_figures(current_api(), run_id, keys, x=x or X_STEP, smooth=float(smooth or 0),
                                  log_y="log" in (log or []), origin=(state or {}).get("created_at"),
                                  points=cfg.series_points)
    return [graph(scalar_graph_id(k), fig) for k, fig in zip(keys, figs)], cursor


def live_patches(api, run_id: str, cursor: Mapping[str, Any], graph_keys: Sequence[str]) -> tuple[list[Any], dict[str, Any], int]:
    """New raw points since the cursor as one ``Patch`` per scalar graph (trace 0 raw, trace 1 EMA,
    last trace non-finite markers — the order ``figures.line_figure`` fixes). Returns the patches
    (``no_update`` for graphs with nothing new), the advanced cursor and the number of new points."""
    keys = [k for k in graph_keys if k in cursor.get("last", {})]
    if not keys:
        return [no_update] * len(graph_keys), dict(cursor), 0
    after = min(int(cursor["last"][k]) for k in keys)
    x = cursor.get("x", X_STEP)
    series = api.series([run_id], keys, x="time" if x == X_TIME else "step", after_step=after, points=20000)
    by_key = {s["key"]: s for s in series}
    ref = None
    if x == X_SAMPLES:
        ss = api.series([run_id], ["samples_seen"], x="step", points=5000)
        ref = (ss[0]["steps"], ss[0]["y"]) if ss else ([], [])
    new_cursor = {**cursor, "last": dict(cursor["last"]), "ema": dict(cursor.get("ema", {}))}
    smooth = float(cursor.get("smooth") or 0)
    patches: list[Any] = []
    total = 0
    for key in graph_keys:
        s = by_key.get(key)
        if key not in keys or not s:
            patches.append(no_update)
            continue
        last = int(cursor["last"][key])
        pts = [(st, xv, yv) for st, xv, yv in zip(s["steps"], s["x"], s["y"]) if st > last]
        if not pts:
            patches.append(no_update)
            continue
        steps = [p[0] for p in pts]
        ys = [p[2] for p in pts]
        if x == X_TIME:
            xs = relative_time([p[1] for p in pts], cursor.get("origin"))
        elif x == X_SAMPLES and ref is not None:
            xs = steps_to_samples(steps, *ref)
        else:
            xs = [float(st) for st in steps]
        total += len(pts)
        patch = Patch()
        patch["data"][0]["x"].extend(xs)
        patch["data"][0]["y"].extend(ys)
        if smooth:
            state = cursor.get("ema", {}).get(key)
            smoothed, new_state = ema(ys, smooth, state=tuple(state) if state else None)
            patch["data"][1]["x"].extend(xs)
            patch["data"][1]["y"].extend(smoothed)
            new_cursor["ema"][key] = list(new_state)
        bad = [(xv, yv) for xv, yv in zip(xs, ys) if not math.isfinite(yv)]
        level = max([float(cursor.get("level", {}).get(key, -math.inf))] + [v for v in ys if math.isfinite(v)])
        level = level if math.isfinite(level) else 1.0
        new_cursor.setdefault("level", {})[key] = level
        if bad:
            patch["data"][2]["x"].extend([b[0] for b in bad])
            patch["data"][2]["y"].extend([level] * len(bad))
            patch["data"][2]["text"].extend([f"{key}: {fmt_value(b[1])}" for b in bad])
            patch["data"][2]["showlegend"] = True
        new_cursor["last"][key] = steps[-1]
        patches.append(patch)
    return patches, new_cursor, total


@callback(
    Output({"type": ids.RUN_SCALAR_GRAPH, "key": ALL}, "figure"),
    Output(ids.RUN_CURSOR, "data", allow_duplicate=True),
    Input(ids.RUN_INTERVAL, "n_intervals"),
    State(ids.RUN_ID, "data"),
    State(ids.RUN_CURSOR, "data"),
    State({"type": ids.RUN_SCALAR_GRAPH, "key": ALL}, "id"),
    prevent_initial_call=True,
)
def append_live(_n, run_id, cursor, graph_ids):
    """Append what was logged since the last poll to the scalar charts (Patch: no redraw)."""
    if not cursor or not graph_ids:
        raise PreventUpdate
    keys = [g["key"] for g in graph_ids]
    try:
        patches, new_cursor, total = live_patches(current_api(), run_id, cursor, keys)
    except ApiError:
        raise PreventUpdate
    if total == 0:
        raise PreventUpdate
    return patches, new_cursor


@callback(
    Output(ids.RUN_STATE, "data"),
    Output(ids.RUN_HEADER, "children"),
    Output(ids.RUN_INTERVAL, "disabled"),
    Input(ids.RUN_INTERVAL, "n_intervals"),
    State(ids.RUN_ID, "data"),
    State(ids.RUN_STATE, "data"),
    prevent_initial_call=True,
)
def poll_state(n, run_id, state):
    """Every few polls: refresh the header, bump the data version when the run advanced (heavy panels
    listen to it), and stop polling once the run finished."""
    if (n or 0) % HEAVY_REFRESH_TICKS:
        raise PreventUpdate
    try:
        run = current_api().get_run(run_id)
    except ApiError:
        raise PreventUpdate
    state = dict(state or {})
    changed = run.get("last_step") != state.get("last_step") or run.get("status") != state.get("status")
    if not changed:
        raise PreventUpdate
    state.update(status=run.get("status"), last_step=run.get("last_step"), version=int(state.get("version", 0)) + 1)
    return state, header(run), run.get("status") == "finished"


@callback(
    Output(ids.RUN_KEYS, "data"),
    Input(ids.RUN_STATE, "data"),
    State(ids.RUN_ID, "data"),
    State(ids.RUN_KEYS, "data"),
    prevent_initial_call=True,
)
def refresh_catalog(_state, run_id, old):
    """New layers/keys appear while a run is live: refresh the catalog when the run advanced."""
    try:
        new = Catalog.from_keys(current_api().keys(run_id)).to_store()
    except ApiError:
        raise PreventUpdate
    if new == old:
        raise PreventUpdate
    return new


# -- spectra --------------------------------------------------------------------------------------

@callback(
    Output(ids.RUN_SPEC_HEATMAP, "figure"),
    Input(ids.RUN_LAYER, "value"),
    Input(ids.RUN_SOURCE, "value"),
    Input(ids.RUN_STATE, "data"),
    Input(ids.RUN_TABS, "value"),
    State(ids.RUN_ID, "data"),
)
def spectra_heatmap(layer, source, _state, tab, run_id):
    """Step x singular-value-index heatmap of one layer (log colour)."""
    if tab != "spectra":
        raise PreventUpdate
    title = f"singular values of {_src_label(source)} — {layer or 'no layer'}"
    if not layer or not source:
        return F.empty_figure("singular values over steps", HINTS["spectra"])
    steps, rows = array_matrix(current_api(), run_id, f"sv.{source}", layer, max_steps=current_config().heatmap_steps)
    if not rows:
        return F.empty_figure(title, HINTS["spectra"])
    transposed = [list(col) for col in zip(*rows)]  # y = index, x = step
    return F.heatmap_figure(steps, list(range(1, len(transposed) + 1)), transposed, title=title, x_title="step",
                            y_title="index i (descending σ)", colorbar_title="σ", log_color=True, reverse_y=True,
                            uirevision=f"{run_id}:spec:{layer}:{source}")


def _src_label(source: str | None) -> str:
    return {"weight": "W", "update": "ΔW", "pre_orth": "momentum before orthogonalization",
            "post_orth": "orthogonalized update"}.get(source or "", source or "?")


@callback(
    Output(ids.RUN_SPEC_AT_STEP, "figure"),
    Input(ids.RUN_LAYER, "value"),
    Input(ids.RUN_SOURCE, "value"),
    Input(ids.RUN_STEP, "value"),
    Input(ids.RUN_TABS, "value"),
    State(ids.RUN_ID, "data"),
    State(ids.RUN_KEYS, "data"),
)
def spectrum_at_step(layer, source, step, tab, run_id, keys):
    """The spectrum at the chosen step; for the Muon family, before vs after orthogonalization overlaid."""
    if tab != "spectra":
        raise PreventUpdate
    if not layer or not source:
        return F.empty_figure("spectrum at step", HINTS["spectra"])
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
            spectra.append((f"{_src_label(src)} @ step {got[0]}", got[1]))
    title = (f"before vs after orthogonalization — {layer}" if len(shown) == 2 else f"spectrum of {_src_label(source)} — {layer}")
    if at is not None:
        title += f" (step {at})"
    return F.spectrum_figure(spectra, title=title, empty_message=HINTS["spectra"], uirevision=f"{run_id}:sat:{layer}")


@callback(
    Output(ids.RUN_SPEC_SUMMARY, "figure"),
    Input(ids.RUN_SPEC_METRIC, "value"),
    Input(ids.RUN_SOURCE, "value"),
    Input(ids.RUN_STATE, "data"),
    Input(ids.RUN_TABS, "value"),
    State(ids.RUN_ID, "data"),
    State(ids.RUN_KEYS, "data"),
)
def spectra_summary(metric, source, _state, tab, run_id, keys):
    """All layers at once: a spectral metric as a layer x step heatmap (max per bin: spikes stay)."""
    if tab != "spectra":
        raise PreventUpdate
    catalog = Catalog.from_store(keys)
    muon_only = MUON_SUMMARIES.get(metric)  # measures of the Muon family, whatever the chosen source
    if muon_only is not None:
        quantity, title = muon_only
    else:
        quantity = f"sv.{source or 'weight'}.{metric}"
        title = f"{metric.replace('_', ' ')} of {_src_label(source)} — all layers"
    layers = catalog.layers_with(quantity)
    if not layers:
        return F.empty_figure(title, HINTS["spectra"] if muon_only is None else
                              f"no {metric.replace('_', ' ')} logged — it is measured for the Muon family")
    grid = quantity_grid(current_api(), run_id, quantity, layers, bins=current_config().layer_grid_bins)
    log = metric in ("cond", "spectral_norm", "orth_err")
    unit = {"cond": "σmax/σmin", "stable_rank": "‖W‖F²/‖W‖2²", "spectral_norm": "σmax", "eff_rank": "exp(entropy)",
            "orth_err": "error", "not_lifted": "fraction of σ"}.get(metric, metric)
    return F.heatmap_figure(grid.steps, grid.layers, grid.z, title=title, x_title="step", y_title="layer",
                            colorbar_title=unit, log_color=log, uirevision=f"{run_id}:sum:{quantity}",
                            height=max(320, 90 + 15 * len(grid.layers)))


# -- neurons --------------------------------------------------------------------------------------

@callback(
    Output(ids.RUN_NEURON_DIST, "figure"),
    Output(ids.RUN_NEURON_V, "figure"),
    Input(ids.RUN_LAYER, "value"),
    Input(ids.RUN_STEP, "value"),
    Input(ids.RUN_TABS, "value"),
    State(ids.RUN_ID, "data"),
    State(ids.RUN_KEYS, "data"),
)
def neuron_distribution(layer, step, tab, run_id, keys):
    """Per-row update norms of one layer at the chosen step, and NorMuon's v when logged."""
    if tab != "neurons":
        raise PreventUpdate
    catalog = Catalog.from_store(keys)
    api = current_api()
    dist_title = f"neuron update norms — {layer or 'no layer'}"
    got = array_at(api, run_id, "neuron.update_norm", layer, step) if layer and "neuron.update_norm" in catalog.arrays else None
    dist = (F.distribution_figure([(f"step {got[0]}", got[1])], title=f"{dist_title} (step {got[0]})",
                                  x_title="‖ΔW_row‖₂ (L2 norm of a neuron's update)")
            if got else F.empty_figure(dist_title, HINTS["neurons"]))
    v_title = f"NorMuon second moment v — {layer or 'no layer'}"
    got_v = array_at(api, run_id, "normuon.v", layer, step) if layer and "normuon.v" in catalog.arrays else None
    vfig = (F.distribution_figure([(f"step {got_v[0]}", got_v[1])], title=f"{v_title} (step {got_v[0]})",
                                  x_title="v (per-neuron second moment)", log_x=True)
            if got_v else F.empty_figure(v_title, "no NorMuon v logged — it exists for runs using probe.optim.NorMuon"))
    return dist, vfig


@callback(
    Output(ids.RUN_NEURON_CV, "figure"),
    Output(ids.RUN_NEURON_FROZEN, "figure"),
    Input(ids.RUN_STATE, "data"),
    Input(ids.RUN_TABS, "value"),
    State(ids.RUN_ID, "data"),
    State(ids.RUN_KEYS, "data"),
)
def neuron_summary(_state, tab, run_id, keys):
    """CV and frozen fraction of neuron update norms over time, all layers."""
    if tab != "neurons":
        raise PreventUpdate
    catalog = Catalog.from_store(keys)
    api, bins = current_api(), current_config().layer_grid_bins
    out = []
    for quantity, title, unit in (("neuron.cv", "coefficient of variation of neuron update norms — all layers", "CV (std/mean)"),
                                  ("neuron.frozen_frac", "frozen-neuron fraction — all layers", "fraction frozen")):
        layers = catalog.layers_with(quantity)
        if not layers:
            out.append(F.empty_figure(title, HINTS["neurons"]))
            continue
        grid = quantity_grid(api, run_id, quantity, layers, bins=bins)
        out.append(F.heatmap_figure(grid.steps, grid.layers, grid.z, title=title, x_title="step", y_title="layer",
                                    colorbar_title=unit, uirevision=f"{run_id}:{quantity}",
                                    height=max(320, 90 + 15 * len(grid.layers))))
    return out


@callback(
    Output(ids.RUN_NEURON_ROWS, "figure"),
    Input(ids.RUN_LAYER, "value"),
    Input(ids.RUN_STATE, "data"),
    Input(ids.RUN_TABS, "value"),
    State(ids.RUN_ID, "data"),
)
def neuron_row_rms(layer, state, tab, run_id):
    """NorMuon's row-RMS spread of O (before) and Ô (after its row normalization) for one layer."""
    if tab != "neurons":
        raise PreventUpdate
    title = f"NorMuon: row-RMS spread of O and Ô — {layer or 'no layer'}"
    if not layer:
        return F.empty_figure(title, HINTS["neurons"])
    lines = _per_layer_lines("normuon", ["row_rms_cv_before", "row_rms_cv_after"], layer, X_STEP,
                             (state or {}).get("created_at"), run_id)
    return F.line_figure(lines, title=title, x_title=X_TITLES[X_STEP], y_title="CV of row RMS",
                         empty_message="no row-RMS spread logged — it is measured for probe.optim.NorMuon",
                         uirevision=f"{run_id}:rows:{layer}")


# -- gradient difference --------------------------------------------------------------------------

def _per_layer_lines(prefix: str, names: Sequence[str], layer: str, x: str, origin: float | None, run_id: str):
    keys = [f"{prefix}.{n}/{layer}" for n in names]
    return x_lines(current_api(), run_id, keys, x=x, origin=origin, names=dict(zip(keys, names)),
                   points=current_config().series_points)


@callback(
    Output(ids.RUN_GDIFF_PARTS, "figure"),
    Output(ids.RUN_GDIFF_SPROJ, "figure"),
    Output(ids.RUN_GDIFF_BETA, "figure"),
    Input(ids.RUN_LAYER, "value"),
    Input(ids.RUN_X, "value"),
    Input(ids.RUN_SMOOTH, "value"),
    Input(ids.RUN_LOG, "value"),
    Input(ids.RUN_STATE, "data"),
    Input(ids.RUN_TABS, "value"),
    State(ids.RUN_ID, "data"),
    State(ids.RUN_KEYS, "data"),
)
def gdiff_panels(layer, x, smooth, log, state, tab, run_id, keys):
    """Parallel vs Fisher-orthogonal parts, s_proj, and FOP's β*/η* for one layer over time."""
    if tab != "gdiff":
        raise PreventUpdate
    catalog = Catalog.from_store(keys)
    prefix = "fop" if catalog.layers_with_prefix("fop.") else "gdiff"
    empty = [F.empty_figure(t, HINTS["gdiff"]) for t in ("parallel vs orthogonal parts", "s_proj", "β* and η*")]
    if not layer:
        return empty
    x = x or X_STEP
    smooth = float(smooth or 0)
    origin = (state or {}).get("created_at")
    log_y = "log" in (log or [])
    xt = X_TITLES[x]
    parts = F.line_figure(_per_layer_lines(prefix, ["parallel", "orthogonal", "gdiff_norm"], layer, x, origin, run_id),
                          title=f"g_diff: parallel vs Fisher-orthogonal parts — {layer}", x_title=xt,
                          y_title="norm (L2)", log_y=log_y, smoothing=smooth, empty_message=HINTS["gdiff"],
                          uirevision=f"{run_id}:gd1:{layer}")
    sproj = F.line_figure(_per_layer_lines(prefix, ["s_proj", "cos_g1_g2"], layer, x, origin, run_id),
                          title=f"s_proj and cos(g₁, g₂) — {layer}", x_title=xt, y_title="value (dimensionless)",
                          smoothing=smooth, empty_message=HINTS["gdiff"], uirevision=f"{run_id}:gd2:{layer}")
    if prefix == "fop":
        lines = _per_layer_lines(prefix, ["beta", "eta"], layer, x, origin, run_id)
        lines += x_lines(current_api(), run_id, ["fop.beta_neg_frac"], x=x, origin=origin,
                         names={"fop.beta_neg_frac": "share of layers with negative β* (global)"},
                         points=current_config().series_points)
        beta = F.line_figure(lines,
                             title=f"β* and η* — {layer}", x_title=xt, y_title="coefficient", smoothing=smooth,
                             empty_message=HINTS["gdiff"], uirevision=f"{run_id}:gd3:{layer}")
    else:
        beta = F.empty_figure(f"β* and η* — {layer}", "β* and η* are FOP's step coefficients: they exist for runs "
                              "using probe.optim.FOP")
    return parts, sproj, beta


@callback(
    Output(ids.RUN_GDIFF_SUMMARY, "figure"),
    Input(ids.RUN_STATE, "data"),
    Input(ids.RUN_TABS, "value"),
    State(ids.RUN_ID, "data"),
    State(ids.RUN_KEYS, "data"),
)
def gdiff_summary(_state, tab, run_id, keys):
    """s_proj of every layer over time."""
    if tab != "gdiff":
        raise PreventUpdate
    catalog = Catalog.from_store(keys)
    quantity = "fop.s_proj" if catalog.layers_with("fop.s_proj") else "gdiff.s_proj"
    layers = catalog.layers_with(quantity)
    title = "s_proj — all layers"
    if not layers:
        return F.empty_figure(title, HINTS["gdiff"])
    grid = quantity_grid(current_api(), run_id, quantity, layers, bins=current_config().layer_grid_bins)
    return F.heatmap_figure(grid.steps, grid.layers, grid.z, title=title, x_title="step", y_title="layer",
                            colorbar_title="s_proj", uirevision=f"{run_id}:{quantity}",
                            height=max(320, 90 + 15 * len(grid.layers)))


@callback(
    Output(ids.RUN_GDIFF_NOISE, "figure"),
    Output(ids.RUN_GDIFF_KL, "figure"),
    Input(ids.RUN_LAYER, "value"),
    Input(ids.RUN_X, "value"),
    Input(ids.RUN_SMOOTH, "value"),
    Input(ids.RUN_STATE, "data"),
    Input(ids.RUN_TABS, "value"),
    State(ids.RUN_ID, "data"),
    State(ids.RUN_KEYS, "data"),
)
def gdiff_noise_and_kl(layer, x, smooth, state, tab, run_id, keys):
    """The simple noise scale (global) and FOP's KL-norm split of g_comb for one layer."""
    if tab != "gdiff":
        raise PreventUpdate
    catalog = Catalog.from_store(keys)
    x = x or X_STEP
    smooth = float(smooth or 0)
    origin = (state or {}).get("created_at")
    key = "fop.noise_scale" if "fop.noise_scale" in catalog.globals else "gdiff.noise_scale"
    noise = F.line_figure(
        x_lines(current_api(), run_id, [key], x=x, origin=origin, names={key: "tr(Σ)/‖G‖²"},
                points=current_config().series_points),
        title="simple noise scale — the batch size beyond which more samples stop paying", x_title=X_TITLES[x],
        y_title="samples", log_y=True, smoothing=smooth, uirevision=f"{run_id}:gd4",
        empty_message="no noise scale logged — pass batch_size= to probe.attach (FOP, or the two-half-batch "
                      "measurement)")
    title = f"KL-norm split of g_comb — {layer or 'no layer'}"
    if layer and catalog.layers_with_prefix("fop."):
        kl = F.line_figure(_per_layer_lines("fop", ["kl_base", "kl_cross", "kl_orth"], layer, x, origin, run_id),
                           title=title, x_title=X_TITLES[x], y_title="gᵀM⁻¹FM⁻¹g term", smoothing=smooth,
                           empty_message=HINTS["gdiff"], uirevision=f"{run_id}:gd5:{layer}")
    else:
        kl = F.empty_figure(title, "the KL-norm split is FOP's: it exists for runs using probe.optim.FOP")
    return noise, kl


# -- KFAC -----------------------------------------------------------------------------------------

@callback(
    Output(ids.RUN_KFAC_EIGS, "figure"),
    Output(ids.RUN_KFAC_DAMPING, "figure"),
    Output(ids.RUN_KFAC_SPECTRUM, "figure"),
    Input(ids.RUN_LAYER, "value"),
    Input(ids.RUN_X, "value"),
    Input(ids.RUN_STEP, "value"),
    Input(ids.RUN_STATE, "data"),
    Input(ids.RUN_TABS, "value"),
    State(ids.RUN_ID, "data"),
    State(ids.RUN_KEYS, "data"),
)
def kfac_panels(layer, x, step, state, tab, run_id, keys):
    """Factor eigenvalue ranges and relative damping of one layer; the KL-clip factor; factor spectra."""
    if tab != "kfac":
        raise PreventUpdate
    if not layer:
        return [F.empty_figure(t, HINTS["kfac"]) for t in ("factor eigenvalue ranges", "damping", "factor spectra")]
    x = x or X_STEP
    origin = (state or {}).get("created_at")
    xt = X_TITLES[x]
    eigs = F.line_figure(_per_layer_lines("kfac", ["A_eig_min", "A_eig_max", "G_eig_min", "G_eig_max"], layer, x, origin, run_id),
                         title=f"KFAC factor eigenvalue ranges — {layer}", x_title=xt, y_title="eigenvalue",
                         log_y=True, empty_message=HINTS["kfac"], uirevision=f"{run_id}:kf1:{layer}")
    api = current_api()
    damping_lines = _per_layer_lines("kfac", ["damping_rel", "damping_rel_mean"], layer, x, origin, run_id)
    damping_lines += x_lines(api, run_id, ["kfac.kl_nu"], x=x, origin=origin, names={"kfac.kl_nu": "KL clip ν (global)"})
    damping = F.line_figure(damping_lines, title=f"relative damping and KL clip — {layer}", x_title=xt,
                            y_title="ratio", log_y=True, empty_message=HINTS["kfac"], uirevision=f"{run_id}:kf2:{layer}")
    spectra = []
    for key, name in (("kfac.A_eigs", "A (activations)"), ("kfac.G_eigs", "G (gradients)")):
        got = array_at(api, run_id, key, layer, step)
        if got:
            spectra.append((f"{name} @ step {got[0]}", got[1]))
    spec = F.spectrum_figure(spectra, title=f"KFAC factor eigenvalues — {layer}", y_title="eigenvalue λᵢ",
                             x_title="index i (descending λ)", empty_message=HINTS["kfac"])
    return eigs, damping, spec


# -- InfoBatch ------------------------------------------------------------------------------------

@callback(
    Output(ids.RUN_IB_PRUNED, "figure"),
    Output(ids.RUN_IB_SAVED, "figure"),
    Output("run-ib-threshold", "figure"),
    Output(ids.RUN_IB_CLASS, "figure"),
    Input(ids.RUN_STEP, "value"),
    Input(ids.RUN_STATE, "data"),
    Input(ids.RUN_TABS, "value"),
    State(ids.RUN_ID, "data"),
)
def infobatch_panels(epoch, _state, tab, run_id):
    """InfoBatch's ledger per epoch: pruned fraction, cumulative saved, threshold, per-class rate."""
    if tab != "infobatch":
        raise PreventUpdate
    api = current_api()
    keys = ["infobatch.pruned_frac", "infobatch.saved_frac_cum", "infobatch.threshold"]
    found = {s["key"]: s for s in api.series([run_id], keys, x="step", points=5000)}
    hint = HINTS["infobatch"]

    def xy(key):
        s = found.get(key) or {"steps": [], "y": []}
        return s["steps"], s["y"]

    pruned = F.bar_figure(*xy("infobatch.pruned_frac"), title="pruned fraction per epoch", x_title="epoch",
                          y_title="fraction of samples pruned", empty_message=hint)
    steps, vals = xy("infobatch.saved_frac_cum")
    saved = F.line_figure([F.Line("saved (cumulative)", steps, vals)], title="cumulative fraction of samples saved",
                          x_title="epoch", y_title="fraction saved", empty_message=hint)
    steps, vals = xy("infobatch.threshold")
    threshold = F.line_figure([F.Line("threshold", steps, vals)], title="pruning threshold (mean score)",
                              x_title="epoch", y_title="score (loss)", empty_message=hint)
    got = array_at(api, run_id, "infobatch.class_pruned_frac", "", epoch)
    cls = (F.bar_figure(list(range(len(got[1]))), got[1], title=f"pruned fraction per class (epoch {got[0]})",
                        x_title="class", y_title="fraction pruned")
           if got else F.empty_figure("pruned fraction per class", hint + " (with labels known)"))
    return pruned, saved, threshold, cls


# -- alerts and config ----------------------------------------------------------------------------

def alert_rows(run_id: str, events: Sequence[Mapping[str, Any]]) -> html.Table | html.Div:
    """Alerts as a table whose links open the right tab at the layer and step."""
    if not events:
        return message("No alerts", "Alerts (non-finite values, exploding condition numbers, frozen neurons, "
                       "large update ratios) appear here as the probe raises them.")
    head = html.Thead(html.Tr([html.Th(h) for h in ("step", "level", "alert", "layer", "message", "")]))
    body = []
    for ev in events:
        tab = ALERT_TAB.get(ev.get("key") or "", "scalars")
        query = {"tab": tab}
        if ev.get("layer"):
            query["layer"] = ev["layer"]
        if ev.get("step") is not None:
            query["step"] = str(ev["step"])
        href = f"/runs/{run_id}?{urlencode(query)}"
        body.append(html.Tr([
            html.Td(fmt_value(ev.get("step"))), html.Td(ev.get("level") or ""), html.Td(ev.get("key") or ""),
            html.Td(ev.get("layer") or "", className="kv-key"), html.Td(ev.get("message") or ""),
            html.Td(dcc.Link("open", href=href, refresh=True)),
        ]))
    return html.Table([head, html.Tbody(body)], className="data-table", id="run-alerts-table")


@callback(Output(ids.RUN_ALERTS, "children"), Input(ids.RUN_TABS, "value"), Input(ids.RUN_STATE, "data"),
          State(ids.RUN_ID, "data"))
def show_alerts(tab, _state, run_id):
    """The run's alerts, newest last."""
    if tab != "alerts":
        raise PreventUpdate
    try:
        events = current_api().events(run_id, kind="alert", limit=1000)
    except ApiError as exc:
        return message("Cannot load alerts", str(exc), kind="error")
    return alert_rows(run_id, events)


@callback(Output(ids.RUN_CONFIG, "children"), Input(ids.RUN_TABS, "value"), State(ids.RUN_ID, "data"))
def show_config(tab, run_id):
    """The run's config (flattened, dotted keys) and its bookkeeping."""
    if tab != "config":
        raise PreventUpdate
    run = current_api().get_run(run_id)
    meta = [(k, run.get(k)) for k in ("id", "project", "name", "optimizer", "status", "host", "world_size", "rank",
                                       "created_at", "finished_at", "last_step")]
    cfg = sorted(flatten(run.get("config")).items())
    return html.Div([
        html.H3("config"),
        key_value_table(cfg, id="run-config-table") if cfg else message("No config logged",
                                                                          "pass config={...} to probe.init"),
        html.H3("run"),
        key_value_table(meta),
        html.H3("tags"),
        html.Div(", ".join(run.get("tags") or []) or "—"),
    ])
