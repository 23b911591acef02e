"""Events and alerts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.models import Event, Run
from server.schemas import EventIn


def append_events(*, session: Session, run: Run, events: Sequence[EventIn], now: float) -> int:
    if not events:
        return 0
    session.execute(Event.__table__.insert(), [
        {"run_id": run.id, "kind": e.kind, "level": e.level, "key": e.key, "layer": e.layer, "step": e.step,
         "time": e.time if e.time is not None else now, "message": e.message, "data": e.data}
        for e in events
    ])
    run.alerts_count = (run.alerts_count or 0) + sum(1 for e in events if e.kind == "alert")
    return len(events)


def event_dict(e: Event) -> dict[str, Any]:
    return {"id": e.id, "kind": e.kind, "level": e.level, "key": e.key, "layer": e.layer, "step": e.step,
            "time": e.time, "message": e.message, "data": e.data}


def list_events(
    *, session: Session, run_id: str, kind: str | None = None, after_id: int | None = None, limit: int = 1000,
) -> list[dict[str, Any]]:
    stmt = select(Event).where(Event.run_id == run_id)
    if kind:
        stmt = stmt.where(Event.kind == kind)
    if after_id is not None:
        stmt = stmt.where(Event.id > after_id)
    return [event_dict(e) for e in session.scalars(stmt.order_by(Event.id).limit(limit))]
