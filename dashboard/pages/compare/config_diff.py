"""The compare page's config diff: only the config keys (and optimizer) whose values differ."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dash import Input, Output, html

from ... import ids
from ...components import flatten, fmt_value, message
from .paint import swatch


def section() -> html.Section:
    """The heading and the table's place."""
    return html.Section([
        html.H3("Config: only what differs"),
        html.Div(id=ids.CMP_CONFIG_DIFF),
    ], className="section")


def config_diff(meta: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(run names, [(key, value per run)]) for the keys whose values are not all equal; a key missing
    from a run counts as different (shown as —). Optimizer is included: it is the usual difference."""
    flat = {rid: {"optimizer": m.get("optimizer"), **flatten(m.get("config"))} for rid, m in meta.items()}
    keys = sorted({k for f in flat.values() for k in f})
    rows = []
    for k in keys:
        values = [fmt_value(f[k]) if k in f else "—" for f in flat.values()]
        if len(set(values)) > 1:
            rows.append((k, values))
    return [m["name"] for m in meta.values()], rows


def show_config_diff(meta):
    """Only the config keys that differ between the runs."""
    meta = meta or {}
    if len(meta) < 2:
        return message("Pick at least two runs to see their config differences")
    names, rows = config_diff(meta)
    if not rows:
        return message("Identical configs", "These runs have the same config and optimizer.")
    head = html.Thead(html.Tr([html.Th("key")] + [html.Th([swatch(rid), n]) for rid, n in zip(meta, names)]))
    body = html.Tbody([html.Tr([html.Td(k, className="kv-key")] + [html.Td(v) for v in values]) for k, values in rows])
    return html.Div(html.Table([head, body], className="data-table", id="cmp-config-table"), style={"overflowX": "auto"})


def register(app: Any) -> None:
    """Register the section's callbacks on ``app`` (a Dash app, or the ``dash`` module's global list)."""
    app.callback(Output(ids.CMP_CONFIG_DIFF, "children"), Input(ids.CMP_META, "data"))(show_config_diff)
