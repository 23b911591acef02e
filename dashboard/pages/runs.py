"""Runs page ("/"): every run in one table — filter, sort, search, pick runs to compare, delete.

Everything the table does is the server's: search text, status, project, tag and free conditions
(``optimizer = normuon, lr >= 0.01``) filter in SQL, a click on a column header sorts all runs by
it (any config value or summary metric), and the pager pages through the true count — so with
10,000 runs "sort by final loss" finds the sweep's best run, not the best of the newest 1,000.
Projects, tags and the column chooser's keys come from the server too. The view lives in the URL
(``/?q=..&filter=..&sort=..&cols=..&group_by=..``).

"group by" (any config key, ``optimizer``, ``tags``, or everything but the seed; none by default) adds
group rows above the table — n runs and a summary metric's mean ± sd and range — each opening the
compare page on its group (``runs_groups``). The 5 s refresh asks only whether anything changed since
the last read (``updated_since``) and reloads the page only when something did.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import dash
from dash import Input, Output, State, callback, clientside_callback, dash_table, dcc, html, no_update
from dash.dash_table.Format import Format, Scheme
from dash.exceptions import MissingCallbackContextException, PreventUpdate

from .. import ids
from ..api import ApiError
from ..auth.guard import WriteRefused, require_write
from ..colors import run_color
from ..queries import RunPage, run_page
from ..state import current_api
from ..components import flatten, fmt_datetime, fmt_duration, fmt_value, message, run_duration
from . import runs_groups as RG

TITLE = "Optiscope · runs"
STATUSES = ("running", "finished", "crashed")
REFRESH_MS = 5000
# Rows per page: what a 1000 px window shows. Each row costs the browser ~15 ms to draw on a loaded
# 2-core box (its name cell is Markdown, for the link): 50 rows kept the 10,000-run table's first
# rows over the 1 s bar (docs/benchmarks.md, stop 19).
PAGE_SIZE = 25
# component ids of the grouping (kept here: dashboard/ids.py is shared by every page)
RUNS_GROUP_BY = "runs-group-by"
RUNS_GROUP_METRIC = "runs-group-metric"
RUNS_GROUPS_TABLE = "runs-groups-table"
RUNS_GROUPS_NOTE = "runs-groups-note-box"
RUNS_GROUPS_COMPARE = "runs-groups-compare"
RUNS_GROUPS_SECTION = "runs-groups"
RUNS_GROUPS_STATE = "runs-groups-state"  # what the group rows were computed from, and when
# Grouping reads every matching run (10,000 runs: ~2.5 s on a loaded 2-core box, benchmarks/
# bench_runs_groups.py): a table reload that keeps the filters (a page turn, a sort, a live run's new
# step on the 5 s tick) regroups at most this often.
GROUP_REFRESH_S = 30.0
# Hyper-parameters a user compares first: chosen as automatic columns before other varying keys.
_FIRST_CONFIG = ("lr", "optimizer", "weight_decay", "momentum", "batch_size")
# column id -> the server's sort field (``server.store.run_query``); other columns do not sort
_SORT_FIELDS = {"name": "name", "status": "status", "optimizer": "optimizer", "last_step": "last_step",
                "started": "created_at"}
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
    first = {k: i for i, k in enumerate(_FIRST_CONFIG)}
    varying.sort(key=lambda k: (first.get(k.rsplit(".", 1)[-1], len(first)), -present[k], k))
    return varying[:limit]


def summary_columns(runs: Sequence[Mapping[str, Any]], limit: int = 3) -> list[str]:
    """Latest-value columns: ``loss`` first, then the most common other summary keys."""
    counts: Counter[str] = Counter()
    for run in runs:
        counts.update(k for k in (run.get("summary") or {}) if k not in ("samples_seen", "step_time"))
    ordered = sorted(counts, key=lambda k: (k != "loss", not k.startswith(("acc", "val")), -counts[k], k))
    return ordered[:limit]


def table_rows(runs: Sequence[Mapping[str, Any]], chosen: Sequence[str] | None = None,
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(columns, rows) for the DataTable. ``chosen``: column ids (``cfg:<key>``, ``sum:<metric>``)
    from the column chooser; without them, the config keys that vary and the common metrics."""
    if chosen:
        cfg_cols = [c[4:] for c in chosen if c.startswith("cfg:")]
        sum_cols = [c[4:] for c in chosen if c.startswith("sum:")]
    else:
        cfg_cols, sum_cols = key_config_columns(runs), summary_columns(runs)
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


_LIVE = "color: #2ca02c !important; font-weight: 600 !important"
_RED = "color: #d62728 !important"
_PLAIN = "color: inherit; font-weight: inherit"


def row_rules(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The table's ``css``: each run's name cell carries the run's colour (``colors.run_color``) as a
    left bar, the colour its lines have on the run and compare pages; a live run's status is green, a
    crashed one's and any alert count red.

    Stylesheet rules by row (the cells carry ``data-dash-row``), not ``style_data_conditional``: the
    table tests every conditional style against every cell on each draw, and the 53 entries (one per
    row for the colour) cost ~0.3 s of the browser's time on a 2-core box before the first rows showed
    (``docs/benchmarks.md``, stop 19). The table never removes a rule it was given, so every row gets
    its status and alerts rule, plain ones included (a page turn must not keep the last page's red).
    ``!important``: the table's own cell styles are inline."""
    rules = []
    for i, row in enumerate(rows):
        cell = f'td[data-dash-row="{i}"]'
        status = row.get("status")
        rules += [
            {"selector": f'{cell}[data-dash-column="name"]',
             "rule": f"border-left: 6px solid {run_color(row['id'])} !important"},
            {"selector": f'{cell}[data-dash-column="status"]',
             "rule": _LIVE if status == "● live" else _RED if status == "crashed" else _PLAIN},
            {"selector": f'{cell}[data-dash-column="alerts"]', "rule": _RED if (row.get("alerts") or 0) > 0 else _PLAIN},
        ]
    return rules


def split_filters(text: str | None) -> list[str]:
    """``"optimizer = normuon, lr >= 0.01"`` -> one condition per item (``,`` or ``&&`` between)."""
    return [part.strip() for part in re.split(r",|&&", text or "") if part.strip()]


def server_sort(sort_by: Sequence[Mapping[str, str]] | None) -> str:
    """The DataTable's ``sort_by`` as the server's ``sort`` (newest first when unsorted)."""
    if not sort_by:
        return "-created_at"
    col, direction = sort_by[0].get("column_id", ""), sort_by[0].get("direction", "asc")
    if col.startswith("cfg:"):
        field = "config." + col[4:]
    elif col.startswith("sum:"):
        field = "summary." + col[4:]
    else:
        field = _SORT_FIELDS.get(col, "created_at")
    return ("-" if direction == "desc" else "") + field


def parse_sort_param(sort: str | None) -> list[dict[str, str]]:
    """``?sort=-sum:loss`` -> the DataTable's ``sort_by``."""
    if not sort:
        return []
    return [{"column_id": sort.lstrip("-"), "direction": "desc" if sort.startswith("-") else "asc"}]


def column_options(facets: Mapping[str, Sequence[str]]) -> list[dict[str, str]]:
    """The column chooser: every config key and summary metric any run has."""
    return ([{"label": f"config: {k}", "value": f"cfg:{k}"} for k in facets.get("config_keys", [])]
            + [{"label": f"metric: {k}", "value": f"sum:{k}"} for k in facets.get("summary_keys", [])])


def compare_href(selected: Sequence[str]) -> str:
    """``/compare?runs=a,b,c`` (ids are URL-safe by contract)."""
    return "/compare?" + urlencode({"runs": ",".join(selected)}, safe=",")


def layout(q: str | None = None, status: str | None = None, project: str | None = None, tag: str | None = None,
           filter: str | None = None, sort: str | None = None, cols: str | None = None,
           group_by: str | None = None, gmetric: str | None = None, **_: Any) -> html.Div:
    """Filters, sort, columns and grouping from the query string; the table is filled by :func:`load_runs`,
    the group rows by :func:`load_groups`."""
    chosen = [c for c in (cols or "").split(",") if c.startswith(("cfg:", "sum:"))]
    grouping = RG.parse_group_by(group_by)
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
                              dcc.Dropdown(id=ids.RUNS_PROJECT, options=[project] if project else [], value=project, placeholder="any",
                                           style={"width": "180px"})], className="control"),
                    html.Div([html.Label("tag", className="control-label"),
                              dcc.Dropdown(id=ids.RUNS_TAG, options=[tag] if tag else [], value=tag, placeholder="any",
                                           style={"width": "160px"})], className="control"),
                    html.Div([html.Label("filter (config, metrics, tags, status, name)", className="control-label"),
                              dcc.Input(id=ids.RUNS_FILTER, type="text", value=filter or "", debounce=True,
                                        placeholder="optimizer = normuon, lr >= 0.01", style={"width": "300px"})],
                             className="control"),
                    html.Div([html.Label("columns", className="control-label"),
                              dcc.Dropdown(id=ids.RUNS_COLUMNS, options=[{"label": c, "value": c} for c in chosen],
                                           value=chosen, multi=True, placeholder="automatic",
                                           style={"minWidth": "260px"})], className="control"),
                    html.Button("refresh", id=ids.RUNS_REFRESH, className="btn"),
                ],
                className="controls",
            ),
            html.Div(
                [
                    html.Div([html.Label("group by", className="control-label"),
                              dcc.Dropdown(id=RUNS_GROUP_BY, options=RG.group_by_options(grouping),
                                           value=grouping, multi=True, placeholder="none (each run on its own)",
                                           style={"minWidth": "300px"})], className="control"),
                    html.Div([html.Label("group metric", className="control-label"),
                              dcc.Dropdown(id=RUNS_GROUP_METRIC, options=[gmetric] if gmetric else [], value=gmetric,
                                           placeholder="loss", style={"width": "180px"})], className="control"),
                ],
                className="controls",
            ),
            html.Div(
                [
                    html.Div([html.Span(id=RUNS_GROUPS_NOTE),
                              dcc.Link("compare selected groups", id=RUNS_GROUPS_COMPARE, href="/compare",
                                       className="btn")], className="runs-actions"),
                    dash_table.DataTable(
                        id=RUNS_GROUPS_TABLE, columns=RG.group_columns(gmetric), data=[], row_selectable="multi",
                        selected_rows=[], markdown_options={"html": False, "link_target": "_self"},
                        style_table={"overflowX": "auto"},
                        style_cell={"fontSize": "13px", "padding": "4px 8px", "textAlign": "left",
                                    "maxWidth": "420px", "overflow": "hidden", "textOverflow": "ellipsis"},
                        style_header={"fontWeight": "600", "backgroundColor": "#f2f4f7"},
                    ),
                ],
                id=RUNS_GROUPS_SECTION, hidden=not grouping, className="section",
            ),
            dcc.Store(id=RUNS_GROUPS_STATE, data=None),
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
                sort_action="custom",
                sort_mode="single",
                sort_by=parse_sort_param(sort),
                filter_action="none",
                page_action="custom",
                page_current=0,
                page_size=PAGE_SIZE,
                page_count=1,
                markdown_options={"html": False, "link_target": "_self"},
                style_table={"overflowX": "auto"},
                style_cell={"fontSize": "13px", "padding": "4px 8px", "textAlign": "left",
                            "maxWidth": "260px", "overflow": "hidden", "textOverflow": "ellipsis"},
                style_header={"fontWeight": "600", "backgroundColor": "#f2f4f7"},
                css=[],
            ),
            dcc.Store(id=ids.RUNS_VERSION, data=0),
            dcc.Store(id=ids.RUNS_SEEN, data=None),
            dcc.Interval(id=ids.RUNS_INTERVAL, interval=REFRESH_MS),
            html.Div(id="runs-url-sink", hidden=True),
        ]
    )


def _triggered() -> Any:
    try:
        return dash.ctx.triggered_id
    except MissingCallbackContextException:  # called as a plain function (tests)
        return None


@callback(
    Output(ids.RUNS_TABLE, "columns"),
    Output(ids.RUNS_TABLE, "data"),
    Output(ids.RUNS_TABLE, "selected_rows"),
    Output(ids.RUNS_COUNT, "children"),
    Output(ids.RUNS_PROJECT, "options"),
    Output(ids.RUNS_TAG, "options"),
    Output(ids.RUNS_MESSAGE, "children"),
    Output(ids.RUNS_TABLE, "page_count"),
    Output(ids.RUNS_SEEN, "data"),
    Output(ids.RUNS_COLUMNS, "options"),
    Output(ids.RUNS_TABLE, "css"),
    Output(RUNS_GROUP_BY, "options"),
    Output(RUNS_GROUP_METRIC, "options"),
    Input(ids.RUNS_SEARCH, "value"),
    Input(ids.RUNS_STATUS, "value"),
    Input(ids.RUNS_PROJECT, "value"),
    Input(ids.RUNS_TAG, "value"),
    Input(ids.RUNS_REFRESH, "n_clicks"),
    Input(ids.RUNS_INTERVAL, "n_intervals"),
    Input(ids.RUNS_VERSION, "data"),
    State(ids.RUNS_TABLE, "selected_row_ids"),
    State(ids.RUNS_TABLE, "columns"),
    Input(ids.RUNS_FILTER, "value"),
    Input(ids.RUNS_COLUMNS, "value"),
    Input(ids.RUNS_TABLE, "page_current"),
    Input(ids.RUNS_TABLE, "page_size"),
    Input(ids.RUNS_TABLE, "sort_by"),
    State(ids.RUNS_SEEN, "data"),
)
def load_runs(q, status, project, tag, _clicks, _ticks, _version, selected_ids, old_columns, filter_text=None,
              chosen=None, page_current=0, page_size=PAGE_SIZE, sort_by=None, seen=None):
    """Load one page as the server filtered and sorted it; keeps the selection by run id. A refresh
    tick first asks whether any matching run changed since the last read and stops if none did."""
    api = current_api()
    filters = split_filters(filter_text)
    sort = server_sort(sort_by)
    size = int(page_size or PAGE_SIZE)
    offset = int(page_current or 0) * size
    query = {"q": q, "status": status, "project": project, "tag": tag, "filters": filters, "sort": sort,
             "offset": offset, "limit": size, "cols": list(chosen or [])}
    try:
        if _triggered() == ids.RUNS_INTERVAL and seen and seen.get("query") == query and seen.get("as_of"):
            probe = run_page(api, project=project, status=status, tag=tag, q=q, filters=filters, sort=sort,
                             limit=1, offset=0, updated_since=seen["as_of"])
            if probe.changed == 0 and probe.count == seen.get("count"):
                raise PreventUpdate
        page: RunPage = run_page(api, project=project, status=status, tag=tag, q=q, filters=filters, sort=sort,
                                 limit=size, offset=offset, updated_since="1970-01-01T00:00:00+00:00",
                                 facets=True)
    except ApiError as exc:
        title = "Cannot apply this filter" if exc.status == 422 else "Cannot load runs"
        return (no_update, [], [], "", no_update, no_update, message(title, str(exc), kind="error"), 1, None,
                no_update, [], no_update, no_update)
    columns, rows = table_rows(page.runs, chosen)
    keep = set(selected_ids or [])
    selected = [i for i, row in enumerate(rows) if row["id"] in keep]
    projects = sorted(set(page.facets.get("projects", [])) | ({project} if project else set()))
    tags = sorted(set(page.facets.get("tags", [])) | ({tag} if tag else set()))
    count = f"{page.count:,} run{'s' if page.count != 1 else ''}"
    if not page.runs and page.count == 0:
        hint = message("No runs yet", "Start one with probe.init(project=...) in your training script, "
                       "or run `optiscope demo` to see every panel filled.") \
            if not (q or status or project or tag or filters) else message("No runs match these filters")
    else:
        hint = None
    if old_columns == columns:
        columns = no_update
    pages = max(1, math.ceil(page.count / size))
    new_seen = {"query": query, "as_of": page.as_of, "count": page.count}
    config_keys = [*page.facets.get("config_keys", []), *(k for r in page.runs for k in flatten(r.get("config")))]
    return (columns, rows, selected, count, projects, tags, hint, pages, new_seen, column_options(page.facets),
            row_rules(rows), RG.group_by_options(config_keys), list(page.facets.get("summary_keys", [])))


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
    """(q, status, project, tag, filter, cols, sortBy, groupBy, gmetric) => {
        const p = new URLSearchParams();
        if (q) p.set('q', q); if (status) p.set('status', status);
        if (project) p.set('project', project); if (tag) p.set('tag', tag);
        if (filter) p.set('filter', filter);
        if (cols && cols.length) p.set('cols', cols.join(','));
        if (sortBy && sortBy.length) p.set('sort', (sortBy[0].direction === 'desc' ? '-' : '') + sortBy[0].column_id);
        if (groupBy && groupBy.length) p.set('group_by', groupBy.join(','));
        if (gmetric) p.set('gmetric', gmetric);
        const s = p.toString().replace(/%2C/g, ',').replace(/%7E/g, '~');
        if (window.location.pathname === '/') window.history.replaceState(null, '', s ? '/?' + s : '/');
        return '';
    }""",
    Output("runs-url-sink", "children"),
    Input(ids.RUNS_SEARCH, "value"),
    Input(ids.RUNS_STATUS, "value"),
    Input(ids.RUNS_PROJECT, "value"),
    Input(ids.RUNS_TAG, "value"),
    Input(ids.RUNS_FILTER, "value"),
    Input(ids.RUNS_COLUMNS, "value"),
    Input(ids.RUNS_TABLE, "sort_by"),
    Input(RUNS_GROUP_BY, "value"),
    Input(RUNS_GROUP_METRIC, "value"),
)


# -- groups ---------------------------------------------------------------------------------------

def default_metric(summary_keys: Sequence[str], chosen: str | None) -> str | None:
    """The chosen metric, else ``loss``, else the first summary key (what the table's columns lead with)."""
    if chosen:
        return chosen
    keys = [k for k in summary_keys if k not in ("samples_seen", "step_time")]
    return "loss" if "loss" in keys else (keys[0] if keys else None)


@callback(
    Output(RUNS_GROUPS_TABLE, "data"),
    Output(RUNS_GROUPS_TABLE, "columns"),
    Output(RUNS_GROUPS_TABLE, "selected_rows"),
    Output(RUNS_GROUPS_NOTE, "children"),
    Output(RUNS_GROUPS_SECTION, "hidden"),
    Output(RUNS_GROUPS_STATE, "data"),
    Input(RUNS_GROUP_BY, "value"),
    Input(RUNS_GROUP_METRIC, "value"),
    Input(ids.RUNS_SEEN, "data"),
    State(RUNS_GROUP_METRIC, "options"),
    State(RUNS_GROUPS_TABLE, "selected_row_ids"),
    State(RUNS_GROUPS_STATE, "data"),
)
def load_groups(group_by, metric, seen, metric_options, selected_ids, last=None):
    """Group every run matching the table's filters. Read again when the grouping or the filters
    change; a reload of the table with the same filters regroups at most every ``GROUP_REFRESH_S``."""
    keys = list(group_by or [])
    if not keys:
        return [], no_update, [], None, True, None
    if not seen or "query" not in seen:  # the table has not read its filters yet: it will, then this runs
        raise PreventUpdate
    query = seen["query"]
    basis = {"filters": {k: query.get(k) for k in ("q", "status", "project", "tag", "filters")}, "keys": keys,
             "metric": metric}
    if (_triggered() == ids.RUNS_SEEN and last and last.get("basis") == basis
            and time.time() - float(last.get("at") or 0) < GROUP_REFRESH_S):
        raise PreventUpdate
    api = current_api()
    try:
        runs, total = RG.fetch_matching(api, project=query.get("project"), status=query.get("status"),
                                        tag=query.get("tag"), q=query.get("q"), filters=query.get("filters") or [])
    except ApiError as exc:
        return [], no_update, [], message("Cannot group these runs", str(exc), kind="error"), False, None
    summary_keys = [o if isinstance(o, str) else o.get("value") for o in metric_options or []]
    if not summary_keys:
        summary_keys = sorted({k for r in runs for k in (r.get("summary") or {})})
    metric = default_metric(summary_keys, metric)
    groups = RG.group_runs(runs, keys, metric)
    rows = RG.group_table_rows(groups, keys, metric)
    keep = set(selected_ids or [])
    selected = [i for i, row in enumerate(rows) if row["id"] in keep]
    note = RG.grouped_note(RG.GroupedRuns(groups, total, len(runs)), metric)
    return rows, RG.group_columns(metric), selected, note, False, {"basis": basis, "at": time.time()}


@callback(
    Output(RUNS_GROUPS_COMPARE, "href"),
    Output(RUNS_GROUPS_COMPARE, "children"),
    Input(RUNS_GROUPS_TABLE, "selected_row_ids"),
    State(RUNS_GROUP_BY, "value"),
    State(RUNS_GROUP_METRIC, "value"),
)
def groups_selected(selected_ids, group_by, metric):
    """Picked groups open together on the compare page (their runs, grouped by the same keys)."""
    run_ids = [rid for row_id in selected_ids or [] for rid in str(row_id).split("|") if rid]
    if not run_ids:
        return "/compare", "compare selected groups"
    n = len(selected_ids)
    return (RG.group_compare_href(run_ids, list(group_by or []), metric),
            f"compare {n} selected group{'s' if n != 1 else ''}")
