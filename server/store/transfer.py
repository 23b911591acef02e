"""Export a run to NDJSON and import it back with byte-identical data.

Binary columns travel as base64 of the stored bytes, so values (NaN payloads included) come back
bit for bit; everything else is plain JSON with non-finite floats as their wire strings. An import
validates the whole file (``server.export_format``) before it writes anything.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.errors import InvalidBody, RunExists, validation_details
from server.export_format import (
    BODY_LINES, FORMAT, ArrayLine, ChunkLine, EventLine, RunLine, RunRecord, SeriesLine,
)
from server.models import ArrayRecord, Event, Run, Series, SeriesChunk
from server.store.runs import _project_id, _set_tags, project_name
from server.wire import dumps


def _b64(b: bytes | None) -> str | None:
    return None if b is None else base64.b64encode(b).decode()


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


@dataclass
class ParsedExport:
    """A whole export file, every line validated (nothing here has touched the database)."""

    run: RunRecord
    series: list[SeriesLine] = field(default_factory=list)
    chunks: list[ChunkLine] = field(default_factory=list)
    arrays: list[ArrayLine] = field(default_factory=list)
    events: list[EventLine] = field(default_factory=list)

    @property
    def project(self) -> str:
        return self.run.project


MAX_REPORTED_ERRORS = 20


def _error(line: int, loc: tuple[Any, ...], msg: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": ["body", f"line {line}", *loc], "msg": f"line {line}: {msg}", "type": kind}


def parse_export(data: bytes) -> ParsedExport:
    """Validate every line of an export with the ingest rules; 422 naming line and field.

    Blank and whitespace-only lines and CRLF endings are allowed anywhere; line numbers in
    errors count every physical line from 1.
    """
    errors: list[dict[str, Any]] = []
    header: RunRecord | None = None
    parsed: dict[str, list[Any]] = {kind: [] for kind in BODY_LINES}
    where: dict[int, int] = {}  # id(parsed line) -> its line number, for the cross-line checks
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if len(errors) >= MAX_REPORTED_ERRORS:
            break
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            errors.append(_error(number, (), f"not JSON: {exc}", "json_invalid"))
            continue
        if not isinstance(obj, dict):
            errors.append(_error(number, (), f"expected a JSON object, got {type(obj).__name__}", "type_error"))
            continue
        kind = obj.get("type")
        if header is None:
            if kind != "run":
                errors.append(_error(number, ("type",), f"the first line must be the run header ({FORMAT})"))
                break
            try:
                header = RunLine.model_validate(obj).run
            except ValidationError as exc:
                errors.extend(_error(number, tuple(e["loc"]), f"{'.'.join(map(str, e['loc']))}: {e['msg']}",
                                     e["type"]) for e in validation_details(exc, ()))
                break
            continue
        model = BODY_LINES.get(kind) if isinstance(kind, str) else None
        if model is None:
            errors.append(_error(number, ("type",), f"unknown record type {kind!r}"))
            continue
        try:
            line = model.model_validate(obj)
        except ValidationError as exc:
            errors.extend(_error(number, tuple(e["loc"]), f"{'.'.join(map(str, e['loc']))}: {e['msg']}",
                                 e["type"]) for e in validation_details(exc, ()))
            continue
        parsed[kind].append(line)
        where[id(line)] = number
    if header is None and not errors:
        errors.append({"loc": ["body"], "msg": f"empty import: the first line must be the run header ({FORMAT})",
                       "type": "missing"})
    if not errors and header is not None:
        errors = _cross_check(parsed, where)
    if errors:
        raise InvalidBody(errors[:MAX_REPORTED_ERRORS])
    assert header is not None
    return ParsedExport(run=header, series=parsed["series"], chunks=parsed["chunk"], arrays=parsed["array"],
                        events=parsed["event"])


def _cross_check(parsed: dict[str, list[Any]], where: dict[int, int]) -> list[dict[str, Any]]:
    """What no single line can check: unique keys, chunks that belong to a series and add up."""
    errors: list[dict[str, Any]] = []
    series: dict[str, SeriesLine] = {}
    for s in parsed["series"]:
        if s.key in series:
            errors.append(_error(where[id(s)], ("key",), f"series {s.key!r} appears twice"))
        series[s.key] = s
    seqs: dict[str, list[int]] = {k: [] for k in series}
    points: dict[str, int] = dict.fromkeys(series, 0)
    for c in parsed["chunk"]:
        if c.key not in series:
            errors.append(_error(where[id(c)], ("key",), f"chunk of series {c.key!r}, which has no series line"))
            continue
        seqs[c.key].append(c.seq)
        points[c.key] += c.n
    for key, s in series.items():
        if sorted(seqs[key]) != list(range(s.n_chunks)):
            errors.append(_error(where[id(s)], ("n_chunks",),
                                 f"series {key!r} says n_chunks={s.n_chunks}, its chunks have seq "
                                 f"{sorted(seqs[key])[:10]}"))
        elif points[key] != s.count:
            errors.append(_error(where[id(s)], ("count",),
                                 f"series {key!r} says count={s.count}, its chunks hold {points[key]} points"))
    seen: set[tuple[str, str, int]] = set()
    for a in parsed["array"]:
        ident = (a.key, a.layer, a.step)
        if ident in seen:
            errors.append(_error(where[id(a)], ("step",),
                                 f"array {a.key!r}/{a.layer!r} at step {a.step} appears twice"))
        seen.add(ident)
    return errors


def import_run(*, session: Session, data: bytes | ParsedExport) -> Run:
    """Recreate a run from ``export_run`` output (raw bytes, or already parsed by
    :func:`parse_export`); 409 if the run id exists, 422 if any line is malformed. Nothing is
    written unless the whole file is valid."""
    parsed = data if isinstance(data, ParsedExport) else parse_export(data)
    r = parsed.run
    if session.get(Run, r.id) is not None:
        raise RunExists(f"run {r.id!r} exists already; delete it first")
    try:
        run = Run(id=r.id, project_id=_project_id(session, r.project), name=r.name, status=r.status,
                  config=r.config, tags=[], optimizer=r.optimizer, host=r.host, world_size=r.world_size,
                  rank=r.rank, summary=r.summary, created_at=r.created_at, updated_at=r.updated_at,
                  heartbeat_at=r.heartbeat_at, finished_at=r.finished_at, last_step=r.last_step,
                  alerts_count=r.alerts_count)
        session.add(run)
        run.tags = _set_tags(session, run.id, r.tags)
        series: dict[str, Series] = {}
        for s in parsed.series:
            row = Series(run_id=run.id, key=s.key, count=s.count, first_step=s.first_step,
                         last_step=s.last_step, first_time=s.first_time, last_time=s.last_time,
                         last_value=s.last_value, n_chunks=s.n_chunks)
            session.add(row)
            series[s.key] = row
        session.flush()
        if parsed.chunks:
            session.execute(SeriesChunk.__table__.insert(), [
                {"series_id": series[c.key].id, "seq": c.seq, "n": c.n, "step_min": c.step_min,
                 "step_max": c.step_max, "time_min": c.time_min, "time_max": c.time_max,
                 "ordered": _ordered(c.steps), "steps": c.steps, "times": c.times, "values": c.values}
                for c in parsed.chunks])
        if parsed.arrays:
            session.execute(ArrayRecord.__table__.insert(), [
                {"run_id": run.id, "key": a.key, "layer": a.layer, "step": a.step, "time": a.time,
                 "shape": a.shape, "values": a.values} for a in parsed.arrays])
        if parsed.events:
            session.execute(Event.__table__.insert(), [
                {"run_id": run.id, "kind": e.kind, "level": e.level, "key": e.key, "layer": e.layer,
                 "step": e.step, "time": e.time, "message": e.message, "data": e.data}
                for e in parsed.events])
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return run


def _ordered(steps: bytes) -> bool:
    st = np.frombuffer(steps, "<i8")
    return bool(len(st) < 2 or (st[1:] >= st[:-1]).all())
