"""Chunked scalar series: vectorised append, range reads, downsampling, latest, time-to-target.

Chunk layout: little-endian int64 steps, float64 times, float64 values (``np.frombuffer`` reads
them without a copy). Only the last chunk of a series may be small: while it holds fewer than
``MERGE_BELOW`` points, appends are merged into it (rewriting at most 12 kB per key), so a live
run sending a few points a second does not create a row per request, while big batches go
straight into new chunks of up to ``CHUNK_POINTS`` without rewriting anything.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sqlalchemy import Select, Table, bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from server.downsample import downsample_indices
from server.models import Run, Series, SeriesChunk
from server.store.damaged_rows import chunk_is_sound
from server.store.damaged_rows import log as damaged_log
from server.wire import encode_array, encode_float

CHUNK_POINTS = 8192
MERGE_BELOW = 512  # tail rewrite ≤ 12 kB per key per batch: bounded write amplification for live runs
I8, F8 = np.dtype("<i8"), np.dtype("<f8")


@dataclass
class Points:
    """Raw points of one series, sorted by step (stable: arrival order breaks ties)."""

    steps: np.ndarray
    times: np.ndarray
    values: np.ndarray
    damaged: int = 0  # stored chunks that could not be read (skipped; see store.damaged_rows)

    @classmethod
    def empty(cls, damaged: int = 0) -> Points:
        return cls(np.empty(0, I8), np.empty(0, F8), np.empty(0, F8), damaged)

    def __len__(self) -> int:
        return len(self.steps)

    def take(self, idx: np.ndarray | slice) -> Points:
        return Points(self.steps[idx], self.times[idx], self.values[idx], self.damaged)


def f8_bytes(x: float) -> bytes:
    return np.float64(x).astype(F8).tobytes()


def f8_value(b: bytes | None) -> float | None:
    """One stored float64; a damaged value (not 8 bytes) reads as missing (logged), not a 500."""
    if b is None:
        return None
    if len(b) != 8:
        damaged_log.warning("a series' last_value holds %d bytes, not one float64; served as null", len(b))
        return None
    return float(np.frombuffer(b, F8)[0])


def append_scalars(
    *, session: Session, run: Run, keys: Sequence[str],
    columns: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> int:
    """Append (steps, times, values) arrays per key; returns the number of points written.

    Rows touched per call: one ``series`` row and one or two chunks per key, whatever the
    number of points. Summary fields of the run (``last_step``, ``summary``) are updated here.
    """
    by_key: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for key, (st, ti, va) in zip(keys, columns, strict=True):
        if len(st) == 0:
            continue
        if key in by_key:  # the same key twice in one batch: concatenate, order kept
            ps, pt, pv = by_key[key]
            st, ti, va = np.concatenate((ps, st)), np.concatenate((pt, ti)), np.concatenate((pv, va))
        by_key[key] = (st, ti, va)
    if not by_key:
        return 0
    keys_sorted = sorted(by_key)  # one lock order for every writer: no deadlocks on PostgreSQL
    known = set(session.scalars(select(Series.key).where(Series.run_id == run.id,
                                                         Series.key.in_(keys_sorted))))
    missing = [k for k in keys_sorted if k not in known]
    if missing:  # ON CONFLICT DO NOTHING: a concurrent writer may create the same series
        insert = sqlite_insert if session.get_bind().dialect.name == "sqlite" else pg_insert
        session.execute(insert(Series.__table__).on_conflict_do_nothing(index_elements=["run_id", "key"]),
                        [{"run_id": run.id, "key": k, "count": 0, "n_chunks": 0} for k in missing])
    # Plain rows and bulk UPDATEs by primary key, not ORM objects: a live run sends hundreds of
    # per-layer keys with a few points each, and per-object bookkeeping would dominate.
    existing = {
        r.key: r for r in session.execute(
            select(Series.id, Series.key, Series.count, Series.first_step, Series.last_step,
                   Series.first_time, Series.last_time, Series.last_value, Series.n_chunks)
            .where(Series.run_id == run.id, Series.key.in_(keys_sorted))
            .order_by(Series.key).with_for_update()
        )
    }
    # The tail chunk of each series (the only one that may be small), found by a join on
    # seq = n_chunks - 1 rather than a long (series_id, seq) IN list.
    tails: dict[int, Any] = {
        c.series_id: c for c in session.execute(
            select(SeriesChunk.id, SeriesChunk.series_id, SeriesChunk.seq, SeriesChunk.steps,
                   SeriesChunk.times, SeriesChunk.values)
            .join(Series, (Series.id == SeriesChunk.series_id) & (SeriesChunk.seq == Series.n_chunks - 1))
            .where(Series.run_id == run.id, Series.key.in_(keys_sorted), SeriesChunk.n < MERGE_BELOW)
        )
    }
    inserts: list[dict[str, Any]] = []
    chunk_updates: list[dict[str, Any]] = []
    series_updates: list[dict[str, Any]] = []
    total = 0
    summary = dict(run.summary or {})
    run_last = run.last_step
    for key, (st, ti, va) in by_key.items():
        s = existing[key]
        total += len(st)
        tail = tails.get(s.id)
        if tail is not None:
            st_all = np.concatenate((np.frombuffer(tail.steps, I8), st))
            ti_all = np.concatenate((np.frombuffer(tail.times, F8), ti))
            va_all = np.concatenate((np.frombuffer(tail.values, F8), va))
        else:
            st_all, ti_all, va_all = st, ti, va
        seq = s.n_chunks if tail is None else tail.seq
        for start in range(0, len(st_all), CHUNK_POINTS):
            sl = slice(start, start + CHUNK_POINTS)
            row = _chunk_row(st_all[sl], ti_all[sl], va_all[sl])
            if tail is not None and start == 0:
                chunk_updates.append({"id": tail.id, **row})
            else:
                inserts.append({"series_id": s.id, "seq": seq, **row})
            seq += 1
        upd: dict[str, Any] = {"id": s.id, "n_chunks": seq, "count": (s.count or 0) + len(st),
                               "last_step": s.last_step, "last_time": s.last_time, "last_value": s.last_value}
        # Series summary: "last" is the point with the highest step (latest arrival on ties).
        j = len(st) - 1 - int(np.argmax(st[::-1]))
        if s.last_step is None or int(st[j]) >= s.last_step:
            upd.update(last_step=int(st[j]), last_time=float(ti[j]), last_value=f8_bytes(va[j]))
            if "/" not in key:
                summary[key] = encode_float(float(va[j]))
        smin = int(st.min())
        upd["first_step"] = smin if s.first_step is None else min(s.first_step, smin)
        finite_t = ti[np.isfinite(ti)]
        tmin = float(finite_t.min()) if len(finite_t) else None
        upd["first_time"] = s.first_time if tmin is None else (
            tmin if s.first_time is None else min(s.first_time, tmin))
        series_updates.append(upd)
        run_last = upd["last_step"] if run_last is None else max(run_last, upd["last_step"])
    if inserts:
        session.execute(SeriesChunk.__table__.insert(), inserts)
    if chunk_updates:
        _update_by_id(session, SeriesChunk.__table__, chunk_updates)
    _update_by_id(session, Series.__table__, series_updates)
    run.summary = summary
    run.last_step = run_last
    return total


def _update_by_id(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """One executemany UPDATE ... WHERE id = ? (rows carry "id" plus the new column values)."""
    params = [{**{k: v for k, v in row.items() if k != "id"}, "_id": row["id"]} for row in rows]
    session.execute(table.update().where(table.c.id == bindparam("_id")), params)


def _chunk_row(st: np.ndarray, ti: np.ndarray, va: np.ndarray) -> dict[str, Any]:
    finite_t = ti[np.isfinite(ti)]
    return {
        "n": len(st), "step_min": int(st.min()), "step_max": int(st.max()),
        "ordered": bool(len(st) < 2 or (st[1:] >= st[:-1]).all()),
        "time_min": float(finite_t.min()) if len(finite_t) else None,
        "time_max": float(finite_t.max()) if len(finite_t) else None,
        "steps": st.astype(I8, copy=False).tobytes(), "times": ti.astype(F8, copy=False).tobytes(),
        "values": va.astype(F8, copy=False).tobytes(),
    }


def _fetch_chunks(session: Session, stmt: Select) -> list[Any]:
    """Run a chunk query; on PostgreSQL through a binary cursor (bytea arrives as raw bytes
    instead of hex text that psycopg would have to decode: ~2x less to move and parse)."""
    if session.get_bind().dialect.name != "postgresql":
        return list(session.execute(stmt).all())
    conn = session.connection()
    compiled = stmt.compile(dialect=conn.dialect)
    raw = conn.connection.driver_connection
    with raw.cursor(binary=True) as cur:
        cur.execute(str(compiled), compiled.params)
        return cur.fetchall()


def load_points(
    *, session: Session, series_id: int, x: str = "step", x_min: float | None = None,
    x_max: float | None = None, after_step: int | None = None, with_times: bool = True,
) -> Points:
    """All points of a series in the range, sorted by step; chunk pruning is done in SQL.

    ``with_times=False`` skips the times column (a step-axis read moves a third less data); the
    returned ``times`` are then NaN.
    """
    cols = [SeriesChunk.steps, SeriesChunk.values, SeriesChunk.step_min, SeriesChunk.step_max,
            SeriesChunk.ordered]
    if with_times or x == "time":
        cols.append(SeriesChunk.times)
    stmt = select(*cols).where(SeriesChunk.series_id == series_id)
    lo_col, hi_col = (SeriesChunk.step_min, SeriesChunk.step_max) if x == "step" else (
        SeriesChunk.time_min, SeriesChunk.time_max)
    if x_min is not None:
        stmt = stmt.where(hi_col >= x_min)
    if x_max is not None:
        stmt = stmt.where(lo_col <= x_max)
    if after_step is not None:
        stmt = stmt.where(SeriesChunk.step_max > after_step)
    rows = _fetch_chunks(session, stmt.order_by(SeriesChunk.seq))
    sound = [r for r in rows if chunk_is_sound(series_id, r[0], r[1], r[5] if len(cols) == 6 else None)]
    damaged = len(rows) - len(sound)
    rows = sound
    if not rows:
        return Points.empty(damaged)
    steps = np.concatenate([np.frombuffer(r[0], I8) for r in rows])
    values = np.concatenate([np.frombuffer(r[1], F8) for r in rows])
    times = (np.concatenate([np.frombuffer(r[5], F8) for r in rows]) if len(cols) == 6
             else np.broadcast_to(np.float64(np.nan), steps.shape))
    pts = Points(steps, times, values, damaged)
    in_order = all(r[4] for r in rows) and all(rows[i][2] >= rows[i - 1][3] for i in range(1, len(rows)))
    if not in_order:
        pts = pts.take(np.argsort(pts.steps, kind="stable"))
    return select_range(pts, x=x, x_min=x_min, x_max=x_max, after_step=after_step)


def select_range(
    pts: Points, *, x: str = "step", x_min: float | None = None, x_max: float | None = None,
    after_step: int | None = None,
) -> Points:
    """The points of a step-sorted series inside the x range (and after ``after_step``)."""
    if x_min is None and x_max is None and after_step is None:
        return pts
    if x == "step":
        # sorted by step: the range is a slice found by binary search, no mask over every point
        lo_bound = x_min
        if after_step is not None:
            lo_bound = after_step + 1 if lo_bound is None else max(lo_bound, after_step + 1)
        lo = 0 if lo_bound is None else _step_index(pts.steps, lo_bound, "left")
        hi = len(pts) if x_max is None else _step_index(pts.steps, x_max, "right")
        return pts if (lo, hi) == (0, len(pts)) else pts.take(slice(lo, hi))
    mask = np.ones(len(pts), dtype=bool)
    if x_min is not None:
        mask &= pts.times >= x_min
    if x_max is not None:
        mask &= pts.times <= x_max
    if after_step is not None:
        mask &= pts.steps > after_step
    return pts.take(mask)


def _step_index(steps: np.ndarray, bound: float, side: Literal["left", "right"]) -> int:
    """Insertion index of a float bound into int64 steps (ceil for left, floor for right)."""
    if math.isnan(bound):
        return 0 if side == "left" else len(steps)
    if math.isinf(bound):
        return 0 if bound < 0 else len(steps)
    edge = math.ceil(bound) if side == "left" else math.floor(bound)
    return int(np.searchsorted(steps, edge, side))


class SeriesCache:
    """LRU of decoded whole series, bounded in bytes, shared by the request threads.

    Keyed by the series row's version (id, count, chunk count, last step, last value), which
    every append changes, so an entry can never be stale — also across API replicas, since the
    version is read from the database on every request. Only long series are cached: short
    ones are cheaper to read than to keep.
    """

    MIN_POINTS = 20_000

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[Any, ...], Points] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _size(p: Points) -> int:
        return p.steps.nbytes + p.values.nbytes + (p.times.nbytes if p.times.strides != (0,) else 0)

    def get(self, version: tuple[Any, ...], need_times: bool) -> Points | None:
        with self._lock:
            pts = self._entries.get(version)
            if pts is None or (need_times and pts.times.strides == (0,)):
                return None
            self._entries.move_to_end(version)
            return pts

    def put(self, version: tuple[Any, ...], pts: Points) -> None:
        size = self._size(pts)
        if len(pts) < self.MIN_POINTS or size > self.max_bytes:
            return
        for arr in (pts.steps, pts.values, pts.times):
            if arr.flags.writeable:
                arr.flags.writeable = False  # shared between request threads
        with self._lock:
            old = self._entries.pop(version, None)
            if old is not None:
                self._bytes -= self._size(old)
            self._entries[version] = pts
            self._bytes += size
            while self._bytes > self.max_bytes and self._entries:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= self._size(evicted)


def read_series(
    *, session: Session, run_ids: Sequence[str], keys: Sequence[str], x: str = "step", points: int = 2000,
    x_min: float | None = None, x_max: float | None = None, after_step: int | None = None,
    cache: SeriesCache | None = None,
) -> list[dict[str, Any]]:
    """One entry per (run, key) in request order; unknown keys give an empty series.

    Live appends (``after_step``) read only the new chunks from the database; other reads go
    through ``cache`` when given (zooming and re-opening a chart re-read the same long series).
    """
    rows = session.execute(
        select(Series.run_id, Series.key, Series.id, Series.count, Series.n_chunks, Series.last_step,
               Series.last_value)
        .where(Series.run_id.in_(list(run_ids)), Series.key.in_(list(keys)))
    ).all()
    found = {(r.run_id, r.key): r for r in rows}
    need_times = x == "time"
    out = []
    for run_id in run_ids:
        for key in keys:
            row = found.get((run_id, key))
            if row is None:
                pts = Points.empty()
            elif cache is None or after_step is not None:
                pts = load_points(session=session, series_id=row.id, x=x, x_min=x_min, x_max=x_max,
                                  after_step=after_step, with_times=need_times)
            else:
                version = (row.id, run_id, key, row.count, row.n_chunks, row.last_step, row.last_value)
                full = cache.get(version, need_times)
                if full is None:
                    full = load_points(session=session, series_id=row.id, with_times=need_times)
                    cache.put(version, full)
                pts = select_range(full, x=x, x_min=x_min, x_max=x_max)
            total = len(pts)
            downsampled = total > points
            if downsampled:
                pts = pts.take(downsample_indices(pts.values, points))
            xs = pts.steps.tolist() if x == "step" else encode_array(pts.times)
            entry = {"run_id": run_id, "key": key, "x": xs, "y": encode_array(pts.values),
                     "steps": pts.steps.tolist(), "total": total, "downsampled": downsampled}
            if pts.damaged:
                entry["damaged"] = pts.damaged  # chunks skipped as unreadable
            out.append(entry)
    return out


def list_series(*, session: Session, run_id: str, keys: Sequence[str] | None = None) -> list[Series]:
    stmt = select(Series).where(Series.run_id == run_id)
    if keys:
        stmt = stmt.where(Series.key.in_(list(keys)))
    return list(session.scalars(stmt.order_by(Series.key)))


def list_keys(*, session: Session, run_id: str) -> list[dict[str, Any]]:
    """Every series of the run with its extent and latest point. Plain rows, not ORM objects: the
    compare page asks this of every picked run, and building ~300 ``Series`` objects per run was
    most of the request."""
    rows = session.execute(
        select(Series.key, Series.count, Series.first_step, Series.last_step, Series.last_value, Series.last_time)
        .where(Series.run_id == run_id).order_by(Series.key)
    )
    return [
        {"key": key, "count": count, "first_step": first, "last_step": last,
         "last_value": encode_float(v) if (v := f8_value(value)) is not None else None, "last_time": at}
        for key, count, first, last, value, at in rows
    ]


def read_latest(*, session: Session, run_id: str, keys: Sequence[str] | None = None) -> dict[str, Any]:
    return {
        s.key: {"step": s.last_step, "value": encode_float(v) if (v := f8_value(s.last_value)) is not None
                else None, "time": s.last_time}
        for s in list_series(session=session, run_id=run_id, keys=keys)
    }


def _first_crossing(pts: Points, target: float, direction: str) -> int | None:
    hit = pts.values <= target if direction == "below" else pts.values >= target
    idx = np.flatnonzero(hit)
    return int(idx[0]) if len(idx) else None


def time_to_target(
    *, session: Session, runs: Sequence[tuple[str, str]], key: str, target: float, direction: str,
    baseline: str,
) -> list[dict[str, Any]]:
    """First crossing of ``target`` on the raw points of each run, with speedups vs ``baseline``.

    ``runs`` are (run_id, name). Time is measured from the run's first logged point of any key.
    """
    run_ids = [r for r, _ in runs]
    series = session.execute(
        select(Series.run_id, Series.key, Series.id, Series.first_time).where(Series.run_id.in_(run_ids))
    ).all()
    first_time: dict[str, float] = {}
    ids: dict[tuple[str, str], int] = {}
    for rid, k, sid, ft in series:
        ids[(rid, k)] = sid
        if ft is not None and math.isfinite(ft):
            first_time[rid] = min(first_time.get(rid, ft), ft)
    rows = []
    for rid, name in runs:
        row: dict[str, Any] = {"run_id": rid, "name": name, "reached": False, "step": None, "time_s": None,
                               "samples_seen": None}
        sid = ids.get((rid, key))
        if sid is not None:
            pts = load_points(session=session, series_id=sid)
            i = _first_crossing(pts, target, direction)
            if i is not None:
                row.update(reached=True, step=int(pts.steps[i]))
                t0 = first_time.get(rid)
                t = float(pts.times[i])
                row["time_s"] = t - t0 if t0 is not None and math.isfinite(t) else None
                ss_id = ids.get((rid, "samples_seen"))
                if ss_id is not None:
                    ss = load_points(session=session, series_id=ss_id, x_max=row["step"])
                    if len(ss):
                        row["samples_seen"] = encode_float(float(ss.values[-1]))
        rows.append(row)
    base = next((r for r in rows if r["run_id"] == baseline), None)
    for row in rows:
        for field, src in (("speedup_steps", "step"), ("speedup_time", "time_s"),
                           ("speedup_samples", "samples_seen")):
            b = base.get(src) if base else None
            v = row.get(src)
            ok = isinstance(b, (int, float)) and isinstance(v, (int, float)) and v > 0
            row[field] = float(b) / float(v) if ok else None
    return rows
