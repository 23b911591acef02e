"""A deadline for request headers: what uvicorn's own settings cannot do.

uvicorn closes *idle* keep-alive connections (``timeout_keep_alive``), but its timer is cancelled
by the first byte received, and nothing bounds how long the headers of a request may take: a
client sending one header byte every few seconds (slowloris) holds its connection forever. This
protocol arms a timer when a connection opens and after every response; if no new request has
got past its headers when it fires, the connection is closed. It also caps the bytes a request may
send before its headers end (httptools, unlike h11, has no such limit). Everything else is uvicorn's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Fast
except ImportError:  # httptools is optional in uvicorn
    _Fast = H11Protocol  # type: ignore[misc,assignment]


class _HeaderDeadline:
    """Mixin over a uvicorn HTTP protocol; ``header_timeout`` is set by :func:`protocol_class`."""

    header_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024
    cycle: Any
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        armed_for = self.cycle  # a request whose headers complete replaces this object
        self._armed_for = armed_for
        self._header_bytes = 0
        self._header_deadline = self.loop.call_later(self.header_timeout, self._header_deadline_passed,
                                                     armed_for)

    def _disarm_header_deadline(self) -> None:
        handle = getattr(self, "_header_deadline", None)
        if handle is not None:
            handle.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self, armed_for: Any) -> None:
        self._header_deadline = None
        if self.cycle is armed_for and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if getattr(self, "_header_deadline", None) is not None and self.cycle is self._armed_for:
            self._header_bytes += len(data)  # still no complete request: all of it was header bytes
            if self._header_bytes > self.max_header_bytes and not self.transport.is_closing():
                self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                     b"content-length: 0\r\nconnection: close\r\n\r\n")
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm_header_deadline()
        super().on_response_complete()  # type: ignore[misc]


def protocol_class(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's fastest HTTP/1.1 protocol with a ``header_timeout``-second header deadline."""
    return type("HeaderDeadlineProtocol", (_HeaderDeadline, _Fast), {"header_timeout": float(header_timeout)})
