"""Refuse requests whose ``Host`` is not this server's own name (DNS-rebinding defence).

A page on ``attacker.example`` whose DNS name is re-pointed at 127.0.0.1 makes the victim's browser
talk to the loopback server *same-origin* — but the browser still sends ``Host: attacker.example``.
Answering only the bound address, the loopback names and configured names closes that door for
the API and for anything mounted on the app (the dashboard), because this runs before routing.

Starlette's ``TrustedHostMiddleware`` is not used: it splits ``[::1]:8000`` at the first colon and
would refuse IPv6 loopback, and it cannot accept "any IP literal" for wildcard binds.
"""

from __future__ import annotations

import ipaddress
import socket

from starlette.types import ASGIApp, Receive, Scope, Send

from server.config import Settings

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})


def host_name(header: str) -> str:
    """The name part of a ``Host`` header: lower-case, port and IPv6 brackets removed."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value  # a bare name, or a bare IPv6 literal without brackets


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostPolicy:
    """Which ``Host`` names one server answers."""

    def __init__(self, settings: Settings) -> None:
        bind = settings.host.strip("[]").lower()
        self.any_host = "*" in settings.extra_hosts
        self.wildcard = bind in WILDCARD_BINDS
        names = set(LOOPBACK_HOSTS) | {host_name(h) for h in settings.extra_hosts} | {bind}
        if self.wildcard:  # bound everywhere: the machine's own names are its addresses too
            hostname = socket.gethostname().lower()
            names |= {hostname, hostname.split(".")[0]}
        self.names = frozenset(n for n in names if n)

    def allows(self, header: str | None) -> bool:
        if self.any_host:
            return True
        if not header:
            return False
        name = host_name(header)
        if name in self.names:
            return True
        # Bound to a wildcard address, any IP literal is one of ours (or routed to us): rebinding
        # needs a DNS *name*, so an IP literal cannot be an attacker's origin.
        return self.wildcard and _is_ip(name)


class HostCheckMiddleware:
    """ASGI middleware answering 400 to HTTP/WebSocket requests with a foreign ``Host``."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.policy = HostPolicy(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), None)
        if self.policy.allows(host):
            await self.app(scope, receive, send)
            return
        body = (b'{"detail":"invalid Host header: this server answers only its own address, localhost '
                b'and the names in OPTISCOPE_ALLOWED_HOSTS"}')
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
