"""Small reusable pieces of layout and the text formatting they share.

Everything user-provided (run names, tags, config values, alert messages) goes into Dash
components as *children text*, which React escapes; nothing here builds HTML strings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from dash import dcc, html

STATUS_COLORS = {"running": "#2ca02c", "finished": "#1f77b4", "crashed": "#d62728"}


# -- formatting ---------------------------------------------------------------------------------

def fmt_value(value: Any, digits: int = 4) -> str:
    """A metric value as short text; non-finite values are spelled out (they are data)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return f"{value:.{digits}g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def parse_time(value: str | float | None) -> datetime | None:
    """ISO-8601 (RunRead datetimes) or unix seconds -> aware datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(float(value), tz=timezone.utc)
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def fmt_datetime(value: str | float | None) -> str:
    """UTC timestamp with minute precision (sortable as text)."""
    dt = parse_time(value)
    return dt.strftime("%Y-%m-%d %H:%M UTC") if dt else "—"


def fmt_duration(seconds: float | None) -> str:
    """Seconds as ``1h 02m``, ``3m 07s`` or ``12.3 s``."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def run_duration(run: Mapping[str, Any], now: datetime | None = None) -> float | None:
    """Wall seconds from creation to finish, or to the last heartbeat/now while running."""
    start = parse_time(run.get("created_at"))
    if start is None:
        return None
    end = parse_time(run.get("finished_at"))
    if end is None and run.get("status") == "running":
        end = now or datetime.now(timezone.utc)
    elif end is None:  # crashed: it ended around its last sign of life
        end = parse_time(run.get("heartbeat_at")) or parse_time(run.get("updated_at"))
    return (end - start).total_seconds() if end else None


def flatten(config: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """Nested config -> dotted keys (``optimizer.lr``), matching the server's config filter."""
    out: dict[str, Any] = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def speedup_text(value: float | None) -> str:
    """``1.52×``; ``—`` when either run did not reach the target."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.2f}×"


# -- components ---------------------------------------------------------------------------------

def status_badge(status: str | None, *, live: bool | None = None) -> html.Span:
    """Coloured status pill; running runs get a pulsing "live" dot (CSS in assets/)."""
    status = status or "unknown"
    children: list[Any] = []
    if live if live is not None else status == "running":
        children.append(html.Span(className="live-dot"))
    children.append(status)
    return html.Span(children, className=f"badge badge-{status}",
                     style={"backgroundColor": STATUS_COLORS.get(status, "#7f7f7f")})


def message(title: str, text: str = "", *, kind: str = "info", id: str | None = None) -> html.Div:
    """A readable notice (unknown run, server unreachable, nothing logged yet)."""
    props: dict[str, Any] = {"className": f"notice notice-{kind}"}
    if id:
        props["id"] = id
    return html.Div([html.Strong(title), html.Div(text) if text else None], **props)


def control(label: str, component: Any, *, width: str = "auto", id: str | None = None) -> html.Div:
    """A labelled control in the controls bar (``id`` lets a page show or hide it)."""
    props: dict[str, Any] = {"className": "control", "style": {"minWidth": width}}
    if id:
        props["id"] = id
    return html.Div([html.Label(label, className="control-label"), component], **props)


# Every chart's plotly config. No "Share chart…"/"Edit in Chart Studio": one click would upload the
# chart's data to Plotly's cloud (a leak, and broken on air-gapped clusters); no plotly logo link.
GRAPH_CONFIG: dict[str, Any] = {
    "displaylogo": False,
    "showSendToCloud": False,
    "showEditInChartStudio": False,
    "showLink": False,
    "sendData": False,
    "modeBarButtonsToRemove": ["sendDataToCloud", "editInChartStudio"],
    "toImageButtonOptions": {"format": "png"},
}


def graph(id: Any, figure: Any = None, *, height: int | None = None) -> dcc.Graph:
    """A ``dcc.Graph`` with the interaction defaults used everywhere (see ``GRAPH_CONFIG``; responsive)."""
    props: dict[str, Any] = {"style": {"height": f"{height}px"}} if height else {}
    return dcc.Graph(
        id=id, figure=figure if figure is not None else {"data": [], "layout": {}},
        config=dict(GRAPH_CONFIG), **props,
    )


def key_value_table(rows: Iterable[tuple[str, Any]], *, id: str | None = None, headers: tuple[str, str] = ("key", "value")) -> html.Table:
    """A two-column table of text cells."""
    body = [html.Tr([html.Td(k, className="kv-key"), html.Td(fmt_value(v))]) for k, v in rows]
    props: dict[str, Any] = {"className": "kv-table"}
    if id:
        props["id"] = id
    return html.Table([html.Thead(html.Tr([html.Th(h) for h in headers])), html.Tbody(body)], **props)


def section(title: str, children: Any, *, hint: str | None = None) -> html.Section:
    """A titled block on a page."""
    return html.Section([html.H3(title), html.P(hint, className="hint") if hint else None, children],
                        className="section")
