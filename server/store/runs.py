"""Runs, projects and tags."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import orjson
from sqlalchemy import delete, func, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import IntegrityError, InvalidRequestError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import ObjectDeletedError

from server.db import utcnow
from server.errors import RunNotFound
from server.models import Project, Run, RunTag
from server.schemas import RunCreate, RunRead, RunUpdate
from server.store import damaged_rows

_MISSING = object()


def _project_id(session: Session, name: str) -> int:
    pid = session.scalar(select(Project.id).where(Project.name == name))
    if pid is not None:
        return pid
    try:
        with session.begin_nested():
            row = Project(name=name)
            session.add(row)
        return row.id
    except IntegrityError:  # created concurrently by another request
        return session.scalar(select(Project.id).where(Project.name == name))  # type: ignore[return-value]


def _set_tags(session: Session, run_id: str, tags: list[str]) -> list[str]:
    unique = list(dict.fromkeys(tags))
    session.execute(delete(RunTag).where(RunTag.run_id == run_id))
    if unique:
        session.add_all([RunTag(run_id=run_id, tag=t) for t in unique])
    return unique


def run_key(run: Run) -> str:
    """The run's id without loading anything: after ``writing()`` rolls back, every attribute is
    expired, and reading ``run.id`` would reload the row — an ``ObjectDeletedError`` (500) when
    another request or replica deleted it meanwhile, instead of the 404 it is."""
    identity = sa_inspect(run).identity
    return str(identity[0]) if identity else run.id


def lock_run(*, session: Session, run: Run) -> Run:
    """Reload ``run`` with its row locked (``SELECT ... FOR UPDATE`` on PostgreSQL) until commit.

    Every read-modify-write of a run (tags are delete-then-insert, summary is merged) goes through
    this, so concurrent PATCH/finish/ingest of one run queue instead of colliding on ``pk_run_tag``.
    A run deleted meanwhile is a 404, not a 500.
    """
    run_id = run_key(run)
    try:
        session.refresh(run, with_for_update=True)
    except (ObjectDeletedError, InvalidRequestError) as exc:
        session.rollback()
        raise RunNotFound(run_id) from exc
    return run


def get_run(*, session: Session, run_id: str) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise RunNotFound(run_id)
    return run


def project_name(*, session: Session, run: Run) -> str:
    return session.scalar(select(Project.name).where(Project.id == run.project_id)) or ""


def run_read(*, session: Session, run: Run, project: str | None = None) -> RunRead:
    """The API view of a run; one deleted (by another request) since it was loaded is a 404."""
    try:
        data = {c: getattr(run, c) for c in RunRead.model_fields if c != "project"}
    except ObjectDeletedError as exc:
        session.rollback()
        raise RunNotFound(run_key(run)) from exc
    data["project"] = project if project is not None else project_name(session=session, run=run)
    return damaged_rows.run_read(data)  # a row that breaks the schema is served flagged, not a 500


def create_run(*, session: Session, run_in: RunCreate) -> tuple[Run, bool]:
    """Create a run; an existing id returns the stored run and ``False`` (idempotent retries)."""
    if run_in.id is not None:
        existing = session.get(Run, run_in.id)
        if existing is not None:
            return existing, False
    run_id = run_in.id or uuid.uuid4().hex
    now = utcnow()
    run = Run(
        id=run_id, project_id=_project_id(session, run_in.project), name=run_in.name or f"run-{run_id[:8]}",
        status="running", config=run_in.config, tags=[], optimizer=run_in.optimizer, host=run_in.host,
        world_size=run_in.world_size, rank=run_in.rank, summary={}, created_at=now, updated_at=now,
        heartbeat_at=now, alerts_count=0,
    )
    session.add(run)
    run.tags = _set_tags(session, run_id, run_in.tags)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = session.get(Run, run_id)
        if existing is None:
            raise
        return existing, False
    return run, True


def update_run(*, session: Session, run: Run, run_in: RunUpdate) -> Run:
    """Apply a PATCH; concurrent PATCHes of one run are serialised on its row (last writer wins)."""
    lock_run(session=session, run=run)
    fields = run_in.model_dump(exclude_unset=True)
    for name in ("name", "config", "optimizer"):
        if name in fields and fields[name] is not None:
            setattr(run, name, fields[name])
    if fields.get("tags") is not None:
        run.tags = _set_tags(session, run.id, fields["tags"])
    if fields.get("summary") is not None:
        run.summary = {**(run.summary or {}), **fields["summary"]}
    if fields.get("status") is not None:
        run.status = fields["status"]
        run.finished_at = None if run.status == "running" else (run.finished_at or utcnow())
    run.updated_at = utcnow()
    session.commit()
    return run


def heartbeat(*, session: Session, run: Run, commit: bool = True) -> Run:
    """Record liveness; a run the reaper marked crashed comes back to life when it speaks again."""
    if commit:  # inside a batch the run row is locked already
        lock_run(session=session, run=run)
    now = utcnow()
    run.heartbeat_at = now
    run.updated_at = now
    if run.status == "crashed" and run.finished_at is None:
        run.status = "running"
    if commit:
        session.commit()
    return run


def finish_run(*, session: Session, run: Run, status: str) -> Run:
    lock_run(session=session, run=run)
    now = utcnow()
    run.status = status
    run.finished_at = now
    run.updated_at = now
    session.commit()
    return run


def delete_run(*, session: Session, run: Run) -> None:
    """Delete the run (its data goes with it: ``ON DELETE CASCADE``); one deleted concurrently is a 404."""
    run_id = run_key(run)
    result = session.execute(delete(Run).where(Run.id == run_id))
    session.commit()
    if run in session:
        session.expunge(run)
    if not result.rowcount:
        raise RunNotFound(run_id)


def reap_stale_runs(*, session: Session, timeout_s: float, now: dt.datetime | None = None) -> int:
    """Mark running runs with an old heartbeat as crashed (``finished_at`` stays NULL: reaped)."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=timeout_s)
    result = session.execute(
        update(Run).where(Run.status == "running", Run.heartbeat_at < cutoff)
        .values(status="crashed", updated_at=now)
    )
    session.commit()
    return int(result.rowcount or 0)


def _dotted(config: Any, dotted: str) -> Any:
    cur = config
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def _config_matches(config: dict[str, Any], filters: list[tuple[str, str]]) -> bool:
    for key, raw in filters:
        actual = _dotted(config, key)
        if actual is _MISSING:
            return False
        try:
            wanted: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            wanted = raw
        if actual == wanted or (isinstance(actual, str) and actual == raw) or str(actual) == raw:
            continue
        return False
    return True


def list_runs(
    *, session: Session, project: str | None = None, status: str | None = None, tags: list[str] | None = None,
    q: str | None = None, config: list[tuple[str, str]] | None = None, limit: int = 200, offset: int = 0,
    order: str = "created_at", descending: bool = True,
) -> tuple[list[tuple[Run, str]], int]:
    """Filtered runs with their project names, and the total count before paging."""
    stmt = select(Run, Project.name).join(Project, Project.id == Run.project_id)
    if project:
        stmt = stmt.where(Project.name == project)
    if status:
        stmt = stmt.where(Run.status == status)
    for tag in tags or []:
        stmt = stmt.where(Run.id.in_(select(RunTag.run_id).where(RunTag.tag == tag)))
    if q:
        stmt = stmt.where(func.lower(Run.name).contains(q.lower(), autoescape=True))
    column = {"created_at": Run.created_at, "updated_at": Run.updated_at, "name": Run.name,
              "last_step": Run.last_step}[order]
    stmt = stmt.order_by(column.desc() if descending else column.asc(), Run.id)
    if config:
        rows = [(r, p) for r, p in session.execute(stmt).all() if _config_matches(r.config or {}, config)]
        return rows[offset:offset + limit], len(rows)
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    rows = [(r, p) for r, p in session.execute(stmt.limit(limit).offset(offset)).all()]
    return rows, int(total)
