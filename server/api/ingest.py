"""The batched write endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server import store
from server.api.deps import RawBodyDep, SessionDep, WriteRunDep, writing
from server.api.openapi import json_body
from server.body import parse_model
from server.schemas import BatchIn
from server.wire import WireJSONResponse

router = APIRouter(tags=["ingest"])


@router.post("/runs/{run_id}/batches", openapi_extra=json_body(BatchIn))
def post_batch(request: Request, run: WriteRunDep, session: SessionDep, body: RawBodyDep) -> Response:
    """Validate the whole batch first (422 writes nothing), then write it in one transaction."""
    batch = parse_model(body, BatchIn)
    with writing(request, session):
        result = store.ingest_batch(session=session, run=run, batch=batch)
    return WireJSONResponse(result)
