"""Liveness plus which engine answers (the probe and dashboard show it)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy import text

from server.api.deps import SessionDep
from server.config import VERSION
from server.wire import WireJSONResponse

router = APIRouter(tags=["health"])


@router.get("/health")
def health(request: Request, session: SessionDep) -> Response:
    session.execute(text("SELECT 1"))
    dialect = request.app.state.engine.dialect.name
    return WireJSONResponse({"status": "ok", "version": VERSION,
                             "database": "postgresql" if dialect.startswith("postgres") else dialect})
