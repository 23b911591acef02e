"""Run lifecycle: create, list, get, update, delete, heartbeat, finish, export/import."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session

from server import store
from server.api.deps import ReaderDep, ReadRunDep, SessionDep, WriterDep, WriteRunDep, RawBodyDep, writing
from server.api.openapi import json_body
from server.body import parse_model
from server.errors import Forbidden, InvalidBody
from server.models import Run
from server.store import run_query
from server.schemas import RunCreate, RunFinish, RunUpdate
from server.store.resume import resume_run
from server.wire import WireJSONResponse

router = APIRouter(tags=["runs"])


def _run_response(session: Session, run: Run, status_code: int = 200) -> WireJSONResponse:
    read = store.run_read(session=session, run=run)
    return WireJSONResponse(read.model_dump(), status_code=status_code)


@router.post("/runs", status_code=201, openapi_extra=json_body(RunCreate))
def create_run(request: Request, principal: WriterDep, session: SessionDep, body: RawBodyDep) -> Response:
    run_in = parse_model(body, RunCreate)
    if not principal.may_write(run_in.project):
        raise Forbidden(f"token is scoped to project {principal.project!r}, not {run_in.project!r}")
    with writing(request, session):
        run, created = store.create_run(session=session, run_in=run_in)
        if not created and not principal.may_write(store.runs.project_name(session=session, run=run)):
            raise Forbidden(f"run {run.id!r} belongs to another project")
        if not created and run_in.resume is not None:
            resume_run(session=session, run=run, resume=run_in.resume, config=run_in.config)
    return _run_response(session, run, 201 if created else 200)


def _config_filter(raw: str) -> tuple[str, str]:
    key, sep, value = raw.partition("=")
    if not sep or not key:
        raise InvalidBody([{"loc": ["query", "config"], "msg": f"expected 'key=value', got {raw!r}",
                            "type": "value_error"}])
    return key.strip(), value


MAX_ID_FILTER = 200  # ``id=`` values in one GET /runs: under SQLite's bound-parameter limit with room


@router.get("/runs")
def list_runs(
    reader: ReaderDep, session: SessionDep,
    project: str | None = None,
    status: Literal["running", "finished", "crashed"] | None = None,
    tag: Annotated[list[str] | None, Query()] = None,
    q: str | None = None,
    id: Annotated[list[str] | None, Query()] = None,
    config: Annotated[list[str] | None, Query()] = None,
    filter: Annotated[list[str] | None, Query()] = None,
    sort: str | None = None,
    updated_since: dt.datetime | None = None,
    facets: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    order: Literal["created_at", "-created_at", "updated_at", "-updated_at", "name", "-name", "last_step",
                   "-last_step"] = "created_at",
    descending: bool = True,
) -> Response:
    """Runs, newest first by default, filtered, sorted and paged in SQL (``server.store.run_query``).

    ``filter=lr>=0.01`` (repeatable; ``config=key=value`` is ``filter=config.key=value``),
    ``sort=-summary.loss`` (any run column, config key or summary metric; overrides ``order``),
    ``id=a&id=b`` (only those runs, at most ``MAX_ID_FILTER``), ``updated_since`` (ISO time: only runs
    changed since, plus ``changed`` and ``as_of``), ``facets=true`` (adds projects, tags and
    config/summary keys).
    """
    if id is not None and len(id) > MAX_ID_FILTER:
        raise InvalidBody([{"loc": ["query", "id"], "type": "too_long",
                            "msg": f"at most {MAX_ID_FILTER} id= values in one request, got {len(id)}"}])
    if reader is not None and reader.project is not None:  # a scoped token lists only its project
        if project is not None and project != reader.project:
            return WireJSONResponse({"data": [], "count": 0})
        project = reader.project
    try:
        conditions = [run_query.parse_condition(f) for f in filter or []]
        for raw in config or []:
            key, value = _config_filter(raw)
            conditions.append(run_query.Condition(f"config.{key}" if not key.startswith("config.") else key,
                                                  "=", value))
        if sort is None:
            column = order.lstrip("-")
            sort = f"-{column}" if (order.startswith("-") or descending) else column
        run_query.parse_sort(sort)
        query = run_query.RunQuery(project=project, status=status, tags=tuple(tag or ()), q=q, ids=tuple(id or ()),
                                   filters=conditions,
                                   sort=sort, limit=limit, offset=offset, updated_since=updated_since)
        as_of = dt.datetime.now(dt.timezone.utc)  # before the query: a run changed during it is seen next time
        rows, count, changed = run_query.query_runs(session, query)
    except run_query.QueryError as exc:
        raise InvalidBody([{"loc": ["query", exc.field], "msg": str(exc), "type": "value_error"}]) from None
    data = [store.run_read(session=session, run=r, project=p).model_dump() for r, p in rows]
    body: dict[str, object] = {"data": data, "count": count}
    if updated_since is not None:
        body["changed"] = changed
        body["as_of"] = as_of.isoformat()  # the next refresh's updated_since
    if facets:
        body["facets"] = run_query.facets(session, project=project)
    return WireJSONResponse(body)


@router.get("/runs/{run_id}")
def get_run(run: ReadRunDep, session: SessionDep) -> Response:
    return _run_response(session, run)


@router.patch("/runs/{run_id}", openapi_extra=json_body(RunUpdate))
def update_run(request: Request, run: WriteRunDep, session: SessionDep, body: RawBodyDep) -> Response:
    run_in = parse_model(body, RunUpdate)
    with writing(request, session):
        store.update_run(session=session, run=run, run_in=run_in)
    return _run_response(session, run)


@router.delete("/runs/{run_id}", status_code=204)
def delete_run(request: Request, run: WriteRunDep, session: SessionDep) -> Response:
    with writing(request, session):
        store.delete_run(session=session, run=run)
    return Response(status_code=204)


@router.post("/runs/{run_id}/heartbeat")
def heartbeat(request: Request, run: WriteRunDep, session: SessionDep) -> Response:
    with writing(request, session):
        store.heartbeat(session=session, run=run)
    return _run_response(session, run)


@router.post("/runs/{run_id}/finish")
def finish_run(request: Request, run: WriteRunDep, session: SessionDep, body: RawBodyDep) -> Response:
    fin = parse_model(body, RunFinish) if body.strip() else RunFinish()
    with writing(request, session):
        store.finish_run(session=session, run=run, status=fin.status)
    return _run_response(session, run)


@router.get("/runs/{run_id}/export")
def export_run(run: ReadRunDep, session: SessionDep) -> Response:
    data = b"".join(store.export_run(session=session, run=run))
    return Response(data, media_type="application/x-ndjson",
                    headers={"Content-Disposition": f'attachment; filename="{run.id}.ndjson"'})


@router.post("/runs/import", status_code=201)
def import_run(request: Request, principal: WriterDep, session: SessionDep, body: RawBodyDep) -> Response:
    # The whole file is validated first; the scope check uses the project it actually names.
    parsed = store.transfer.parse_export(body)
    if not principal.may_write(parsed.project):
        raise Forbidden(f"token is scoped to project {principal.project!r}, not {parsed.project!r}")
    with writing(request, session):
        run = store.import_run(session=session, data=parsed)
    return _run_response(session, run, 201)

