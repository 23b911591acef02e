"""The run page's header: name, status badge and the facts a user checks first."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dash import html

from ...colors import run_color
from ...components import fmt_datetime, fmt_duration, fmt_value, parse_time, run_duration, status_badge


def created_ts(run: Mapping[str, Any]) -> float | None:
    """The run's start (unix s): the origin of the wall-time axis, so runs compare from their start."""
    dt = parse_time(run.get("created_at"))
    return dt.timestamp() if dt else None


def optimizer_of(run: Mapping[str, Any]) -> str:
    """The optimizer the run names, else the one its config names (``optimizer`` or
    ``optimizer.class``), else a dash."""
    if run.get("optimizer"):
        return str(run["optimizer"])
    cfg = run.get("config") or {}
    value = cfg.get("optimizer") if isinstance(cfg, Mapping) else None
    if isinstance(value, Mapping):
        value = value.get("class") or value.get("name")
    return str(value) if value else "—"


def header(run: Mapping[str, Any]) -> list[Any]:
    """Name, status (live badge), and the facts a user checks first. All text children: escaped."""
    facts = [
        ("project", run.get("project")), ("optimizer", optimizer_of(run)),
        ("step", fmt_value(run.get("last_step"))), ("started", fmt_datetime(run.get("created_at"))),
        ("duration", fmt_duration(run_duration(run))), ("alerts", fmt_value(run.get("alerts_count") or 0)),
        ("id", run.get("id")),
    ]
    return [
        html.Span("●", id="run-color", title="this run's colour on every page",
                  style={"color": run_color(str(run.get("id") or "")), "fontSize": "22px", "marginRight": "6px"}),
        html.H2(run.get("name") or run.get("id"), id="run-name"),
        status_badge(run.get("status")),
        html.Span([html.Span([html.B(f"{k}: "), str(v), "  "]) for k, v in facts], className="run-meta"),
    ]
