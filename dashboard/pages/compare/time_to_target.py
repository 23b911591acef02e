"""The compare page's time to target: steps, wall time and samples seen until a metric first crosses
a target, per run (the server's ``/time-to-target``) and, grouped, per seed group with bootstrap
intervals (``/analysis/time-to-target``); speedups against a baseline run or group.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from dash import Input, Output, State, dcc, html, no_update

from ... import ids
from ...api import ApiClient, ApiError
from ...components import control, fmt_duration, fmt_value, message, speedup_text
from ...state import current_api
from . import groups as CG
from .page_ids import CMP_GROUPS, CMP_TTT_GROUPS
from .paint import group_color, swatch


def section(metric_options: Sequence[str], metric: str | None, target: float | None, direction: str | None,
            baseline_options: Sequence[Mapping[str, Any]], baseline: str | None) -> html.Section:
    """The metric, target, direction and baseline controls, the group table and the per-run table."""
    return html.Section([
        html.H3("Time to target"),
        html.P("Steps, wall time and samples seen until the metric first crosses the target (raw points, "
               "computed by the server); speedup = baseline ÷ run, so > 1 means faster than the baseline.",
               className="hint"),
        html.Div([
            control("metric", dcc.Dropdown(id=ids.CMP_TTT_KEY, options=metric_options, value=metric,
                                           clearable=False),
                    width="220px"),
            control("target", dcc.Input(id=ids.CMP_TTT_TARGET, type="number", value=target, debounce=True,
                                        placeholder="auto", style={"width": "130px"})),
            control("reached when", dcc.RadioItems(
                id=ids.CMP_TTT_DIRECTION, inline=True, value=direction if direction in ("below", "above") else None,
                options=[{"label": " ≤ target", "value": "below"}, {"label": " ≥ target", "value": "above"}])),
            control("baseline", dcc.Dropdown(id=ids.CMP_TTT_BASELINE, options=baseline_options,
                                             value=baseline, clearable=False), width="260px"),
        ], className="controls"),
        dcc.Loading(html.Div(id=CMP_TTT_GROUPS), type="dot", delay_show=400),
        dcc.Loading(html.Div(id=ids.CMP_TTT_TABLE), type="dot", delay_show=400),
    ], className="section")


def default_direction(key: str | None) -> str:
    """Accuracy-like metrics are reached from below (≥ target); losses from above (≤ target)."""
    k = (key or "").lower()
    return "above" if any(t in k for t in ("acc", "f1", "auc", "precision", "recall", "score")) else "below"


def default_target(series: Sequence[Mapping[str, Any]], direction: str) -> float | None:
    """A target every run reaches: the worst of the runs' best values (the server's min/max
    downsampling keeps each run's extreme, so this is exact)."""
    bests = []
    for s in series:
        ys = [y for y in s["y"] if math.isfinite(y)]
        if ys:
            bests.append(min(ys) if direction == "below" else max(ys))
    if not bests:
        return None
    # exact, not rounded: a target rounded past the worst run's best value would read "not reached"
    return max(bests) if direction == "below" else min(bests)


def ttt_table(result: Mapping[str, Any], meta: Mapping[str, Mapping[str, Any]]) -> html.Table:
    """The time-to-target rows as a table; the baseline row is marked and speedups coloured."""
    head = ["run", "reached", "steps", "wall time", "samples seen", "speedup (steps)", "speedup (time)",
            "speedup (samples)"]
    body = []
    for row in result.get("rows", []):
        rid = row.get("run_id")
        name = row.get("name") or (meta.get(rid) or {}).get("name") or rid
        is_base = rid == result.get("baseline")
        cells = [
            html.Td([swatch(rid), dcc.Link(name, href=f"/runs/{rid}"), " (baseline)" if is_base else ""]),
            html.Td("yes" if row.get("reached") else "no"),
            html.Td(fmt_value(row.get("step")) if row.get("reached") else "—"),
            html.Td(fmt_duration(row.get("time_s")) if row.get("reached") else "—"),
            html.Td(fmt_value(row.get("samples_seen")) if row.get("samples_seen") is not None else "—"),
        ]
        for name_ in ("speedup_steps", "speedup_time", "speedup_samples"):
            v = row.get(name_)
            cls = "speedup-fast" if v is not None and v > 1.0 + 1e-9 else ("speedup-slow" if v is not None and v < 1 - 1e-9 else "")
            cells.append(html.Td(speedup_text(v), className=cls))
        body.append(html.Tr(cells, className="ttt-row", **{"data-run": rid}))
    return html.Table([html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(body)],
                      className="data-table", id="cmp-ttt-result")


def time_to_target(key, target, direction, baseline, meta):
    """Ask the server's /time-to-target (one implementation, shared with the demo) and tabulate."""
    meta = meta or {}
    if not key or len(meta) < 1:
        return message("Pick runs and a metric", "The table appears when the runs share a scalar."), no_update, no_update
    api = current_api()
    direction_out = no_update
    if direction not in ("below", "above"):
        direction = direction_out = default_direction(key)
    placeholder = no_update
    if target is None:
        # min/max buckets keep each run's extreme, so a coarse series gives the exact best value
        target = default_target(api.series(list(meta), [key], points=200), direction)
        if target is None:
            return message(f"No run logged {key}"), no_update, direction_out
        placeholder = f"auto: {target:.4g}"
    run_ids = list(meta)
    if baseline in run_ids:  # the server's default baseline is the first run id: put the chosen one first
        run_ids.remove(baseline)
        run_ids.insert(0, baseline)
    try:
        result = api.time_to_target(run_ids, key, float(target), direction=direction, baseline=baseline)
    except ApiError as exc:
        return message("Cannot compute time to target", str(exc), kind="error"), placeholder, direction_out
    rel = "≤" if direction == "below" else "≥"
    caption = html.P(f"{key} {rel} {target:.4g}; baseline: {(meta.get(result.get('baseline')) or {}).get('name', result.get('baseline'))}",
                     className="hint")
    return html.Div([caption, ttt_table(result, meta)]), placeholder, direction_out


def target_for(api: ApiClient, run_ids: Sequence[str], key: str, target, direction) -> tuple[float | None, str]:
    direction = direction if direction in ("below", "above") else default_direction(key)
    if target is None:
        target = default_target(api.series(list(run_ids), [key], points=200), direction)
    return (None if target is None else float(target)), direction


def group_time_to_target(key, target, direction, baseline, groups, meta):
    """The group table (``/analysis/time-to-target``) above the per-run one, when runs are grouped."""
    meta = meta or {}
    if not (groups or {}).get("grouped") or not key or not meta:
        return None
    api = current_api()
    target, direction = target_for(api, list(meta), key, target, direction)
    if target is None:
        return None
    try:
        result = api.analysis_time_to_target(list(meta), key, target, direction=direction, baseline_run=baseline,
                                             group_by=CG.group_by_keys(groups.get("group_by")))
    except ApiError as exc:
        return message("Cannot compute the group table", str(exc), kind="error")
    rel = "≤" if direction == "below" else "≥"
    caption = html.P(f"Seed groups: {key} {rel} {target:.4g}; baseline group {result.get('baseline')}; speedup = "
                     "baseline ÷ group with a bootstrap 95 % interval over seeds (paired by seed); an interval "
                     "containing 1 reads “no difference at this n”.", className="hint")
    colors = {g["group"]: group_color(g) for g in groups.get("groups") or []}
    return html.Div([caption, CG.group_ttt_table(result, colors)])


def register(app: Any) -> None:
    """Register the section's callbacks on ``app`` (a Dash app, or the ``dash`` module's global list)."""
    app.callback(
        Output(ids.CMP_TTT_TABLE, "children"),
        Output(ids.CMP_TTT_TARGET, "placeholder"),
        Output(ids.CMP_TTT_DIRECTION, "value"),
        Input(ids.CMP_TTT_KEY, "value"),
        Input(ids.CMP_TTT_TARGET, "value"),
        Input(ids.CMP_TTT_DIRECTION, "value"),
        Input(ids.CMP_TTT_BASELINE, "value"),
        State(ids.CMP_META, "data"),
    )(time_to_target)
    app.callback(
        Output(CMP_TTT_GROUPS, "children"),
        Input(ids.CMP_TTT_KEY, "value"),
        Input(ids.CMP_TTT_TARGET, "value"),
        Input(ids.CMP_TTT_DIRECTION, "value"),
        Input(ids.CMP_TTT_BASELINE, "value"),
        Input(CMP_GROUPS, "data"),
        State(ids.CMP_META, "data"),
    )(group_time_to_target)
