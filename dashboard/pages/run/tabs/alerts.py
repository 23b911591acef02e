"""Alerts tab: the probe's alerts, each linking to the tab, layer and step it is about."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from dash import Input, Output, State, dcc, html

from .... import ids
from ....api import ApiError
from ....components import fmt_value, message
from ....state import current_api
from .base import Registrar, Tab, only_on

# alert key -> the tab that shows what it is about (tab ids as strings: tabs never import each other)
ALERT_TAB = {"cond_explode": "spectra", "frozen_neurons": "neurons", "nonfinite": "scalars", "update_ratio": "scalars"}


def body() -> html.Div:
    return html.Div(id=ids.RUN_ALERTS)


def _label(run: Mapping[str, Any]) -> str:
    n = run.get("alerts_count") or 0
    return f"Alerts ({n})" if n else "Alerts"


TAB = Tab("alerts", "Alerts", frozenset(), "", body, label_for=_label)


def alert_rows(run_id: str, events: Sequence[Mapping[str, Any]]) -> html.Table | html.Div:
    """Alerts as a table whose links open the right tab at the layer and step."""
    if not events:
        return message("No alerts", "Alerts (non-finite values, exploding condition numbers, frozen neurons, "
                       "large update ratios) appear here as the probe raises them.")
    head = html.Thead(html.Tr([html.Th(h) for h in ("step", "level", "alert", "layer", "message", "")]))
    body_rows = []
    for ev in events:
        tab = ALERT_TAB.get(ev.get("key") or "", "scalars")
        query = {"tab": tab}
        if ev.get("layer"):
            query["layer"] = ev["layer"]
        if ev.get("step") is not None:
            query["step"] = str(ev["step"])
        href = f"/runs/{run_id}?{urlencode(query)}"
        body_rows.append(html.Tr([
            html.Td(fmt_value(ev.get("step"))), html.Td(ev.get("level") or ""), html.Td(ev.get("key") or ""),
            html.Td(ev.get("layer") or "", className="kv-key"), html.Td(ev.get("message") or ""),
            html.Td(dcc.Link("open", href=href, refresh=True)),
        ]))
    return html.Table([head, html.Tbody(body_rows)], className="data-table", id="run-alerts-table")


def show_alerts(tab, _state, run_id):
    """The run's alerts, newest last."""
    only_on(tab, "alerts")
    try:
        events = current_api().events(run_id, kind="alert", limit=1000)
    except ApiError as exc:
        return message("Cannot load alerts", str(exc), kind="error")
    return alert_rows(run_id, events)


def register(app: Registrar) -> None:
    app.callback(Output(ids.RUN_ALERTS, "children"), Input(ids.RUN_TABS, "value"), Input(ids.RUN_STATE, "data"),
                 State(ids.RUN_ID, "data"))(show_alerts)
