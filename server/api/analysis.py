"""Statistics over many runs: seed groups, group time-to-target with intervals, the ranked "why".

Which runs: ``run_id`` (repeated), else the ``GET /runs`` filters ``project``, ``tag``, ``config``
(at most ``MAX_RUNS``). Groups: by the ``group_by`` keys (repeated; config keys, dotted, or ``tags``),
by default every config key but ``seed``. A side (``baseline``, ``a``) is picked by ``key=value`` filters
that must match exactly one group, or given as runs (``baseline_run`` / ``a_run``). Reads follow the
same read policy as ``GET /runs`` (``ReaderDep``). Every bad parameter is a 422 naming it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Response
from sqlalchemy.orm import Session

from server.analysis import Group, RunData, group_runs, group_time_to_target, parse_filters, why
from server.analysis.crossing import SAMPLES_KEY
from server.analysis.groups import SeriesLike
from server.analysis.layers import is_compared
from server.analysis.why import match_runs
from server.api.deps import ReaderDep, SessionDep, check_readable
from server.auth import Principal
from server.errors import InvalidBody
from server.store.analysis import (
    MAX_RUNS,
    damaged_reads,
    index_diagnostics,
    load_nearest,
    load_run_data,
    select_runs,
)
from server.wire import WireJSONResponse

router = APIRouter(tags=["analysis"])

ListQuery = Annotated[list[str] | None, Query()]
N_RESAMPLES = 2000
RNG_SEED = 0  # the same request gives the same interval


def _invalid(field: str, msg: str) -> InvalidBody:
    return InvalidBody([{"loc": ["query", field], "msg": msg, "type": "value_error"}])


def _config_pairs(config: Sequence[str] | None) -> list[tuple[str, str]]:
    out = []
    for raw in config or []:
        key, sep, value = raw.partition("=")
        if not sep or not key.strip():
            raise _invalid("config", f"expected 'key=value', got {raw!r}")
        out.append((key.strip(), value))
    return out


def _filters(items: Sequence[str] | None, field: str) -> dict[str, Any]:
    try:
        return parse_filters(items or [], field_name=field)
    except ValueError as exc:
        raise _invalid(field, str(exc)) from None


def _group_by(items: Sequence[str] | None) -> list[str] | None:
    keys = [k.strip() for item in items or [] for k in item.split(",") if k.strip()]
    if items and not keys:
        raise _invalid("group_by", "expected config keys (or 'tags'), got nothing")
    return keys or None


def _runs(session: Session, *, run_id: Sequence[str] | None, project: str | None, tag: Sequence[str] | None,
          config: Sequence[str] | None, want: Callable[[str], bool], reader: Principal | None = None
          ) -> list[RunData]:
    if run_id and len(dict.fromkeys(run_id)) > MAX_RUNS:
        raise _invalid("run_id", f"at most {MAX_RUNS} runs, got {len(dict.fromkeys(run_id))}")
    if reader is not None and reader.project is not None:  # a scoped token analyses only its own project
        if project is not None and project != reader.project:
            return []
        project = reader.project
        for rid in dict.fromkeys(run_id or []):
            check_readable(session, reader, rid)  # another project's run: 404, as for GET /runs/{id}
    try:
        runs = select_runs(session=session, run_ids=run_id, project=project, tags=tag,
                           config=_config_pairs(config))
    except ValueError as exc:
        raise _invalid("run_id" if run_id else "project", str(exc)) from None
    return load_run_data(session=session, runs=runs, want=want)


def _with_series(run: RunData, extra: Mapping[str, SeriesLike]) -> RunData:
    """``run`` with ``extra`` series added; a series it already holds in full is kept."""
    return replace(run, series={**extra, **run.series})


def _pick(groups: Sequence[Group], filters: dict[str, Any], field: str) -> Group:
    hits = [g for g in groups if g.matches(filters)]
    if len(hits) != 1:
        shown = "; ".join(g.label for g in (hits or groups)[:10])
        what = "no group" if not hits else f"{len(hits)} groups"
        raise _invalid(field, f"{what} of the selected runs match {filters}: {shown}")
    return hits[0]


def _side(groups: Sequence[Group], runs: Sequence[RunData], filters: dict[str, Any], run_ids: Sequence[str] | None,
          field: str) -> tuple[str, list[RunData]]:
    """(label, runs) of one side of a comparison: given runs, or the one group the filters pick."""
    if run_ids:
        by_id = {r.id: r for r in runs}
        chosen = [by_id[i] for i in dict.fromkeys(run_ids) if i in by_id]
        missing = [i for i in run_ids if i not in by_id]
        if missing:
            raise _invalid(f"{field}_run", f"run {missing[0]!r} is not among the selected runs")
        names = {r.name for r in chosen}
        label = next(iter(names)) if len(names) == 1 and next(iter(names)) else ", ".join(r.id for r in chosen)
        return label, chosen
    if not filters:
        raise _invalid(field, f"pick the {field} side with {field}=key=value (repeatable) or {field}_run=<id>")
    group = _pick(groups, filters, field)
    return group.label, list(group.runs)


@router.get("/analysis/groups")
def analysis_groups(
    reader: ReaderDep, session: SessionDep,
    run_id: ListQuery = None, project: str | None = None, tag: ListQuery = None, config: ListQuery = None,
    group_by: ListQuery = None,
) -> Response:
    """The selected runs grouped: label, the grouping values, members and their seeds."""
    runs = _runs(session, run_id=run_id, project=project, tag=tag, config=config, reader=reader,
                 want=lambda _k: False)
    groups = group_runs(runs, _group_by(group_by))
    return WireJSONResponse({"group_by": _group_by(group_by), "groups": [
        {"group": g.label, "values": dict(g.values), "n": g.n, "run_ids": g.run_ids,
         "names": [r.name for r in g.runs], "seeds": [r.seed for r in g.runs]} for g in groups]})


@router.get("/analysis/time-to-target")
def analysis_time_to_target(
    reader: ReaderDep, session: SessionDep,
    key: Annotated[str, Query(min_length=1)],
    target: float,
    direction: Literal["below", "above"] = "below",
    baseline: ListQuery = None,
    baseline_run: ListQuery = None,
    run_id: ListQuery = None, project: str | None = None, tag: ListQuery = None, config: ListQuery = None,
    group_by: ListQuery = None,
) -> Response:
    """Per group: steps, wall time and samples to the target (mean ± sd, min–max, resolution, n) and
    the speedup against the baseline group with its bootstrap 95 % interval, paired by seed."""
    if not math.isfinite(target):
        raise _invalid("target", "target must be a finite number")
    base_filters = _filters(baseline, "baseline")
    runs = _runs(session, run_id=run_id, project=project, tag=tag, config=config, reader=reader,
                 want=lambda k: k in (key, SAMPLES_KEY))
    if not runs:
        raise _invalid("run_id" if run_id else "project", "no runs selected")
    groups = group_runs(runs, _group_by(group_by))
    if baseline_run:
        rid = baseline_run[0]
        base = next((g for g in groups if rid in g.run_ids), None)
        if base is None:
            raise _invalid("baseline_run", f"run {rid!r} is not among the selected runs")
    elif base_filters:
        base = _pick(groups, base_filters, "baseline")
    else:
        base = groups[0]
    rows = group_time_to_target(groups, base, key=key, target=target, direction=direction,
                                rng=np.random.default_rng(RNG_SEED), n_resamples=N_RESAMPLES)
    out = {"key": key, "target": target, "direction": direction, "baseline": base.label,
           "group_by": _group_by(group_by), "level": 0.95, "rows": [r.as_dict() for r in rows]}
    damaged = damaged_reads(runs)
    if damaged:  # stored chunks that could not be read were skipped: say whose (store.damaged_rows)
        out["damaged"] = damaged
    return WireJSONResponse(out)


@router.get("/analysis/why")
def analysis_why(
    reader: ReaderDep, session: SessionDep,
    a: ListQuery = None, a_run: ListQuery = None,
    baseline: ListQuery = None, baseline_run: ListQuery = None,
    match: Literal["step", "samples", "loss"] = "step",
    at: float | None = None,
    key: Annotated[str, Query(min_length=1)] = "val_loss",
    direction: Literal["below", "above"] = "below",
    top: Annotated[int, Query(ge=1, le=100)] = 10,
    run_id: ListQuery = None, project: str | None = None, tag: ListQuery = None, config: ListQuery = None,
    group_by: ListQuery = None,
) -> Response:
    """Every per-layer diagnostic both sides logged, at matched progress, grouped by layer role and
    ranked by standardized difference; the top ``top`` as sentences with the panel that shows each."""
    if at is not None and not math.isfinite(at):
        raise _invalid("at", "at must be a finite number")
    a_filters, b_filters = _filters(a, "a"), _filters(baseline, "baseline")
    # Only the series that match progress are read in full; the per-layer diagnostics after the
    # matching, and only near each run's matched step (server.store.analysis.load_nearest).
    runs = _runs(session, run_id=run_id, project=project, tag=tag, config=config, reader=reader,
                 want=lambda k: k in (key, SAMPLES_KEY))
    if not runs:
        raise _invalid("run_id" if run_id else "project", "no runs selected")
    groups = group_runs(runs, _group_by(group_by))
    a_label, a_runs = _side(groups, runs, a_filters, a_run, "a")
    b_label, b_runs = _side(groups, runs, b_filters, baseline_run, "baseline")
    if {r.id for r in a_runs} & {r.id for r in b_runs}:
        raise _invalid("a", "the two sides share runs: pick two different groups")
    everyone = [*a_runs, *b_runs]
    index = index_diagnostics(session=session, run_ids=[r.id for r in everyone], want=is_compared)
    field = "key" if match == "loss" else "match"
    try:
        matched = match_runs(everyone, match=match, at=at, match_key=key, direction=direction,
                             last_steps=index.last_steps() if match == "step" and at is None else None)
    except ValueError as exc:
        raise _invalid(field, str(exc)) from None
    near = load_nearest(session=session, index=index, steps=matched.steps)
    a_runs, b_runs = ([_with_series(r, near.get(r.id, {})) for r in side] for side in (a_runs, b_runs))
    try:
        result = why(a_runs, b_runs, a_label=a_label, baseline_label=b_label, match=match, at=at,
                     match_key=key, direction=direction, top=top, matched=matched)
    except ValueError as exc:
        raise _invalid(field, str(exc)) from None
    out = result.as_dict()
    out["rows"] = out["rows"][:top]
    out.update(a_run_ids=[r.id for r in a_runs], baseline_run_ids=[r.id for r in b_runs])
    damaged = damaged_reads([*a_runs, *b_runs])
    if damaged:  # stored chunks that could not be read were skipped: say whose (store.damaged_rows)
        out["damaged"] = damaged
        out["notes"] = [*out["notes"], *(f"run {d['run_id']}: {d['chunks']} unreadable stored chunk(s) of "
                                         f"{d['key']} skipped" for d in damaged)]
    return WireJSONResponse(out)
