"""The compare page's seed groups: the group-by choice, the group time-to-target table, the "why" list.

The builders are pure: every number comes from the server's ``/analysis/*`` endpoints and this
module only lays them out; the group-by callback registers through :func:`register`, which the
package's ``__init__`` calls each time the app re-executes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dash import Input, Output, dcc, html, no_update

from ... import ids
from ...api import ApiClient, ApiError
from ...components import control, flatten, fmt_duration, fmt_value, message
from ...grouping import ALL_BUT_SEED, NO_GROUPING
from ...state import current_api
from .page_ids import CMP_GROUP_BY, CMP_GROUPS, CMP_GROUPS_SUMMARY

__all__ = ["ALL_BUT_SEED", "NO_GROUPING", "group_by_options", "parse_group_by", "group_by_keys", "load_groups",
           "groups_summary", "group_ttt_table", "why_panel", "default_sides", "initial_groups",
           "update_groups", "group_by_row", "register"]


def group_by_options(meta: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    """Everything but the seed, then every config key the runs have (dotted), optimizer and tags."""
    keys = sorted({k for m in meta.values() for k in flatten(m.get("config"))} | {"optimizer", "tags"})
    return [{"label": "everything but the seed", "value": ALL_BUT_SEED}] + [{"label": k, "value": k} for k in keys]


def parse_group_by(raw: str | None) -> list[str] | None:
    """URL value -> dropdown value; None means "not given" (the page picks: group when seeds repeat)."""
    if raw is None or raw == "":
        return None
    if raw == NO_GROUPING:
        return []
    return [k for k in raw.split(",") if k]


def group_by_keys(value: Sequence[str] | None) -> list[str] | None:
    """Dropdown value -> the API's ``group_by`` (None = everything but the seed)."""
    keys = [k for k in value or [] if k != ALL_BUT_SEED]
    return keys or None


def load_groups(api: ApiClient, meta: Mapping[str, Mapping[str, Any]], value: Sequence[str] | None) -> dict[str, Any]:
    """The groups to draw: ``{"grouped": bool, "groups": [{group, run_ids, n, seeds}]}``.

    Not grouped (empty choice): every run is its own group, so the "why" still compares two runs.
    """
    run_ids = list(meta)
    if not value or not run_ids:
        return {"grouped": False, "group_by": [], "groups": [
            {"group": m["name"], "run_ids": [rid], "n": 1, "seeds": [(m.get("config") or {}).get("seed")]}
            for rid, m in meta.items()]}
    body = api.analysis_groups(run_ids, group_by=group_by_keys(value))
    groups = [{k: g[k] for k in ("group", "run_ids", "n", "seeds")} for g in body.get("groups", [])]
    return {"grouped": True, "group_by": list(value), "groups": groups}


def groups_summary(data: Mapping[str, Any] | None) -> Any:
    """One line naming the groups and their sizes."""
    groups = (data or {}).get("groups") or []
    if not (data or {}).get("grouped"):
        return html.Span(f"{len(groups)} runs, each on its own", className="hint")
    parts = [f"{g['group']} (n={g['n']})" for g in groups]
    return html.Span(f"{len(groups)} group{'s' if len(groups) != 1 else ''}: " + "; ".join(parts), className="hint",
                     id="cmp-groups-list")


def _pm(row: Mapping[str, Any], unit: str, fmt: Any) -> str:
    mean, sd = row.get(f"{unit}_mean"), row.get(f"{unit}_sd")
    if mean is None:
        return "—"
    return fmt(mean) + ("" if sd is None else f" ± {fmt(sd)}")


def _ci(row: Mapping[str, Any], name: str) -> tuple[str, str, str]:
    """(speedup, interval, verdict) cells."""
    if row.get("baseline"):
        return "1 (baseline)", "", ""
    ratio, low, high = row.get(f"speedup_{name}"), row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
    verdict = row.get(f"{name}_verdict") or ""
    if ratio is None:
        return "—", "", verdict
    interval = "" if low is None or high is None else f"{low:.2f}–{high:.2f}"
    return f"×{ratio:.2f}", interval, verdict


def _resolution(row: Mapping[str, Any]) -> str:
    lo, hi, every = row.get("steps_lo_mean"), row.get("steps_mean"), row.get("eval_interval")
    if hi is None:
        return "—"
    text = f"every {every} steps" if every else ""
    if lo is not None and row.get("n_reached") == 1:
        text = f"{lo:.0f}–{hi:.0f}" + (f" ({text})" if text else "")
    return text or "—"


def group_ttt_table(result: Mapping[str, Any], colors: Mapping[str, str] | None = None) -> html.Table:
    """Per group: n, steps / wall time / samples (mean ± sd), resolution, and each speedup with its
    95 % interval and verdict ("no difference at this n" when the interval contains 1). ``colors``:
    group label -> the colour its band has in the charts (a dot before the label)."""
    head = ["group", "n", "steps (mean ± sd)", "resolution", "wall time (mean ± sd)", "samples (mean ± sd)",
            "× steps", "95 % CI (steps)", "× wall time", "95 % CI (time)", "× samples", "95 % CI (samples)",
            "verdict (steps)"]
    body = []
    for row in result.get("rows", []):
        n = str(row["n"]) if row.get("n_reached") == row.get("n") else f"{row.get('n_reached')}/{row['n']} reached"
        c = (colors or {}).get(row["group"])
        dot = [html.Span("● ", className="run-swatch", style={"color": c}, **{"data-color": c})] if c else []
        cells = [html.Td([*dot, row["group"] + (" (baseline)" if row.get("baseline") else "")]), html.Td(n),
                 html.Td(_pm(row, "steps", lambda v: f"{v:.0f}")), html.Td(_resolution(row)),
                 html.Td(_pm(row, "time_s", fmt_duration)), html.Td(_pm(row, "samples", fmt_value))]
        verdict = ""
        for name in ("steps", "time", "samples"):
            ratio, interval, v = _ci(row, name)
            cls = "speedup-fast" if v == "faster" else ("speedup-slow" if v == "slower" else "")
            cells += [html.Td(ratio, className=cls), html.Td(interval, className="ci")]
            verdict = verdict or v
        cells.append(html.Td(_ci(row, "steps")[2], className="verdict"))
        body.append(html.Tr(cells, className="ttt-group-row", **{"data-group": row["group"]}))
    return html.Table([html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(body)],
                      className="data-table", id="cmp-ttt-groups-table")


def default_sides(groups: Sequence[Mapping[str, Any]], baseline_run: str | None) -> tuple[str | None, str | None]:
    """(A, baseline) group labels: the baseline is the group holding the chosen baseline run, A the
    first other group."""
    labels = [g["group"] for g in groups]
    base = next((g["group"] for g in groups if baseline_run in g["run_ids"]), labels[0] if labels else None)
    a = next((label for label in labels if label != base), None)
    return a, base


def why_panel(result: Mapping[str, Any]) -> html.Div:
    """The top lines as a numbered list; each links to the run-page panel that shows it (and the
    baseline's same panel); lines within noise are marked and greyed."""
    rows = result.get("rows") or []
    if not rows:
        notes = "; ".join(result.get("notes") or []) or "the two sides logged no per-layer diagnostic in common"
        return message("Nothing to compare", notes)
    items = []
    for r in rows:
        noise = r.get("within_noise")
        items.append(html.Li([
            html.Span(r["sentence"], className="why-sentence"), " ",
            dcc.Link(f"open: {r['panel']}", href=r["link"], className="why-link"), " · ",
            dcc.Link("baseline", href=r["baseline_link"], className="why-baseline-link"),
        ], className="why-item why-noise" if noise else "why-item", **{"data-key": f"{r['diagnostic']}|{r['layer']}"}))
    steps = result.get("matched_steps") or {}
    head = (f"{result.get('a')} vs {result.get('baseline')}: {result.get('compared')} (layer kind, diagnostic) pairs "
            f"compared, {result.get('significant')} beyond noise; matched by {result.get('match')}"
            + (f" at {result['at']:g}" if isinstance(result.get("at"), (int, float)) else "")
            + (f" (steps {min(steps.values())}–{max(steps.values())})" if steps else ""))
    notes = [html.P(n, className="hint") for n in result.get("notes") or []]
    return html.Div([html.P(head, className="hint"), *notes, html.Ol(items, id="cmp-why-list")])


# -- the group-by choice --------------------------------------------------------------------------

def group_by_row(meta: Mapping[str, Mapping[str, Any]], grouping: Sequence[str], groups: Mapping[str, Any]) -> html.Div:
    """The group-by dropdown and the summary of the groups it makes."""
    return html.Div([
        control("group by", dcc.Dropdown(id=CMP_GROUP_BY, options=group_by_options(meta), value=grouping,
                                         multi=True, placeholder="each run on its own"), width="420px"),
        html.Div(groups_summary(groups), id=CMP_GROUPS_SUMMARY),
    ], className="controls")


def initial_groups(api: ApiClient, meta: Mapping[str, Mapping[str, Any]],
                   wanted: list[str] | None) -> tuple[list[str], dict[str, Any]]:
    """(group-by choice, groups) for the first render. No choice in the URL: group by everything but
    the seed when that puts two or more runs together (seeds of one recipe), else show each run."""
    if wanted is None:
        try:
            auto = load_groups(api, meta, [ALL_BUT_SEED]) if len(meta) >= 2 else None
        except ApiError:
            auto = None
        if auto and any(g["n"] >= 2 for g in auto["groups"]):
            return [ALL_BUT_SEED], auto
        wanted = []
    try:
        return wanted, load_groups(api, meta, wanted)
    except ApiError:
        return [], load_groups(api, meta, [])


def update_groups(group_by, meta):
    """Regroup when the choice or the picked runs change (the server groups; the page draws)."""
    meta = meta or {}
    try:
        groups = load_groups(current_api(), meta, group_by or [])
    except ApiError as exc:
        return no_update, message("Cannot group these runs", str(exc), kind="error"), group_by_options(meta)
    return groups, groups_summary(groups), group_by_options(meta)


def register(app: Any) -> None:
    """Register the section's callbacks on ``app`` (a Dash app, or the ``dash`` module's global list)."""
    app.callback(
        Output(CMP_GROUPS, "data"),
        Output(CMP_GROUPS_SUMMARY, "children"),
        Output(CMP_GROUP_BY, "options"),
        Input(CMP_GROUP_BY, "value"),
        Input(ids.CMP_META, "data"),
        prevent_initial_call=True,
    )(update_groups)
