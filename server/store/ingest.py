"""The batch endpoint's transaction: scalars, arrays, events and the idempotency row together."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.models import Batch, Run
from server.schemas import BatchIn
from server.store.arrays import append_arrays
from server.store.events import append_events
from server.store.runs import heartbeat, lock_run
from server.store.series import append_scalars


def _duplicate() -> dict[str, Any]:
    return {"duplicate": True, "scalars": 0, "arrays": 0, "events": 0}


def ingest_batch(*, session: Session, run: Run, batch: BatchIn) -> dict[str, Any]:
    """Write a whole batch or nothing. A ``batch_id`` already seen for this run writes nothing
    and answers ``duplicate: true`` (also when two copies race: the unique key decides)."""
    # Lock the run row: concurrent batches of one run update its summary, last_step and
    # alerts_count (read-modify-write); different runs still ingest in parallel on PostgreSQL.
    lock_run(session=session, run=run)
    if batch.batch_id is not None:
        seen = session.scalar(
            select(Batch.id).where(Batch.run_id == run.id, Batch.batch_id == batch.batch_id))
        if seen is not None:
            return _duplicate()
        session.add(Batch(run_id=run.id, batch_id=batch.batch_id))
        try:
            # Claim the id first: a concurrent copy of this batch waits here and then fails
            # fast on the unique key instead of redoing all the work.
            session.flush()
        except IntegrityError:
            session.rollback()
            return _duplicate()
    now = time.time()
    columns = []
    for s in batch.scalars:
        steps = np.asarray(s.steps, dtype=np.int64)
        values = np.asarray(s.values, dtype=np.float64)
        times = (np.asarray(s.times, dtype=np.float64) if s.times is not None
                 else np.full(len(steps), now, dtype=np.float64))
        columns.append((steps, times, values))
    try:
        n_scalars = append_scalars(session=session, run=run, keys=[s.key for s in batch.scalars],
                                   columns=columns)
        n_arrays = append_arrays(session=session, run_id=run.id, arrays=batch.arrays, now=now)
        n_events = append_events(session=session, run=run, events=batch.events, now=now)
        heartbeat(session=session, run=run, commit=False)
        session.commit()
    except IntegrityError:
        session.rollback()
        if batch.batch_id is not None and session.scalar(
                select(Batch.id).where(Batch.run_id == run.id, Batch.batch_id == batch.batch_id)) is not None:
            return _duplicate()
        raise
    except BaseException:
        session.rollback()
        raise
    return {"duplicate": False, "scalars": n_scalars, "arrays": n_arrays, "events": n_events}
