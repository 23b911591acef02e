"""Read endpoints: series (downsampled), keys, latest, arrays, events, time-to-target."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

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
    request: Request, run: ReadRunDep, session: SessionDep,
    key: str | None = None,
    layer: str | None = None,
    step_min: Int64Query = None,
    step_max: Int64Query = None,
    max_steps: Annotated[int, Query(ge=1, le=10000)] = 200,
    at_step: Int64Query = None,
    max_values: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    """Array records, streamed. One read returns at most ``max_values`` float values (default
    and ceiling: the server's ``OPTISCOPE_MAX_ARRAY_READ_VALUES``); a larger read is a 422 that
    names the limit and a ``step_max`` that fits, so a client pages by step range."""
    limit = request.app.state.settings.max_array_read_values
    if max_values is not None and max_values > limit:
        raise InvalidBody([{"loc": ["query", "max_values"], "type": "less_than_equal",
                            "msg": f"max_values may be at most {limit} (OPTISCOPE_MAX_ARRAY_READ_VALUES)"}])
    cap = max_values or limit
    plan = store.plan_array_read(session=session, run_id=run.id, key=key, layer=layer, step_min=step_min,
                                 step_max=step_max, max_steps=max_steps, at_step=at_step)
    if plan.values > cap:
        fits = plan.fitting_step_max(cap)
        hint = (f"page by step range: step_max={fits} fits, then step_min={fits + 1}" if fits is not None
                else "one step alone holds more: filter by key and layer")
        raise InvalidBody([{"loc": ["query", "max_values"], "type": "read_too_large",
                            "msg": f"this read would return {plan.values} values in {len(plan.ids)} records, "
                                   f"more than max_values={cap}; {hint}, or lower max_steps",
                            "limit": cap, "values": plan.values, "step_max_that_fits": fits}])
    session.close()  # the stream reads with its own session, outside the request's dependencies
    return StreamingResponse(_array_stream(request, plan), media_type="application/json")


def _array_stream(request: Request, plan: store.arrays.ArrayReadPlan) -> Iterator[bytes]:
    session = request.app.state.sessionmaker()
    try:
        yield from store.stream_array_records(session=session, plan=plan, gate=request.app.state.array_reads)
    finally:
        session.close()


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
