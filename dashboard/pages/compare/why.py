"""The compare page's "why": the ranked per-layer differences between two groups at matched
progress (the server's ``/analysis/why``), each linking to the run-page panel that shows it.
"""

from __future__ import annotations

from typing import Any

from dash import Input, Output, State, dcc, html

from ... import ids
from ...api import ApiError
from ...components import control, message
from ...state import current_api
from . import groups as CG
from .page_ids import CMP_GROUPS, CMP_WHY, CMP_WHY_A, CMP_WHY_AT, CMP_WHY_BASELINE, CMP_WHY_MATCH
from .time_to_target import default_direction, target_for

WHY_TOP = 10


def section() -> html.Section:
    """The two sides, how they are matched, and the ranked list."""
    return html.Section([
        html.H3("Why: what differs between two groups"),
        html.P("Every per-layer diagnostic both sides logged, read at matched progress, averaged over the "
               "layers of one kind (blocks.*.fc) and ranked by standardized difference: against the "
               "seed-to-seed spread with ≥ 2 seeds a side (Welch t, Benjamini–Hochberg), else against how "
               "much the difference varies between layers. Each line links to the panel that shows it.",
               className="hint"),
        html.Div([
            control("A", dcc.Dropdown(id=CMP_WHY_A, clearable=False), width="260px"),
            control("vs baseline", dcc.Dropdown(id=CMP_WHY_BASELINE, clearable=False), width="260px"),
            control("matched by", dcc.RadioItems(id=CMP_WHY_MATCH, inline=True, value="loss", options=[
                {"label": " same loss (the time-to-target metric and target)", "value": "loss"},
                {"label": " same step", "value": "step"}, {"label": " samples seen", "value": "samples"}])),
            control("at", dcc.Input(id=CMP_WHY_AT, type="number", debounce=True, placeholder="auto",
                                    style={"width": "120px"})),
        ], className="controls"),
        dcc.Loading(html.Div(id=CMP_WHY), type="dot", delay_show=400),
    ], className="section")


def why_sides(groups, baseline_run, a, base):
    """Offer the groups; keep earlier choices that still exist, else A = first non-baseline group."""
    gs = (groups or {}).get("groups") or []
    labels = [g["group"] for g in gs]
    options = [{"label": f"{g['group']} (n={g['n']})", "value": g["group"]} for g in gs]
    default_a, default_base = CG.default_sides(gs, baseline_run)
    base = base if base in labels else default_base
    a = a if a in labels and a != base else (default_a if default_a != base else None)
    return options, a, options, base


def why(a, base, match, at, groups, key, target, direction, meta):
    """The top lines of ``/analysis/why`` for A vs the baseline group."""
    gs = {g["group"]: g for g in (groups or {}).get("groups") or []}
    if not a or not base or a not in gs or base not in gs or a == base:
        return message("Pick two groups", "Choose A and a baseline (two different groups or runs).")
    api = current_api()
    match = match or "loss"
    direction_v = direction
    if match == "loss":
        if not key:
            return message("Pick a time-to-target metric", "Matching by loss reads each run where it first reached "
                           "the time-to-target metric's target.")
        if at is None:
            at, direction_v = target_for(api, list(meta or {}), key, target, direction)
        direction_v = direction_v if direction_v in ("below", "above") else default_direction(key)
    run_ids = [*gs[a]["run_ids"], *gs[base]["run_ids"]]
    try:
        result = api.analysis_why(run_ids, a_runs=gs[a]["run_ids"], baseline_runs=gs[base]["run_ids"], match=match,
                                  at=at, key=key if match == "loss" else None, direction=direction_v or "below",
                                  top=WHY_TOP)
    except ApiError as exc:
        return message("Cannot compute the why", str(exc), kind="error")
    return CG.why_panel(result)


def register(app: Any) -> None:
    """Register the section's callbacks on ``app`` (a Dash app, or the ``dash`` module's global list)."""
    app.callback(
        Output(CMP_WHY_A, "options"),
        Output(CMP_WHY_A, "value"),
        Output(CMP_WHY_BASELINE, "options"),
        Output(CMP_WHY_BASELINE, "value"),
        Input(CMP_GROUPS, "data"),
        Input(ids.CMP_TTT_BASELINE, "value"),
        State(CMP_WHY_A, "value"),
        State(CMP_WHY_BASELINE, "value"),
    )(why_sides)
    app.callback(
        Output(CMP_WHY, "children"),
        Input(CMP_WHY_A, "value"),
        Input(CMP_WHY_BASELINE, "value"),
        Input(CMP_WHY_MATCH, "value"),
        Input(CMP_WHY_AT, "value"),
        State(CMP_GROUPS, "data"),
        State(ids.CMP_TTT_KEY, "value"),
        State(ids.CMP_TTT_TARGET, "value"),
        State(ids.CMP_TTT_DIRECTION, "value"),
        State(ids.CMP_META, "data"),
    )(why)
