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


PICKER_RECENT = 200  # the run picker opens with the newest runs; typing searches every run by name
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
    """(newest runs listed, picker options, the URL's runs that exist, notes) for the first render;
    raises ``ApiError`` when the server cannot list runs."""
    all_runs, _ = api.list_runs(limit=PICKER_RECENT)
    options = [run_option(r) for r in all_runs]
    known = {o["value"] for o in options}
    missing = [r for r in run_ids if r not in known]
    for rid in missing:  # older than the newest runs listed, or unknown: ask directly
        try:
            options.append(run_option(api.get_run(rid)))
        except ApiError:
            pass
    valid = [r for r in run_ids if r in {o["value"] for o in options}]
    unknown = [r for r in run_ids if r not in valid]
    notes = [message("Unknown runs ignored", ", ".join(unknown), kind="warning")] if unknown else []
    return all_runs, options, valid, notes


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
