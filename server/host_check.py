"""Refuse requests whose ``Host`` is not this server's own name (DNS-rebinding defence).

The rules live in :mod:`dashboard.host_policy` (shared with the standalone dashboard); this is the
ASGI middleware that applies them to the API and to anything mounted on the app (the dashboard),
because it runs before routing.

Starlette's ``TrustedHostMiddleware`` is not used: it splits ``[::1]:8000`` at the first colon and
would refuse IPv6 loopback, and it cannot accept "any IP literal" for wildcard binds.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from server.config import Settings
from dashboard.host_policy import REFUSAL, HostPolicy

class HostCheckMiddleware:
    """ASGI middleware answering 400 to HTTP/WebSocket requests with a foreign ``Host``."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.policy = HostPolicy(settings.host, settings.extra_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), None)
        if self.policy.allows(host):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"detail": REFUSAL}).encode()
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
