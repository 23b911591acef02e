"""Export a run to NDJSON and import it back with byte-identical data.

Binary columns travel as base64 of the stored bytes, so values (NaN payloads included) come back
bit for bit; everything else is plain JSON with non-finite floats as their wire strings.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.errors import InvalidBody, RunExists, validation_details
from server.models import ArrayRecord, Event, Run, Series, SeriesChunk
from server.schemas import RunCreate, bounded_depth
from server.store.runs import _project_id, _set_tags, project_name
from server.wire import dumps

FORMAT = "optiscope-run/1"


def _b64(b: bytes | None) -> str | None:
    return None if b is None else base64.b64encode(b).decode()


def _unb64(s: str | None) -> bytes | None:
    return None if s is None else base64.b64decode(s)


def _iso(d: dt.datetime | None) -> str | None:
    return None if d is None else d.isoformat()


def export_run(*, session: Session, run: Run) -> Iterator[bytes]:
    """NDJSON lines: run, then series with their chunks, arrays, events."""
    run_obj = {c: getattr(run, c) for c in ("id", "name", "status", "config", "tags", "optimizer", "host",
                                             "world_size", "rank", "summary", "last_step", "alerts_count")}
    for c in ("created_at", "updated_at", "heartbeat_at", "finished_at"):
        run_obj[c] = _iso(getattr(run, c))
    run_obj["project"] = project_name(session=session, run=run)
    yield dumps({"type": "run", "format": FORMAT, "run": run_obj}) + b"\n"
    for s in session.scalars(select(Series).where(Series.run_id == run.id).order_by(Series.key)):
        yield dumps({"type": "series", "key": s.key, "count": s.count, "first_step": s.first_step,
                     "last_step": s.last_step, "first_time": s.first_time, "last_time": s.last_time,
                     "last_value": _b64(s.last_value), "n_chunks": s.n_chunks}) + b"\n"
        for c in session.scalars(select(SeriesChunk).where(SeriesChunk.series_id == s.id)
                                 .order_by(SeriesChunk.seq)):
            yield dumps({"type": "chunk", "key": s.key, "seq": c.seq, "n": c.n, "step_min": c.step_min,
                         "step_max": c.step_max, "time_min": c.time_min, "time_max": c.time_max,
                         "steps": _b64(c.steps), "times": _b64(c.times), "values": _b64(c.values)}) + b"\n"
    for a in session.scalars(select(ArrayRecord).where(ArrayRecord.run_id == run.id)
                             .order_by(ArrayRecord.key, ArrayRecord.layer, ArrayRecord.step)):
        yield dumps({"type": "array", "key": a.key, "layer": a.layer, "step": a.step, "time": a.time,
                     "shape": a.shape, "values": _b64(a.values)}) + b"\n"
    for e in session.scalars(select(Event).where(Event.run_id == run.id).order_by(Event.id)):
        yield dumps({"type": "event", "kind": e.kind, "level": e.level, "key": e.key, "layer": e.layer,
                     "step": e.step, "time": e.time, "message": e.message, "data": e.data}) + b"\n"


def _float(v: Any) -> float | None:
    return None if v is None else float(v)  # float("NaN"/"Infinity") parses the wire strings


def _dt(v: str | None) -> dt.datetime | None:
    return None if v is None else dt.datetime.fromisoformat(v)


def peek_project(data: bytes) -> str | None:
    """The project named in an export's header line (for the token-scope check), if readable."""
    first = data.split(b"\n", 1)[0]
    try:
        project = orjson.loads(first).get("run", {}).get("project")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return project if isinstance(project, str) else None


def import_run(*, session: Session, data: bytes) -> Run:
    """Recreate a run from ``export_run`` output; 409 if the run id exists, 422 if malformed."""
    lines = [ln for ln in data.splitlines() if ln.strip()]
    try:
        objs = [orjson.loads(ln) for ln in lines]
    except orjson.JSONDecodeError as exc:
        raise InvalidBody([{"loc": ["body"], "msg": f"not NDJSON: {exc}", "type": "json_invalid"}]) from exc
    if not objs or objs[0].get("type") != "run" or objs[0].get("format") != FORMAT:
        raise InvalidBody([{"loc": ["body", 0], "msg": f"first line must be the run header ({FORMAT})",
                            "type": "value_error"}])
    r = objs[0]["run"]
    try:
        RunCreate.model_validate({"id": r.get("id"), "project": r.get("project"), "name": r.get("name")})
    except ValidationError as exc:
        raise InvalidBody(validation_details(exc, ("body", 0, "run"))) from exc
    try:
        event_data = [o.get("data") or {} for o in objs[1:]
                      if isinstance(o, dict) and o.get("type") == "event"]
        for obj in (r.get("config") or {}, r.get("summary") or {}, *event_data):
            bounded_depth(obj)
    except ValueError as exc:
        raise InvalidBody([{"loc": ["body"], "msg": str(exc), "type": "value_error"}]) from exc
    if session.get(Run, r["id"]) is not None:
        raise RunExists(f"run {r['id']!r} exists already; delete it first")
    try:
        run = Run(id=r["id"], project_id=_project_id(session, r["project"]), name=r["name"],
                  status=r["status"],
                  config=r.get("config") or {}, tags=[], optimizer=r.get("optimizer"), host=r.get("host"),
                  world_size=r.get("world_size") or 1, rank=r.get("rank"), summary=r.get("summary") or {},
                  created_at=_dt(r["created_at"]), updated_at=_dt(r["updated_at"]),
                  heartbeat_at=_dt(r.get("heartbeat_at")), finished_at=_dt(r.get("finished_at")),
                  last_step=r.get("last_step"), alerts_count=r.get("alerts_count") or 0)
        session.add(run)
        run.tags = _set_tags(session, run.id, r.get("tags") or [])
        series: dict[str, Series] = {}
        chunks, arrays, events = [], [], []
        for i, o in enumerate(objs[1:], start=1):
            kind = o.get("type")
            if kind == "series":
                s = Series(run_id=run.id, key=o["key"], count=o["count"], first_step=o["first_step"],
                           last_step=o["last_step"], first_time=_float(o["first_time"]),
                           last_time=_float(o["last_time"]), last_value=_unb64(o["last_value"]),
                           n_chunks=o["n_chunks"])
                session.add(s)
                series[s.key] = s
            elif kind == "chunk":
                chunks.append(o)
            elif kind == "array":
                arrays.append({"run_id": run.id, "key": o["key"], "layer": o["layer"], "step": o["step"],
                               "time": _float(o["time"]), "shape": o["shape"], "values": _unb64(o["values"])})
            elif kind == "event":
                events.append({"run_id": run.id, **{k: o[k] for k in ("kind", "level", "key", "layer", "step",
                                                                      "message", "data")},
                               "time": _float(o["time"])})
            else:
                raise InvalidBody([{"loc": ["body", i, "type"], "msg": f"unknown record type {kind!r}",
                                    "type": "value_error"}])
        session.flush()
        if chunks:
            session.execute(SeriesChunk.__table__.insert(), [
                {"series_id": series[o["key"]].id, "seq": o["seq"], "n": o["n"], "step_min": o["step_min"],
                 "step_max": o["step_max"], "time_min": _float(o["time_min"]),
                 "time_max": _float(o["time_max"]),
                 "steps": _unb64(o["steps"]), "times": _unb64(o["times"]), "values": _unb64(o["values"])}
                for o in chunks])
        if arrays:
            session.execute(ArrayRecord.__table__.insert(), arrays)
        if events:
            session.execute(Event.__table__.insert(), events)
        session.commit()
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
        session.rollback()
        raise InvalidBody([{"loc": ["body"], "msg": f"malformed export record: {exc!r}",
                            "type": "value_error"}]) from exc
    except BaseException:
        session.rollback()
        raise
    return run
