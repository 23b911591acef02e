"""Request dependencies: session, settings, auth, the run being addressed, the raw body."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from server import store
from server.auth import Principal, verify_token
from server.body import read_body
from server.config import Settings
from server.errors import Forbidden, NotAuthenticated, RunNotFound
from server.models import Run


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        session.close()


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _authenticate(request: Request, session: Session) -> Principal:
    token = _bearer(request)
    if token is None:
        raise NotAuthenticated("missing token: send 'Authorization: Bearer <token>' "
                               "(see 'optiscope token create')")
    principal = verify_token(session=session, token=token)
    if principal is None:
        raise NotAuthenticated("invalid or revoked token")
    return principal


def require_writer(request: Request, session: SessionDep) -> Principal:
    return _authenticate(request, session)


def require_reader(request: Request, session: SessionDep, settings: SettingsDep) -> Principal | None:
    """The reader, or None for an anonymous read where reads are open (loopback).

    A token sent where reads are open still counts: a project-scoped token then sees only its
    project (the dashboard reads with the signed-in person's token), never more than anonymous
    reads would show. An unknown token there is read anonymously, as if none were sent.
    """
    if not settings.reads_need_token:
        token = _bearer(request)
        return verify_token(session=session, token=token) if token else None
    return _authenticate(request, session)


WriterDep = Annotated[Principal, Depends(require_writer)]
ReaderDep = Annotated[Principal | None, Depends(require_reader)]


def check_readable(session: Session, reader: Principal | None, run_id: str) -> Run:
    """The run, or 404 as for an unknown id when a project-scoped reader asks for another project's
    run (a 404 rather than a 403 does not confirm that the id exists)."""
    run = store.get_run(session=session, run_id=run_id)
    if reader is not None and reader.project is not None \
            and store.runs.project_name(session=session, run=run) != reader.project:
        raise RunNotFound(run_id)
    return run


def readable_run(run_id: str, reader: ReaderDep, session: SessionDep) -> Run:
    return check_readable(session, reader, run_id)


def writable_run(run_id: str, principal: WriterDep, session: SessionDep) -> Run:
    run = store.get_run(session=session, run_id=run_id)
    project = store.runs.project_name(session=session, run=run)
    if not principal.may_write(project):
        raise Forbidden(f"token is scoped to project {principal.project!r}, run {run_id!r} is in {project!r}")
    return run


ReadRunDep = Annotated[Run, Depends(readable_run)]
WriteRunDep = Annotated[Run, Depends(writable_run)]


async def raw_body(request: Request) -> bytes:
    return await read_body(request, request.app.state.settings.max_body_bytes)


RawBodyDep = Annotated[bytes, Depends(raw_body)]


@contextlib.contextmanager
def writing(request: Request, session: Session) -> Iterator[Session]:
    """Serialise writers on SQLite and start a fresh transaction under the lock.

    SQLite lets one writer in at a time; a transaction that read before another writer committed
    cannot be upgraded (SQLITE_BUSY without waiting), so the read snapshot is dropped first.
    """
    lock: threading.Lock | contextlib.nullcontext[None] = request.app.state.write_lock
    with lock:
        session.rollback()
        yield session
