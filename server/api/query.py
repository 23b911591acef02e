"""Read endpoints: series (downsampled), keys, latest, arrays, events, time-to-target."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from server import store
from server.api.deps import ReaderDep, ReadRunDep, SessionDep, check_readable
from server.errors import InvalidBody
from server.store.arrays import array_summary
from server.wire import WireJSONResponse

router = APIRouter(tags=["query"])
# Steps and ids are int64 in the database: larger query values are a 422, not an overflow.
Int64Query = Annotated[int | None, Query(ge=-(2**63), le=2**63 - 1)]


@router.get("/series")
def read_series(
    request: Request, reader: ReaderDep, session: SessionDep,
    run_id: Annotated[list[str], Query(min_length=1, max_length=50)],
    key: Annotated[list[str], Query(min_length=1, max_length=500)],
    x: Literal["step", "time"] = "step",
    points: Annotated[int, Query(ge=2, le=20000)] = 2000,
    x_min: float | None = None,
    x_max: float | None = None,
    after_step: Int64Query = None,
) -> Response:
    for rid in dict.fromkeys(run_id):
        check_readable(session, reader, rid)
    series = store.read_series(session=session, run_ids=list(dict.fromkeys(run_id)),
                               keys=list(dict.fromkeys(key)), x=x, points=points, x_min=x_min, x_max=x_max,
                               after_step=after_step, cache=request.app.state.series_cache)
    return WireJSONResponse({"series": series})


@router.get("/runs/{run_id}/keys")
def list_keys(run: ReadRunDep, session: SessionDep) -> Response:
    return WireJSONResponse({"scalars": store.list_keys(session=session, run_id=run.id),
                             "arrays": array_summary(session=session, run_id=run.id)})


@router.get("/runs/{run_id}/latest")
def read_latest(run: ReadRunDep, session: SessionDep,
                key: Annotated[list[str] | None, Query()] = None) -> Response:
    return WireJSONResponse(store.read_latest(session=session, run_id=run.id, keys=key))


@router.get("/runs/{run_id}/arrays")
def read_arrays(
    run: ReadRunDep, session: SessionDep,
    key: str | None = None,
    layer: str | None = None,
    step_min: Int64Query = None,
    step_max: Int64Query = None,
    max_steps: Annotated[int, Query(ge=1, le=10000)] = 200,
    at_step: Int64Query = None,
) -> Response:
    records, total = store.read_arrays(session=session, run_id=run.id, key=key, layer=layer,
                                       step_min=step_min, step_max=step_max, max_steps=max_steps,
                                       at_step=at_step)
    return WireJSONResponse({"records": records, "total": total})


@router.get("/runs/{run_id}/events")
def list_events(
    run: ReadRunDep, session: SessionDep,
    kind: str | None = None,
    after_id: Int64Query = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> Response:
    data = store.list_events(session=session, run_id=run.id, kind=kind, after_id=after_id, limit=limit)
    return WireJSONResponse({"data": data, "count": len(data)})


@router.get("/time-to-target")
def time_to_target(
    reader: ReaderDep, session: SessionDep,
    run_id: Annotated[list[str], Query(min_length=1, max_length=50)],
    key: str,
    target: float,
    direction: Literal["below", "above"] = "below",
    baseline: str | None = None,
) -> Response:
    if math.isnan(target):
        raise InvalidBody([{"loc": ["query", "target"], "msg": "target must be a number, not NaN",
                            "type": "value_error"}])
    ids = list(dict.fromkeys(run_id))
    base = baseline or ids[0]
    if base not in ids:
        ids.append(base)
    runs = []
    for rid in ids:
        runs.append((rid, check_readable(session, reader, rid).name))
    rows = store.time_to_target(session=session, runs=runs, key=key, target=target, direction=direction,
                                baseline=base)
    return WireJSONResponse({"key": key, "target": target, "direction": direction, "baseline": base,
                             "rows": rows})
