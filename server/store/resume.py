"""Resume a run: continue it after a restart, optionally rewound to the step its checkpoint was saved at.

Why rewinding is the server's job: a job that crashes at step 35 and resumes from its step-20 checkpoint logs
steps 21–35 again. Stored twice, every chart shows two lines over that range and summaries read the abandoned
values. The client says where its checkpoint was (``from_step``); the server drops every scalar point, array
and step-tagged event at or after it, in one transaction, so the series reads as if the run had never been
interrupted.

Idempotent: each resume carries a client-minted ``id``, recorded as a ``resume`` event; a create request
replayed later (a retry, ``optiscope sync`` replaying a spool) finds the event and changes nothing, so it can
never delete data logged after the resume.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from server.models import ArrayRecord, Event, Run, Series, SeriesChunk
from server.schemas import ResumeIn
from server.store.series import F8, I8, _chunk_row, f8_bytes
from server.db import utcnow
from server.wire import encode_float

__all__ = ["resume_run", "rewind"]


def resume_run(*, session: Session, run: Run, resume: ResumeIn, config: dict[str, Any]) -> bool:
    """Apply ``resume`` to ``run`` once: rewind, merge ``config``, mark running. False if already applied."""
    applied = session.scalar(select(func.count()).select_from(Event).where(
        Event.run_id == run.id, Event.kind == "resume", Event.key == "resume." + resume.id))
    if applied:
        return False
    dropped = rewind(session=session, run=run, from_step=resume.from_step) if resume.from_step is not None else {}
    old = dict(run.config or {})
    changed = {k: {"was": old.get(k), "now": v} for k, v in config.items() if old.get(k) != v}
    if changed:
        run.config = {**old, **config}
    now = utcnow()
    run.status = "running"
    run.finished_at = None
    run.heartbeat_at = now
    run.updated_at = now
    message = "resumed" + (f" from step {resume.from_step}" if resume.from_step is not None else "")
    if changed:
        message += f"; config changed: {', '.join(sorted(changed))}"
    # step None: a later rewind to an earlier step must not delete this record of the resume, or a replay
    # of this request would apply its rewind again over data logged since
    session.add(Event(run_id=run.id, step=None, key="resume." + resume.id, kind="resume",
                      level="info", message=message, layer=None, time=now.timestamp(),
                      data={"from_step": resume.from_step, "dropped": dropped, "config_changed": changed}))
    session.commit()
    return True


def rewind(*, session: Session, run: Run, from_step: int) -> dict[str, int]:
    """Drop everything of ``run`` logged at ``step >= from_step``; returns how many points/arrays/events."""
    points = 0
    summary = dict(run.summary or {})
    for series in session.scalars(select(Series).where(Series.run_id == run.id, Series.last_step >= from_step)
                                  .order_by(Series.key).with_for_update()):
        points += _rewind_series(session, series, from_step)
        if "/" not in series.key:
            if series.count:
                summary[series.key] = encode_float(float(np.frombuffer(series.last_value, F8)[0]))
            else:
                summary.pop(series.key, None)
        if not series.count:
            session.delete(series)
    arrays = session.execute(delete(ArrayRecord).where(ArrayRecord.run_id == run.id,
                                                       ArrayRecord.step >= from_step)).rowcount
    events = session.execute(delete(Event).where(Event.run_id == run.id, Event.step >= from_step)).rowcount
    session.flush()
    run.alerts_count = session.scalar(select(func.count()).select_from(Event).where(
        Event.run_id == run.id, Event.kind == "alert"))
    run.summary = summary
    run.last_step = session.scalar(select(func.max(Series.last_step)).where(Series.run_id == run.id))
    return {"points": points, "arrays": int(arrays or 0), "events": int(events or 0)}


def _rewind_series(session: Session, series: Series, from_step: int) -> int:
    """Cut one series' chunks at ``from_step`` and recompute its summary row; returns points dropped."""
    dropped = 0
    for chunk in session.scalars(select(SeriesChunk).where(SeriesChunk.series_id == series.id,
                                                           SeriesChunk.step_max >= from_step)):
        st = np.frombuffer(chunk.steps, I8)
        keep = st < from_step
        dropped += int((~keep).sum())
        if not keep.any():
            session.delete(chunk)
            continue
        row = _chunk_row(st[keep], np.frombuffer(chunk.times, F8)[keep], np.frombuffer(chunk.values, F8)[keep])
        for name, value in row.items():
            setattr(chunk, name, value)
    session.flush()
    stats = session.execute(select(func.count(), func.sum(SeriesChunk.n), func.max(SeriesChunk.seq),
                                   func.min(SeriesChunk.step_min), func.max(SeriesChunk.step_max),
                                   func.min(SeriesChunk.time_min))
                            .where(SeriesChunk.series_id == series.id)).one()
    n_rows, count, max_seq, first_step, last_step, first_time = stats
    series.count = int(count or 0)
    series.n_chunks = 0 if not n_rows else int(max_seq) + 1
    series.first_step, series.last_step, series.first_time = first_step, last_step, first_time
    series.last_time = series.last_value = None
    if n_rows:
        # "last" is the point with the highest step, latest arrival on ties (as append_scalars keeps it)
        last = session.scalars(select(SeriesChunk).where(SeriesChunk.series_id == series.id,
                                                         SeriesChunk.step_max == last_step)
                               .order_by(SeriesChunk.seq.desc()).limit(1)).one()
        st = np.frombuffer(last.steps, I8)
        j = len(st) - 1 - int(np.argmax(st[::-1]))
        series.last_time = float(np.frombuffer(last.times, F8)[j])
        series.last_value = f8_bytes(float(np.frombuffer(last.values, F8)[j]))
    return dropped
