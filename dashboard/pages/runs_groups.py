"""Groups on the runs table: the runs that match the table's filters, grouped by config keys or tags.

A sweep of 3 recipes × 5 seeds is 15 rows the reader has to average by eye; grouped, it is 3 rows with
n, the mean of a summary metric and its spread, and a link that opens the compare page on the group
(where the band, the group time-to-target with intervals and the "why" live).

The grouping rule is the server's (``server.analysis.groups``; the compare page asks ``/analysis/groups``
with the same keys, so a group opened from here is one group there): chosen keys are dotted config
keys, ``optimizer`` (the config's, else the run's column) or ``tags``; "everything but the seed" is every
flattened config key except ``seed``. Grouping reads every matching run, in pages of ``FETCH_PAGE``, up to
``MAX_GROUPED_RUNS`` (the table says so when it stops there).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from dash import html

from ..api import ApiClient
from ..components import flatten, fmt_value
from ..queries import run_page
from ..grouping import ALL_BUT_SEED

__all__ = ["RunGroup", "GroupedRuns", "group_by_options", "parse_group_by", "group_runs", "fetch_matching",
           "group_table_rows", "group_compare_href", "MAX_GROUPED_RUNS"]

FETCH_PAGE = 1000  # the server's largest page of GET /runs
MAX_GROUPED_RUNS = 5000
COMPARE_MAX = 50  # the compare page takes up to 50 runs
SEED_KEY = "seed"
_MISSING = "—"


@dataclass(frozen=True, slots=True)
class RunGroup:
    """Runs sharing the grouping keys' values; ``metric`` values are the members' summary values."""

    label: str
    values: dict[str, str]
    run_ids: list[str]
    metric: list[float]

    @property
    def n(self) -> int:
        return len(self.run_ids)


@dataclass(frozen=True, slots=True)
class GroupedRuns:
    groups: list[RunGroup]
    total: int  # runs matching the filters
    read: int  # runs read and grouped (less than total past MAX_GROUPED_RUNS)


def group_by_options(config_keys: Sequence[str]) -> list[dict[str, str]]:
    """Everything but the seed, optimizer, tags, then the config keys (dotted) the runs have."""
    keys = [k for k in dict.fromkeys(config_keys) if k not in ("optimizer", "tags", ALL_BUT_SEED)]
    return ([{"label": "everything but the seed", "value": ALL_BUT_SEED}, {"label": "optimizer", "value": "optimizer"},
             {"label": "tags", "value": "tags"}] + [{"label": f"config: {k}", "value": k} for k in sorted(keys)])


def parse_group_by(raw: str | None) -> list[str]:
    """``?group_by=optimizer,lr`` -> ``["optimizer", "lr"]``; none -> no grouping (the default)."""
    return [k for k in (raw or "").split(",") if k.strip()]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value


def _values(run: Mapping[str, Any], keys: Sequence[str]) -> dict[str, str]:
    flat = flatten(run.get("config"))
    if ALL_BUT_SEED in keys:
        chosen = {k: v for k, v in flat.items() if k != SEED_KEY}
        extra = [k for k in keys if k != ALL_BUT_SEED and k not in chosen]
    else:
        chosen, extra = {}, list(keys)
    for k in extra:
        if k == "tags":
            chosen[k] = ",".join(sorted(run.get("tags") or [])) or _MISSING
        elif k in flat:
            chosen[k] = flat[k]
        elif k == "optimizer" and run.get("optimizer"):
            chosen[k] = run["optimizer"]
        else:
            chosen[k] = None
    return {k: _MISSING if v is None else _canonical(v) for k, v in chosen.items()}


def _metric(run: Mapping[str, Any], metric: str | None) -> float | None:
    v = (run.get("summary") or {}).get(metric) if metric else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def group_runs(runs: Sequence[Mapping[str, Any]], keys: Sequence[str], metric: str | None) -> list[RunGroup]:
    """Group ``runs`` (``GET /runs`` rows) by ``keys``; groups in first-appearance order. A label names
    the values that differ between groups (``optimizer=normuon``), or "all runs" when only one group."""
    keyed: dict[tuple[tuple[str, str], ...], list[Mapping[str, Any]]] = {}
    for run in runs:
        keyed.setdefault(tuple(sorted(_values(run, keys).items())), []).append(run)
    idents = list(keyed)
    all_keys = sorted({k for ident in idents for k, _ in ident})
    dicts = [dict(ident) for ident in idents]
    varying = [k for k in all_keys if len({d.get(k, _MISSING) for d in dicts}) > 1] or \
        [k for k in keys if k != ALL_BUT_SEED]
    out = []
    for ident, d in zip(idents, dicts):
        members = keyed[ident]
        label = ", ".join(f"{k}={d.get(k, _MISSING)}" for k in varying) or "all runs"
        vals = [v for r in members if (v := _metric(r, metric)) is not None]
        out.append(RunGroup(label, d, [r["id"] for r in members], vals))
    return out


def fetch_matching(api: ApiClient, *, project: str | None, status: str | None, tag: str | None, q: str | None,
                   filters: Sequence[str], limit: int = MAX_GROUPED_RUNS) -> tuple[list[dict[str, Any]], int]:
    """Every run matching the table's filters (oldest first, so groups keep a stable order), up to
    ``limit``: (runs, how many match in all)."""
    runs: list[dict[str, Any]] = []
    total = 0
    while len(runs) < limit:
        page = run_page(api, project=project, status=status, tag=tag, q=q, filters=filters, sort="created_at",
                        limit=min(FETCH_PAGE, limit - len(runs)), offset=len(runs))
        total = page.count
        runs += page.runs
        if not page.runs or len(runs) >= total:
            break
    return runs, total


def group_compare_href(run_ids: Sequence[str], keys: Sequence[str], metric: str | None) -> str:
    """The compare page on these runs, grouped by the same keys (``?group_by=``), the metric charted."""
    params = {"runs": ",".join(list(run_ids)[:COMPARE_MAX]), "group_by": ",".join(keys)}
    if metric:
        params.update(keys=metric, metric=metric)
    return "/compare?" + urlencode(params, safe=",~")


def _spread(values: Sequence[float]) -> tuple[float | None, float | None, float | None, float | None]:
    if not values:
        return None, None, None, None
    sd = statistics.stdev(values) if len(values) >= 2 else None
    return statistics.fmean(values), sd, min(values), max(values)


def group_table_rows(groups: Sequence[RunGroup], keys: Sequence[str], metric: str | None) -> list[dict[str, Any]]:
    """DataTable rows: the group (a link opening it on the compare page), n, the metric's mean ± sd
    and min–max over the members that reported it."""
    rows = []
    for g in groups:
        mean, sd, lo, hi = _spread(g.metric)
        text = "—" if mean is None else fmt_value(mean) + ("" if sd is None else f" ± {fmt_value(sd, 2)}")
        rows.append({
            "id": "|".join(g.run_ids),
            "group": f"[{_md(g.label)}]({group_compare_href(g.run_ids, keys, metric)})",
            "label": g.label, "n": g.n,
            "reported": len(g.metric),
            "mean": mean, "sd": sd,
            "metric": text,
            "range": "—" if lo is None else f"{fmt_value(lo)}–{fmt_value(hi)}",
        })
    return rows


def group_columns(metric: str | None) -> list[dict[str, Any]]:
    m = metric or "metric"
    return [{"name": "group", "id": "group", "presentation": "markdown"}, {"name": "n runs", "id": "n"},
            {"name": f"latest {m} (mean ± sd)", "id": "metric"}, {"name": f"{m} min–max", "id": "range"}]


def grouped_note(grouped: GroupedRuns, metric: str | None) -> html.Span:
    """"3 groups of 9 runs" (and the cap when it bit)."""
    text = f"{len(grouped.groups)} group{'s' if len(grouped.groups) != 1 else ''} of {grouped.read:,} runs"
    if grouped.read < grouped.total:
        text += f" (the first {grouped.read:,} of {grouped.total:,} matching: narrow the filter to group all)"
    if metric:
        text += f"; {metric}: each run's latest value"
    return html.Span(text, className="hint", id="runs-groups-note")


def _md(text: str) -> str:
    from .runs import md_escape  # one escaping rule for the table's Markdown cells

    return md_escape(text)
