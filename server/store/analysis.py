"""Reads for ``server.analysis``: runs with their config and the scalar series a statistic needs.

Why a reader of its own: the "why" compares every per-layer diagnostic of every run of two groups —
a few thousand series for a 48-layer model and five seeds — and reading them one ``load_points`` call
each would be a few thousand queries. Here one query per 900 series fetches all their chunks.

The "why" reads each diagnostic at one step per run, so it need not read every point of it:
``index_diagnostics`` reads the chunks' step ranges (no blobs) and ``load_nearest`` the steps and values
of only the chunks that can hold the point nearest that step, keeping just the points around it.

A stored chunk whose blobs cannot be read (``store.damaged_rows.chunk_is_sound``) is skipped, as the
series readers do: the statistic is computed from the rest, and each ``Points`` counts what it skipped
in ``damaged`` so that :func:`damaged_reads` can name the run and key in the answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.analysis.groups import RunData
from server.errors import RunNotFound
from server.models import Run, Series, SeriesChunk
from server.store.damaged_rows import chunk_is_sound
from server.store.runs import list_runs
from server.store.series import F8, I8, Points

__all__ = ["select_runs", "load_run_data", "MAX_RUNS", "ChunkMeta", "DiagnosticIndex", "index_diagnostics",
           "chunks_near", "load_nearest", "damaged_reads"]

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
    for sid, all_rows in parts.items():
        rows = [r for r in all_rows if chunk_is_sound(sid, r[1], r[3], r[2])]
        damaged = len(all_rows) - len(rows)
        if not rows:
            out[sid] = Points.empty(damaged)
            continue
        pts = Points(np.concatenate([np.frombuffer(r[1], I8) for r in rows]),
                     np.concatenate([np.frombuffer(r[2], F8) for r in rows]),
                     np.concatenate([np.frombuffer(r[3], F8) for r in rows]), damaged)
        if len(pts) > 1 and not bool((pts.steps[1:] >= pts.steps[:-1]).all()):
            pts = pts.take(np.argsort(pts.steps, kind="stable"))
        out[sid] = pts
    return out


# ------------------------------------------------------------------------- diagnostics at one step


@dataclass(frozen=True)
class ChunkMeta:
    """One stored chunk of a series without its blobs: enough to tell whether it can hold a step."""

    id: int
    seq: int
    step_min: int
    step_max: int


@dataclass(frozen=True)
class DiagnosticIndex:
    """The chosen series of some runs and their chunks' step ranges, read without any blob."""

    keys: dict[int, tuple[str, str]]  # series id -> (run id, key)
    chunks: dict[int, list[ChunkMeta]]  # series id -> its chunks in ``seq`` order (every series has one)

    def last_steps(self) -> dict[str, list[int]]:
        """Run id -> the last logged step of each of its series (the largest ``step_max``)."""
        out: dict[str, list[int]] = {}
        for sid, chunks in self.chunks.items():
            out.setdefault(self.keys[sid][0], []).append(max(c.step_max for c in chunks))
        return out


def index_diagnostics(*, session: Session, run_ids: Sequence[str], want: Callable[[str], bool]) -> DiagnosticIndex:
    """The series of ``run_ids`` whose key ``want`` accepts, with their chunks' step ranges: one query
    (at most ``MAX_RUNS`` ids, under SQLite's bound-parameter limit) and no blob."""
    keys: dict[int, tuple[str, str]] = {}
    chunks: dict[int, list[ChunkMeta]] = {}
    if not run_ids:
        return DiagnosticIndex(keys, chunks)
    rows = session.execute(
        select(Series.run_id, Series.key, SeriesChunk.series_id, SeriesChunk.id, SeriesChunk.seq,
               SeriesChunk.step_min, SeriesChunk.step_max)
        .join(SeriesChunk, SeriesChunk.series_id == Series.id)
        .where(Series.run_id.in_(list(dict.fromkeys(run_ids))))
        .order_by(SeriesChunk.series_id, SeriesChunk.seq)
    ).all()
    accepted: dict[str, bool] = {}
    for rid, key, sid, cid, seq, lo, hi in rows:
        ok = accepted.get(key)
        if ok is None:
            ok = accepted[key] = want(key)
        if ok:
            keys[sid] = (rid, key)
            chunks.setdefault(sid, []).append(ChunkMeta(cid, seq, int(lo), int(hi)))
    return DiagnosticIndex(keys, chunks)


def chunks_near(chunks: Sequence[ChunkMeta], step: int) -> list[ChunkMeta]:
    """The chunks that can hold the points nearest ``step`` on either side, in ``seq`` order.

    Those whose [step_min, step_max] contains ``step``, every one whose step_max is the largest below
    it and every one whose step_min is the smallest above it. That holds the nearest point even when
    chunks overlap (a resumed run that logged a step range again): a chunk entirely below ``step``
    with a smaller step_max has no point as near as that largest step_max, and all the chunks sharing
    it are kept, so every duplicate of the nearest step is there, in the order they were logged.
    """
    if len(chunks) == 1:  # the usual case (a run shorter than CHUNK_POINTS steps): it is always needed
        return list(chunks)
    below = max((c.step_max for c in chunks if c.step_max < step), default=None)
    above = min((c.step_min for c in chunks if c.step_min > step), default=None)
    return [c for c in chunks
            if c.step_min <= step <= c.step_max or c.step_max == below or c.step_min == above]


def load_nearest(
    *, session: Session, index: DiagnosticIndex, steps: Mapping[str, int],
) -> dict[str, dict[str, Points]]:
    """Run id -> key -> the points of that series around the run's step in ``steps``: the last point
    logged before it and the first at or after it (by step; arrival order among equal steps), which
    is all a nearest-point read looks at. Runs absent from ``steps`` are not read.

    Only the chunks :func:`chunks_near` picks are read, their steps and values but not their times
    (the returned ``times`` are NaN), in batches under SQLite's bound-parameter limit.
    """
    chosen: dict[int, list[ChunkMeta]] = {}
    for sid, chunks in index.chunks.items():
        rid = index.keys[sid][0]
        if rid in steps:
            chosen[sid] = chunks_near(chunks, steps[rid])
    wanted = [c.id for cs in chosen.values() for c in cs]
    blobs: dict[int, tuple[bytes, bytes]] = {}
    for start in range(0, len(wanted), _IN_BATCH):
        batch = wanted[start:start + _IN_BATCH]
        for cid, sid, st, va in session.execute(
            select(SeriesChunk.id, SeriesChunk.series_id, SeriesChunk.steps, SeriesChunk.values)
            .where(SeriesChunk.id.in_(batch))
        ):
            if chunk_is_sound(sid, st, va, None):  # an unreadable one is left out (logged there)
                blobs[cid] = (st, va)
    out: dict[str, dict[str, Points]] = {rid: {} for rid in steps}
    for sid, cs in chosen.items():
        rid, key = index.keys[sid]
        sound = [c for c in cs if c.id in blobs]
        out[rid][key] = _around(sound, blobs, steps[rid], damaged=len(cs) - len(sound))
    return out


def damaged_reads(runs: Iterable[RunData]) -> list[dict[str, Any]]:
    """``{"run_id", "key", "chunks"}`` for every series of ``runs`` read with unreadable chunks skipped,
    in run then key order: what an answer computed without them names (empty when nothing was)."""
    out = []
    for run in runs:
        for key in sorted(run.series):
            n = getattr(run.series[key], "damaged", 0)
            if n:
                out.append({"run_id": run.id, "key": key, "chunks": n})
    return out


def _around(chunks: Sequence[ChunkMeta], blobs: Mapping[int, tuple[bytes, bytes]], step: int, *,
            damaged: int = 0) -> Points:
    """The (at most two) points of these chunks either side of ``step``: index ``i - 1`` and ``i`` of a
    left binary search in the step-sorted points, as ``why._nearest_index`` reads them. ``damaged``:
    the chunks left out as unreadable, carried on the result."""
    if not chunks:
        return Points.empty(damaged)
    if len(chunks) == 1:
        st_blob, va_blob = blobs[chunks[0].id]
        st, va = np.frombuffer(st_blob, I8), np.frombuffer(va_blob, F8)
    else:
        st = np.concatenate([np.frombuffer(blobs[c.id][0], I8) for c in chunks])
        va = np.concatenate([np.frombuffer(blobs[c.id][1], F8) for c in chunks])
    # the points themselves are checked, not the chunks' ``ordered`` flags, as the full read did (~3 us)
    if len(st) > 1 and not bool((st[1:] >= st[:-1]).all()):
        order = np.argsort(st, kind="stable")
        st, va = st[order], va[order]
    i = int(st.searchsorted(step, side="left"))
    lo = i - 1 if i else 0
    return Points(st[lo:i + 1].copy(), _NAN2[:min(i + 1, len(st)) - lo], va[lo:i + 1].copy(), damaged)


_NAN2 = np.full(2, np.nan)
_NAN2.flags.writeable = False  # shared by every window's ``times`` (not read): nobody may write it
