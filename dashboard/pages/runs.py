"""Runs page ("/"): every run in one table — filter, sort, search, pick runs to compare, delete.

Filters that the server understands (search text, status, project, tag) go into the query so a
10,000-run project is filtered in SQL; sorting and per-column filtering of the loaded rows happen
in the browser (DataTable native). The filters live in the URL (``/?q=..&status=..``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from dash import Input, Output, State, callback, clientside_callback, dash_table, dcc, html, no_update
from dash.dash_table.Format import Format, Scheme

from .. import ids
from ..api import ApiClient, ApiError
from ..auth.guard import WriteRefused, require_write
from ..state import current_api
from ..components import flatten, fmt_datetime, fmt_duration, fmt_value, message, run_duration

TITLE = "Optiscope · runs"
STATUSES = ("running", "finished", "crashed")
REFRESH_MS = 5000
# Config keys that are bookkeeping, not hyper-parameters, are never chosen as "key config" columns.
_SKIP_CONFIG = re.compile(r"(^|\.)(seed|device|name|project|path|dir|host|output)", re.I)
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!<>|~&\"'])")


def md_escape(text: str) -> str:
    """Backslash-escape Markdown/HTML punctuation so a user string renders literally as text (the
    DataTable's link column is Markdown with raw HTML disabled; this also stops `[x](javascript:)`)."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def key_config_columns(runs: Sequence[Mapping[str, Any]], limit: int = 4) -> list[str]:
    """The config keys worth a column: those whose value differs between the listed runs
    (what distinguishes runs), most-set first; with one run, its first few scalar keys."""
    values: dict[str, set[str]] = {}
    present: Counter[str] = Counter()
    for run in runs:
        for key, value in flatten(run.get("config")).items():
            if _SKIP_CONFIG.search(key) or isinstance(value, (list, dict)):
                continue
            values.setdefault(key, set()).add(fmt_value(value))
            present[key] += 1
    varying = [k for k in values if len(values[k]) > 1] if len(runs) > 1 else list(values)
    varying.sort(key=lambda k: (-present[k], k))
    return varying[:limit]


def summary_columns(runs: Sequence[Mapping[str, Any]], limit: int = 3) -> list[str]:
    """Latest-value columns: ``loss`` first, then the most common other summary keys."""
    counts: Counter[str] = Counter()
    for run in runs:
        counts.update(k for k in (run.get("summary") or {}) if k not in ("samples_seen", "step_time"))
    ordered = sorted(counts, key=lambda k: (k != "loss", not k.startswith(("acc", "val")), -counts[k], k))
    return ordered[:limit]


def table_rows(runs: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(columns, rows) for the DataTable; plain values so native sort works on numbers."""
    cfg_cols = key_config_columns(runs)
    sum_cols = summary_columns(runs)
    columns: list[dict[str, Any]] = [
        {"name": "name", "id": "name", "presentation": "markdown"},
        {"name": "project", "id": "project"},
        {"name": "status", "id": "status"},
        {"name": "optimizer", "id": "optimizer"},
        {"name": "tags", "id": "tags"},
    ]
    columns += [{"name": f"cfg: {k}", "id": f"cfg:{k}"} for k in cfg_cols]
    # 4 significant digits, exponent when needed (a loss of 1.2e-5 stays readable)
    numeric = {"type": "numeric",
               "format": Format(precision=4, scheme=Scheme.decimal_or_exponent).to_plotly_json()}
    columns += [{"name": f"latest {k}", "id": f"sum:{k}", **numeric} for k in sum_cols]
    columns += [
        {"name": "step", "id": "last_step", "type": "numeric"},
        {"name": "alerts", "id": "alerts", "type": "numeric"},
        {"name": "started", "id": "started"},
        {"name": "duration", "id": "duration"},
    ]
    rows = []
    for run in runs:
        cfg = flatten(run.get("config"))
        summary = run.get("summary") or {}
        status = run.get("status") or "unknown"
        row: dict[str, Any] = {
            "id": run["id"],
            "name": f"[{md_escape(run.get('name') or run['id'])}](/runs/{run['id']})",
            "project": run.get("project") or "",
            "status": ("● live" if status == "running" else status),
            "optimizer": run.get("optimizer") or "",
            "tags": ", ".join(run.get("tags") or []),
            "last_step": run.get("last_step"),
            "alerts": run.get("alerts_count") or 0,
            "started": fmt_datetime(run.get("created_at")),
            "duration": fmt_duration(run_duration(run)),
        }
        for k in cfg_cols:
            row[f"cfg:{k}"] = fmt_value(cfg.get(k)) if k in cfg else ""
        for k in sum_cols:
            v = summary.get(k)
            # NaN would be sorted unpredictably as a number; show it as text ("NaN") instead.
            row[f"sum:{k}"] = v if isinstance(v, (int, float)) and math.isfinite(v) else fmt_value(v) if v is not None else None
        rows.append(row)
    return columns, rows


def compare_href(selected: Sequence[str]) -> str:
    """``/compare?runs=a,b,c`` (ids are URL-safe by contract)."""
    return "/compare?" + urlencode({"runs": ",".join(selected)}, safe=",")


def layout(q: str | None = None, status: str | None = None, project: str | None = None, tag: str | None = None, **_: Any) -> html.Div:
    """Filters from the query string; the table is filled by :func:`load_runs`."""
    return html.Div(
        [
            html.H2("Runs"),
            html.Div(
                [
                    html.Div([html.Label("search name", className="control-label"),
                              dcc.Input(id=ids.RUNS_SEARCH, type="search", value=q or "", debounce=True,
                                        placeholder="name contains…")], className="control"),
                    html.Div([html.Label("status", className="control-label"),
                              dcc.Dropdown(id=ids.RUNS_STATUS, options=list(STATUSES), value=status,
                                           placeholder="any", style={"width": "150px"})], className="control"),
                    html.Div([html.Label("project", className="control-label"),
                              dcc.Dropdown(id=ids.RUNS_PROJECT, options=[], value=project, placeholder="any",
                                           style={"width": "180px"})], className="control"),
                    html.Div([html.Label("tag", className="control-label"),
                              dcc.Dropdown(id=ids.RUNS_TAG, options=[], value=tag, placeholder="any",
                                           style={"width": "160px"})], className="control"),
                    html.Button("refresh", id=ids.RUNS_REFRESH, className="btn"),
                ],
                className="controls",
            ),
            html.Div(
                [
                    dcc.Link("compare selected", id=ids.RUNS_COMPARE_LINK, href="/compare", className="btn"),
                    html.Button("delete selected…", id=ids.RUNS_DELETE, className="btn-danger", disabled=True),
                    html.Span(id=ids.RUNS_COUNT, className="run-meta"),
                ],
                className="runs-actions",
            ),
            dcc.ConfirmDialog(id=ids.RUNS_CONFIRM, message=""),
            html.Div(id=ids.RUNS_MESSAGE),
            dash_table.DataTable(
                id=ids.RUNS_TABLE,
                columns=[],
                data=[],
                row_selectable="multi",
                selected_rows=[],
                sort_action="native",
                filter_action="native",
                page_action="native",
                page_size=50,
                markdown_options={"html": False, "link_target": "_self"},
                style_table={"overflowX": "auto"},
                style_cell={"fontSize": "13px", "padding": "4px 8px", "textAlign": "left",
                            "maxWidth": "260px", "overflow": "hidden", "textOverflow": "ellipsis"},
                style_header={"fontWeight": "600", "backgroundColor": "#f2f4f7"},
                style_data_conditional=[
                    {"if": {"filter_query": '{status} = "● live"', "column_id": "status"},
                     "color": "#2ca02c", "fontWeight": "600"},
                    {"if": {"filter_query": '{status} = "crashed"', "column_id": "status"}, "color": "#d62728"},
                    {"if": {"filter_query": "{alerts} > 0", "column_id": "alerts"}, "color": "#d62728"},
                ],
            ),
            dcc.Store(id=ids.RUNS_VERSION, data=0),
            dcc.Interval(id=ids.RUNS_INTERVAL, interval=REFRESH_MS),
            html.Div(id="runs-url-sink", hidden=True),
        ]
    )


def fetch_runs(api: ApiClient, *, q: str | None, status: str | None, project: str | None, tag: str | None) -> list[dict[str, Any]]:
    """The filtered runs from the server (at most 1000, newest first)."""
    runs, _ = api.list_runs(q=q or None, status=status or None, project=project or None,
                            tags=[tag] if tag else None, limit=1000)
    return runs


@callback(
    Output(ids.RUNS_TABLE, "columns"),
    Output(ids.RUNS_TABLE, "data"),
    Output(ids.RUNS_TABLE, "selected_rows"),
    Output(ids.RUNS_COUNT, "children"),
    Output(ids.RUNS_PROJECT, "options"),
    Output(ids.RUNS_TAG, "options"),
    Output(ids.RUNS_MESSAGE, "children"),
    Input(ids.RUNS_SEARCH, "value"),
    Input(ids.RUNS_STATUS, "value"),
    Input(ids.RUNS_PROJECT, "value"),
    Input(ids.RUNS_TAG, "value"),
    Input(ids.RUNS_REFRESH, "n_clicks"),
    Input(ids.RUNS_INTERVAL, "n_intervals"),
    Input(ids.RUNS_VERSION, "data"),
    State(ids.RUNS_TABLE, "selected_row_ids"),
    State(ids.RUNS_TABLE, "columns"),
)
def load_runs(q, status, project, tag, _clicks, _ticks, _version, selected_ids, old_columns):
    """Reload the table; keeps the selection by run id (row indices move when runs appear)."""
    try:
        runs = fetch_runs(current_api(), q=q, status=status, project=project, tag=tag)
    except ApiError as exc:
        return no_update, [], [], "", no_update, no_update, message("Cannot load runs", str(exc), kind="error")
    columns, rows = table_rows(runs)
    keep = set(selected_ids or [])
    selected = [i for i, row in enumerate(rows) if row["id"] in keep]
    projects = sorted({r.get("project") or "" for r in runs} | ({project} if project else set()))
    tags = sorted({t for r in runs for t in (r.get("tags") or [])} | ({tag} if tag else set()))
    count = f"{len(rows)} run{'s' if len(rows) != 1 else ''}"
    if not runs:
        hint = message("No runs yet", "Start one with probe.init(project=...) in your training script, "
                       "or run `optiscope demo` to see every panel filled.") if not (q or status or project or tag) \
            else message("No runs match these filters")
    else:
        hint = None
    if old_columns == columns:
        columns = no_update
    return columns, rows, selected, count, projects, tags, hint


@callback(
    Output(ids.RUNS_COMPARE_LINK, "href"),
    Output(ids.RUNS_COMPARE_LINK, "children"),
    Output(ids.RUNS_DELETE, "disabled"),
    Output(ids.SHELL_SELECTION, "data"),
    Output("shell-compare-link", "href"),
    Input(ids.RUNS_TABLE, "selected_row_ids"),
)
def selection_changed(selected_ids):
    """The compare link follows the selection; the shell remembers it, and so does the navbar's
    Compare link, so the picked runs survive a visit to a run page."""
    selected = list(selected_ids or [])
    label = f"compare {len(selected)} selected" if selected else "compare selected"
    href = compare_href(selected)
    return href, label, not selected, selected, href if selected else "/compare"


@callback(
    Output(ids.RUNS_CONFIRM, "displayed"),
    Output(ids.RUNS_CONFIRM, "message"),
    Input(ids.RUNS_DELETE, "n_clicks"),
    State(ids.RUNS_TABLE, "selected_row_ids"),
    prevent_initial_call=True,
)
def ask_delete(_clicks, selected_ids):
    """Deleting is permanent: always ask first, naming how many runs go."""
    if not selected_ids:
        return False, ""
    n = len(selected_ids)
    return True, f"Delete {n} run{'s' if n != 1 else ''} and all their data? This cannot be undone."


@callback(
    Output(ids.RUNS_VERSION, "data"),
    Output(ids.RUNS_MESSAGE, "children", allow_duplicate=True),
    Input(ids.RUNS_CONFIRM, "submit_n_clicks"),
    State(ids.RUNS_TABLE, "selected_row_ids"),
    State(ids.RUNS_VERSION, "data"),
    State(ids.SHELL_CSRF, "data"),
    prevent_initial_call=True,
)
def delete_selected(_submit, selected_ids, version, csrf):
    """Delete after confirmation (as the signed-in person), then bump the version so the table reloads."""
    try:
        require_write(csrf, action="delete")
    except WriteRefused as exc:
        return no_update, message("Not deleted", str(exc), kind="error")
    api = current_api()
    errors = []
    for run_id in selected_ids or []:
        try:
            api.delete_run(run_id)
        except ApiError as exc:
            errors.append(f"{run_id}: {exc}")
    note = message("Some runs could not be deleted", "; ".join(errors), kind="error") if errors else None
    return (version or 0) + 1, note


clientside_callback(
    """(q, status, project, tag) => {
        const p = new URLSearchParams();
        if (q) p.set('q', q); if (status) p.set('status', status);
        if (project) p.set('project', project); if (tag) p.set('tag', tag);
        const s = p.toString();
        if (window.location.pathname === '/') window.history.replaceState(null, '', s ? '/?' + s : '/');
        return '';
    }""",
    Output("runs-url-sink", "children"),
    Input(ids.RUNS_SEARCH, "value"),
    Input(ids.RUNS_STATUS, "value"),
    Input(ids.RUNS_PROJECT, "value"),
    Input(ids.RUNS_TAG, "value"),
)
