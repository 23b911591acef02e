"""Reads for ``server.analysis``: runs with their config and the scalar series a statistic needs.

Why a reader of its own: the "why" compares every per-layer diagnostic of every run of two groups —
a few thousand series for a 48-layer model and five seeds — and reading them one ``load_points`` call
each would be a few thousand queries. Here one query per 900 series fetches all their chunks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.analysis.groups import RunData
from server.errors import RunNotFound
from server.models import Run, Series, SeriesChunk
from server.store.runs import list_runs
from server.store.series import F8, I8, Points

__all__ = ["select_runs", "load_run_data", "MAX_RUNS"]

MAX_RUNS = 200
_IN_BATCH = 900  # SQLite's bound-parameter limit is 999 on old builds


def select_runs(
    *, session: Session, run_ids: Sequence[str] | None = None, project: str | None = None,
    tags: Sequence[str] | None = None, config: Sequence[tuple[str, str]] | None = None,
) -> list[Run]:
    """The runs named by id (404 for an unknown one), else those matching the ``GET /runs`` filters,
    oldest first so groups and seeds come in launch order. More than ``MAX_RUNS`` matches is a
    ``ValueError`` (silently analysing the oldest 200 would give a wrong answer)."""
    if run_ids:
        runs = []
        for rid in dict.fromkeys(run_ids):
            run = session.get(Run, rid)
            if run is None:
                raise RunNotFound(rid)
            runs.append(run)
        return runs
    rows, count = list_runs(session=session, project=project, tags=list(tags or []) or None,
                            config=list(config or []) or None, limit=MAX_RUNS, order="created_at",
                            descending=False)
    if count > MAX_RUNS:
        raise ValueError(f"{count} runs match; at most {MAX_RUNS} can be analysed at once: narrow the "
                         "selection with project, tag or config")
    return [r for r, _ in rows]


def load_run_data(
    *, session: Session, runs: Sequence[Run], want: Callable[[str], bool],
) -> list[RunData]:
    """Each run with every series whose key ``want`` accepts, plus its first logged time."""
    ids = [r.id for r in runs]
    meta = session.execute(
        select(Series.run_id, Series.key, Series.id, Series.first_time).where(Series.run_id.in_(ids))
    ).all() if ids else []
    first_time: dict[str, float] = {}
    chosen: dict[int, tuple[str, str]] = {}
    for rid, key, sid, ft in meta:
        if ft is not None and math.isfinite(ft):
            first_time[rid] = min(first_time.get(rid, ft), ft)
        if want(key):
            chosen[sid] = (rid, key)
    points = _load_many(session, list(chosen))
    series: dict[str, dict[str, Points]] = {rid: {} for rid in ids}
    for sid, pts in points.items():
        rid, key = chosen[sid]
        series[rid][key] = pts
    return [
        RunData(id=r.id, name=r.name, config=r.config or {}, tags=tuple(r.tags or ()), optimizer=r.optimizer,
                series=series[r.id], first_time=first_time.get(r.id))
        for r in runs
    ]


def _load_many(session: Session, series_ids: list[int]) -> dict[int, Points]:
    parts: dict[int, list[Any]] = {}
    for start in range(0, len(series_ids), _IN_BATCH):
        batch = series_ids[start:start + _IN_BATCH]
        rows = session.execute(
            select(SeriesChunk.series_id, SeriesChunk.steps, SeriesChunk.times, SeriesChunk.values)
            .where(SeriesChunk.series_id.in_(batch)).order_by(SeriesChunk.series_id, SeriesChunk.seq)
        ).all()
        for row in rows:
            parts.setdefault(row[0], []).append(row)
    out: dict[int, Points] = {}
    for sid, rows in parts.items():
        pts = Points(np.concatenate([np.frombuffer(r[1], I8) for r in rows]),
                     np.concatenate([np.frombuffer(r[2], F8) for r in rows]),
                     np.concatenate([np.frombuffer(r[3], F8) for r in rows]))
        if len(pts) > 1 and not bool((pts.steps[1:] >= pts.steps[:-1]).all()):
            pts = pts.take(np.argsort(pts.steps, kind="stable"))
        out[sid] = pts
    return out
