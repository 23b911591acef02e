"""The ``/api/v1`` router: one module per resource."""

from fastapi import APIRouter

from server.api import analysis, health, ingest, query, runs, series_csv, whoami

api_router = APIRouter()
for _module in (health, runs, ingest, query, series_csv, whoami, analysis):
    api_router.include_router(_module.router)

__all__ = ["api_router"]
