"""The compare page's run picker: opens with the newest runs, searches every run by name as the
user types, and keeps runs named in the URL that are older than the newest listed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dash
from dash import Input, Output, State, dcc, html

from ... import ids
from ...api import ApiClient, ApiError
from ...components import control, message
from ...state import current_api


# The picker opens with the newest runs; typing searches every run by name on the server. Few: Dash's
# Dropdown indexes its options for search on every render (200 options cost ~1.1 s of the compare
# page's browser time on a 2-core box, 20 about 0.1 s).
PICKER_RECENT = 20
PICKER_MATCHES = 100


def run_option(run: Mapping[str, Any]) -> dict[str, str]:
    return {"label": f"{run.get('name') or run['id']} ({run.get('project')})", "value": run["id"]}


def search_run_options(search: str | None, selected: Sequence[str] | None,
                       options: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """The picker's options while the user types: the picked runs (kept, or the dropdown drops them)
    plus the server's name matches over every run, not only the newest listed at page load."""
    if not search or not search.strip():
        raise dash.exceptions.PreventUpdate
    picked = set(selected or [])
    keep = [dict(o) for o in options or [] if o["value"] in picked]
    try:
        matches, _ = current_api().list_runs(q=search.strip(), limit=PICKER_MATCHES)
    except ApiError:
        return list(options or [])
    seen = {o["value"] for o in keep}
    return keep + [run_option(r) for r in matches if r["id"] not in seen]


def picker_choices(api: ApiClient, run_ids: Sequence[str]) -> tuple[list[Mapping[str, Any]], list[dict[str, str]],
                                                                    list[str], list[Any]]:
    """(runs read: the newest and the URL's, picker options, the URL's runs that exist, notes) for the
    first render; raises ``ApiError`` when the server cannot list runs. The URL's runs older than the
    newest listed are read in one request, and returned so the page does not read them again."""
    runs, _ = api.list_runs(limit=PICKER_RECENT)
    known = {r["id"] for r in runs}
    missing = [r for r in dict.fromkeys(run_ids) if r not in known]
    if missing:  # unknown (or unreadable) ids are not listed: reported below as ignored
        runs += api.list_runs(ids=missing, limit=len(missing))[0]
    options = [run_option(r) for r in runs]
    found = {r["id"] for r in runs}
    valid = [r for r in run_ids if r in found]
    unknown = [r for r in run_ids if r not in found]
    notes = [message("Unknown runs ignored", ", ".join(unknown), kind="warning")] if unknown else []
    return runs, options, valid, notes


def picker_row(options: Sequence[Mapping[str, Any]], valid: Sequence[str]) -> html.Div:
    """The runs dropdown."""
    return html.Div([
        control("runs (2–50)", dcc.Dropdown(id=ids.CMP_RUNS, options=options, value=valid, multi=True,
                                            placeholder="pick runs to compare"), width="100%"),
    ], className="controls")


def register(app: Any) -> None:
    """Register the section's callbacks on ``app`` (a Dash app, or the ``dash`` module's global list)."""
    app.callback(
        Output(ids.CMP_RUNS, "options"), Input(ids.CMP_RUNS, "search_value"),
        State(ids.CMP_RUNS, "value"), State(ids.CMP_RUNS, "options"),
        prevent_initial_call=True,
    )(search_run_options)
