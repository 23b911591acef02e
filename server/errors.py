"""Domain exceptions raised by the store and auth, and the one place that maps them to HTTP."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.wire import WireJSONResponse


class OptiscopeError(Exception):
    status_code = 400

    def __init__(self, detail: Any) -> None:
        super().__init__(detail)
        self.detail = detail


class RunNotFound(OptiscopeError):
    status_code = 404

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} not found")


class RunExists(OptiscopeError):
    status_code = 409


class NotAuthenticated(OptiscopeError):
    status_code = 401


class Forbidden(OptiscopeError):
    status_code = 403


class BodyTooLarge(OptiscopeError):
    status_code = 413


class InvalidBody(OptiscopeError):
    """422 with pydantic-style ``[{"loc", "msg", "type"}]`` details."""

    status_code = 422


def validation_details(
    exc: ValidationError, prefix: tuple[str | int, ...] = ("body",)
) -> list[dict[str, Any]]:
    """pydantic errors → JSON-safe details (``input``/``ctx`` may hold NaN or exceptions)."""
    return [
        {"loc": [*prefix, *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def install_handlers(app: FastAPI) -> None:
    def _domain(_req: Request, exc: Exception) -> WireJSONResponse:
        assert isinstance(exc, OptiscopeError)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, NotAuthenticated) else None
        return WireJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    def _request_validation(_req: Request, exc: Exception) -> WireJSONResponse:
        assert isinstance(exc, RequestValidationError)
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                   for e in exc.errors()]
        return WireJSONResponse({"detail": details}, status_code=422)

    def _db_error(_req: Request, exc: Exception) -> WireJSONResponse:
        assert isinstance(exc, DBAPIError)
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            return WireJSONResponse({"detail": f"database unavailable: {type(exc.orig).__name__}"},
                                    status_code=503)
        if isinstance(exc, DataError):  # a value the engine refuses (e.g. NUL in a query string)
            return WireJSONResponse({"detail": f"invalid value: {str(exc.orig).splitlines()[0]}"},
                                    status_code=422)
        raise exc

    def _http(_req: Request, exc: Exception) -> WireJSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return WireJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(OptiscopeError, _domain)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(DBAPIError, _db_error)
    app.add_exception_handler(StarletteHTTPException, _http)
