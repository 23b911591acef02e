"""422 for a NUL character anywhere in the URL path or query string, before any route runs.

SQLite's LIKE stops at NUL (``q=%00`` matched every run) and PostgreSQL text cannot hold it, so no
text parameter can mean anything with one. Checking once here covers every route, present and
future (and the mounted dashboard), instead of a pattern on each parameter.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote_to_bytes

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send


def nul_location(path: str, query: bytes) -> list[str] | None:
    """``["path"]`` or ``["query", name]`` of the first value holding NUL, else None."""
    if "\x00" in path:
        return ["path"]
    if b"%00" not in query.lower() and b"\x00" not in query:
        return None
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return ["query", name.replace("\x00", "\\x00")]
    return ["query"]


class NulCheckMiddleware:
    """Pure ASGI: the body is never touched (bodies are validated by the routes' models)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_path = scope.get("raw_path")
        path = unquote_to_bytes(raw_path).decode("latin-1") if raw_path else scope.get("path", "")
        loc = nul_location(path, scope.get("query_string", b""))
        if loc is None:
            await self.app(scope, receive, send)
            return
        body = orjson.dumps({"detail": [{"loc": loc, "msg": "NUL (\\x00) is not allowed in URLs",
                                         "type": "value_error"}]})
        await send({"type": "http.response.start", "status": 422,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
