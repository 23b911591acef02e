"""Array records: one float64 vector per (run, key, layer, step)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from server.models import ArrayRecord
from server.schemas import ArrayIn
from server.wire import encode_array

F8 = np.dtype("<f8")


def append_arrays(*, session: Session, run_id: str, arrays: Sequence[ArrayIn], now: float) -> int:
    """Insert records; a record for an existing (key, layer, step) replaces it (last write wins)."""
    if not arrays:
        return 0
    latest: dict[tuple[str, str, int], ArrayIn] = {}
    for a in arrays:
        latest[(a.key, a.layer, a.step)] = a
    dialect = session.get_bind().dialect.name
    insert = sqlite_insert if dialect == "sqlite" else pg_insert
    stmt = insert(ArrayRecord.__table__)
    stmt = stmt.on_conflict_do_update(
        index_elements=["run_id", "key", "layer", "step"],
        set_={"time": stmt.excluded.time, "shape": stmt.excluded.shape, "values": stmt.excluded["values"]},
    )
    session.execute(stmt, [
        {"run_id": run_id, "key": a.key, "layer": a.layer, "step": a.step,
         "time": a.time if a.time is not None else now, "shape": a.shape,
         "values": np.asarray(a.values, dtype=F8).tobytes()}
        for a in latest.values()
    ])
    return len(latest)


def array_summary(*, session: Session, run_id: str) -> list[dict[str, Any]]:
    rows = session.execute(
        select(ArrayRecord.key, ArrayRecord.layer, func.count(), func.min(ArrayRecord.step),
               func.max(ArrayRecord.step))
        .where(ArrayRecord.run_id == run_id).group_by(ArrayRecord.key, ArrayRecord.layer)
        .order_by(ArrayRecord.key, ArrayRecord.layer)
    ).all()
    return [{"key": k, "layer": layer, "count": n, "first_step": lo, "last_step": hi}
            for k, layer, n, lo, hi in rows]


def _even_subsample(steps: list[int], max_steps: int) -> set[int]:
    if len(steps) <= max_steps:
        return set(steps)
    if max_steps <= 1:
        return {steps[-1]}
    idx = np.unique(np.linspace(0, len(steps) - 1, max_steps).round().astype(np.int64))
    return {steps[i] for i in idx.tolist()}


def read_arrays(
    *, session: Session, run_id: str, key: str | None = None, layer: str | None = None,
    step_min: int | None = None, step_max: int | None = None, max_steps: int = 200,
    at_step: int | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Records matching the filters, thinned to at most ``max_steps`` distinct steps (first and
    last kept), or with ``at_step`` the record at the nearest step ≤ at_step (else the first) per
    (key, layer). Returns (records, total matching before thinning)."""
    cond = [ArrayRecord.run_id == run_id]
    if key is not None:
        cond.append(ArrayRecord.key == key)
    if layer is not None:
        cond.append(ArrayRecord.layer == layer)
    if step_min is not None:
        cond.append(ArrayRecord.step >= step_min)
    if step_max is not None:
        cond.append(ArrayRecord.step <= step_max)
    index = session.execute(
        select(ArrayRecord.id, ArrayRecord.key, ArrayRecord.layer, ArrayRecord.step).where(*cond)
        .order_by(ArrayRecord.key, ArrayRecord.layer, ArrayRecord.step)
    ).all()
    total = len(index)
    if at_step is not None:
        chosen: dict[tuple[str, str], int] = {}
        first: dict[tuple[str, str], int] = {}
        for rid, k, lay, st in index:
            first.setdefault((k, lay), rid)
            if st <= at_step:
                chosen[(k, lay)] = rid  # ordered by step: the last one ≤ at_step wins
        ids = [chosen.get(kl, rid) for kl, rid in first.items()]
    else:
        keep = _even_subsample(sorted({st for _, _, _, st in index}), max(1, max_steps))
        ids = [rid for rid, _, _, st in index if st in keep]
    records: list[dict[str, Any]] = []
    for start in range(0, len(ids), 900):
        rows = session.scalars(select(ArrayRecord).where(ArrayRecord.id.in_(ids[start:start + 900]))).all()
        records.extend(
            {"key": r.key, "layer": r.layer, "step": r.step, "time": r.time, "shape": r.shape,
             "values": encode_array(np.frombuffer(r.values, F8))}
            for r in rows
        )
    records.sort(key=lambda r: (r["key"], r["layer"], r["step"]))
    return records, total
