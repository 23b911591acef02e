"""Scalars tab: one live chart per picked key, appended to with ``Patch`` (no redraw, zoom kept)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from dash import ALL, Input, Output, Patch, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from .... import figures as F
from .... import ids
from ....api import ApiError
from ....colors import run_color
from ....components import fmt_value, graph, message
from ....queries import x_lines
from ....series import X_SAMPLES, X_STEP, X_TIME, X_TITLES, ema, relative_time, steps_to_samples, y_title
from ....state import current_api, current_config
from .base import Registrar, Tab, only_on

HINT = "no scalars logged yet — call run.log({'loss': loss}, step=step) in your training loop"
MAX_LIVE_POINTS = 5000  # more new points than this in one poll -> redraw (downsampled) instead of append
# Keys that are x axes, not something to look at first: a staircase ``epoch`` chart or a straight
# samples_seen line is never a useful first view (both remain pickable).
_NOT_FIRST = ("samples_seen", "epoch")


CSV_BUTTON = "run-scalar-csv"  # pattern id {"type": CSV_BUTTON, "key": <scalar key>}
CSV_BAR = "run-csv-bar"
CSV_DOWNLOAD = "run-csv-download"
CSV_NOTE = "run-csv-note"


def body(first_graphs: list[Any] | None = None, keys: Sequence[str] = ()) -> html.Div:
    # the download sits outside the charts' container, which is re-rendered on every full draw
    return html.Div([html.Div(csv_buttons(keys), id=CSV_BAR, className="hint"),
                     html.Div(first_graphs or [], id=ids.RUN_SCALARS, className="grid2"),
                     dcc.Download(id=CSV_DOWNLOAD), html.Div(id=CSV_NOTE, className="hint")])


def csv_button_id(key: str) -> dict[str, str]:
    return {"type": CSV_BUTTON, "key": key}


def csv_buttons(keys: Sequence[str] | None) -> list[Any]:
    """One "CSV" download per charted key (every stored point of it, not only the drawn ones)."""
    keys = list(keys or [])
    if not keys:
        return []
    return ["Download CSV: ", *[html.Button(k, id=csv_button_id(k), n_clicks=0, className="panel-csv",
                                            title=f"every logged point of {k} as CSV (step, time, value)",
                                            style={"marginRight": "6px", "fontSize": "12px"}) for k in keys]]


TAB = Tab("scalars", "Scalars", frozenset({"keys", "x", "smooth", "log"}), HINT, body,
          has_data=lambda catalog: True)


def default_keys(all_keys: Sequence[str]) -> list[str]:
    """The scalars shown before the user picks: of what the run logged, loss/accuracy-like keys first
    (``all_keys`` comes in that order), then the others, skipping x axes (epoch, samples_seen) and the
    probe's own keys; at most 4."""
    preferred = [k for k in all_keys if not k.startswith(("infobatch.", "probe.")) and k not in _NOT_FIRST]
    return preferred[:4]


def scalar_graph_id(key: str) -> dict[str, str]:
    return {"type": ids.RUN_SCALAR_GRAPH, "key": key}


def scalar_figures(api, run_id: str, keys: Sequence[str], *, x: str, smooth: float, log_y: bool,
                   origin: float | None, points: int) -> tuple[list[Any], dict[str, Any]]:
    """One figure per scalar key and the live cursor that continues them."""
    lines = x_lines(api, run_id, keys, x=x, origin=origin, points=points)
    figs = []
    cursor: dict[str, Any] = {"x": x, "smooth": smooth, "origin": origin, "keys": list(keys), "last": {}, "ema": {},
                              "level": {}}
    color = run_color(run_id)  # the run's colour here is its colour on the runs and compare pages
    for key, line in zip(keys, lines):
        line.color = color
        fig = F.line_figure([line], title=key, x_title=X_TITLES[x], y_title=y_title(key), log_y=log_y,
                            smoothing=smooth, uirevision=f"{run_id}:{key}:{x}", empty_message=HINT)
        figs.append(fig)
        cursor["last"][key] = line.steps[-1] if line.steps else -1
        cursor["level"][key] = F.marker_level([line.y])
        if smooth:
            cursor["ema"][key] = list(ema(line.y, smooth)[1])
    if x == X_SAMPLES:
        cursor["samples_last"] = None  # x of new points is re-mapped from samples_seen on each poll
    return figs, cursor


def first_graphs(api, run_id: str, keys: Sequence[str], *, x: str, smooth: float, log_y: bool,
                 origin: float | None, points: int) -> tuple[list[Any], dict[str, Any] | None]:
    """The charts drawn in the page's own response (one round trip less before the page is useful)."""
    if not keys:
        return [], None
    figs, cursor = scalar_figures(api, run_id, keys, x=x, smooth=smooth, log_y=log_y, origin=origin,
                                  points=points)
    return [graph(scalar_graph_id(k), fig) for k, fig in zip(keys, figs)], cursor


def draw_scalars(keys, x, smooth, log, tab, run_id, state):
    """Full draw of the scalar charts (downsampled on the server); resets the live cursor."""
    only_on(tab, "scalars")
    keys = list(keys or [])
    if not keys:
        return [message("No scalars picked", HINT)], None
    cfg = current_config()
    figs, cursor = scalar_figures(current_api(), run_id, keys, x=x or X_STEP, smooth=float(smooth or 0),
                                  log_y="log" in (log or []), origin=(state or {}).get("created_at"),
                                  points=cfg.series_points)
    return [graph(scalar_graph_id(k), fig) for k, fig in zip(keys, figs)], cursor


def live_patches(api, run_id: str, cursor: Mapping[str, Any],
                 graph_keys: Sequence[str]) -> tuple[list[Any], dict[str, Any], int]:
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


def csv_download(run_id: str, key: str) -> tuple[Any, str]:
    """``(dcc.Download data, note)`` for one key, read from the API with the signed-in user's token
    (what that token may read is the API's decision, as for every chart): a refused or failed read
    is a note naming the key, not a file."""
    try:
        text = current_api().series_csv(run_id, [key])
    except ApiError as exc:
        return no_update, f"Cannot export {key}: {exc}"
    return dcc.send_string(text, filename=f"{run_id}-{key}.csv", type="text/csv"), ""


def download_csv(_clicks, run_id):
    """The clicked button's key as CSV."""
    clicked = ctx.triggered_id
    if not isinstance(clicked, dict) or not (ctx.triggered and ctx.triggered[0].get("value")):
        raise PreventUpdate  # buttons appearing with a redraw are not clicks
    return csv_download(run_id, clicked["key"])


def register(app: Registrar) -> None:
    app.callback(Output(CSV_BAR, "children"), Input(ids.RUN_KEYS_SELECT, "value"),
                 prevent_initial_call=True)(csv_buttons)
    app.callback(
        Output(CSV_DOWNLOAD, "data"), Output(CSV_NOTE, "children"),
        Input({"type": CSV_BUTTON, "key": ALL}, "n_clicks"), State(ids.RUN_ID, "data"),
        prevent_initial_call=True,
    )(download_csv)
    # Both callbacks write the live cursor: they stay in this module (the second with allow_duplicate).
    app.callback(
        Output(ids.RUN_SCALARS, "children"),
        Output(ids.RUN_CURSOR, "data"),
        Input(ids.RUN_KEYS_SELECT, "value"),
        Input(ids.RUN_X, "value"),
        Input(ids.RUN_SMOOTH, "value"),
        Input(ids.RUN_LOG, "value"),
        Input(ids.RUN_TABS, "value"),
        State(ids.RUN_ID, "data"),
        State(ids.RUN_STATE, "data"),
        prevent_initial_call=True,
    )(draw_scalars)
    app.callback(
        Output({"type": ids.RUN_SCALAR_GRAPH, "key": ALL}, "figure"),
        Output(ids.RUN_CURSOR, "data", allow_duplicate=True),
        Input(ids.RUN_INTERVAL, "n_intervals"),
        State(ids.RUN_ID, "data"),
        State(ids.RUN_CURSOR, "data"),
        State({"type": ids.RUN_SCALAR_GRAPH, "key": ALL}, "id"),
        prevent_initial_call=True,
    )(append_live)
