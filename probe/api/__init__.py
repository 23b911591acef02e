"""Read-side client for notebooks and scripts: ``probe.Api`` (runs, history, arrays, compare)."""

from probe.api.client import Api, ApiRun
from probe.api.http import ApiError

__all__ = ["Api", "ApiRun", "ApiError"]
