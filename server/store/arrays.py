"""Array records: one float64 vector per (run, key, layer, step)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from server.models import ArrayRecord
from server.schemas import ArrayIn
from server.store.damaged_rows import array_values
from server.wire import dumps, encode_array

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


@dataclass
class ArrayReadPlan:
    """Which records one read returns (ids in (key, layer, step) order) and how many values."""

    run_id: str
    ids: list[int]
    sizes: list[int]  # float64 values per chosen record, from the stored byte length
    steps: list[int]
    total: int  # records matching the filters before thinning

    @property
    def values(self) -> int:
        return sum(self.sizes)

    def fitting_step_max(self, max_values: int) -> int | None:
        """The largest step such that the chosen records up to it hold ≤ ``max_values`` values
        (a ``step_max`` to page with), or None if even the first step holds more."""
        per_step: dict[int, int] = {}
        for st, n in zip(self.steps, self.sizes, strict=True):
            per_step[st] = per_step.get(st, 0) + n
        acc, best = 0, None
        for st in sorted(per_step):
            acc += per_step[st]
            if acc > max_values:
                break
            best = st
        return best


def plan_array_read(
    *, session: Session, run_id: str, key: str | None = None, layer: str | None = None,
    step_min: int | None = None, step_max: int | None = None, max_steps: int = 200,
    at_step: int | None = None,
) -> ArrayReadPlan:
    """Records matching the filters, thinned to at most ``max_steps`` distinct steps (first and
    last kept), or with ``at_step`` the record at the nearest step ≤ at_step (else the first) per
    (key, layer). Reads only the index and the blob lengths, never the blobs."""
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
        select(ArrayRecord.id, ArrayRecord.key, ArrayRecord.layer, ArrayRecord.step,
               func.length(ArrayRecord.values)).where(*cond)
        .order_by(ArrayRecord.key, ArrayRecord.layer, ArrayRecord.step)
    ).all()
    size = {rid: int(nbytes or 0) // 8 for rid, _, _, _, nbytes in index}
    step_of = {rid: st for rid, _, _, st, _ in index}
    if at_step is not None:
        chosen: dict[tuple[str, str], int] = {}
        first: dict[tuple[str, str], int] = {}
        for rid, k, lay, st, _ in index:
            first.setdefault((k, lay), rid)
            if st <= at_step:
                chosen[(k, lay)] = rid  # ordered by step: the last one ≤ at_step wins
        ids = [chosen.get(kl, rid) for kl, rid in first.items()]
    else:
        keep = _even_subsample(sorted({st for _, _, _, st, _ in index}), max(1, max_steps))
        ids = [rid for rid, _, _, st, _ in index if st in keep]
    return ArrayReadPlan(run_id=run_id, ids=ids, sizes=[size[i] for i in ids], steps=[step_of[i] for i in ids],
                         total=len(index))


STREAM_BATCH_VALUES = 32_768  # values decoded and encoded at a time (256 KiB raw, < 1 MB as JSON)


def stream_array_records(*, session: Session, plan: ArrayReadPlan,
                         gate: AbstractContextManager[Any] | None = None) -> Iterator[bytes]:
    """The JSON body ``{"total", "values", "records": [...], "damaged"}`` in pieces.

    Records are loaded and encoded a batch of ~``STREAM_BATCH_VALUES`` values at a time, so one
    read's memory is bounded by the batch, not by the response; ``gate`` (a semaphore) bounds how
    many batches the whole process encodes at once. Unreadable records are skipped and counted.
    """
    gate = gate or nullcontext()
    yield b'{"total":' + str(plan.total).encode() + b',"values":' + str(plan.values).encode() + b',"records":['
    damaged = 0
    first = True
    start = 0
    while start < len(plan.ids):
        end, acc = start, 0
        while end < len(plan.ids) and (end == start or acc + plan.sizes[end] <= STREAM_BATCH_VALUES) \
                and end - start < 900:
            acc += plan.sizes[end]
            end += 1
        batch = plan.ids[start:end]
        start = end
        with gate:
            rows = {r.id: r for r in session.scalars(select(ArrayRecord).where(ArrayRecord.id.in_(batch))).all()}
            pieces = []
            for rid in batch:
                r = rows.get(rid)
                if r is None:  # deleted since the plan was made
                    continue
                vals = array_values(plan.run_id, r.key, r.step, r.values, r.shape)
                if vals is None:
                    damaged += 1
                    continue
                pieces.append(dumps({"key": r.key, "layer": r.layer, "step": r.step, "time": r.time,
                                     "shape": r.shape, "values": encode_array(vals)}))
            session.expunge_all()
        if pieces:
            yield (b"" if first else b",") + b",".join(pieces)
            first = False
    yield b'],"damaged":' + str(damaged).encode() + b"}"
