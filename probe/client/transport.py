"""HTTP to the server: one place that knows status codes, retries and compression.

Failures come out as exactly two exception types, because the caller only has two choices:

* :class:`TransientError` (connection refused, timeout, 429, 5xx): the server may well take the
  same request later, so the sender keeps the data (spool) and tries again with backoff.
* :class:`PermanentError` (any other 4xx): resending the same bytes cannot help; the sender
  reports it once, clearly, instead of hammering the server.

The ``httpx.Client`` is injectable: tests pass ``fastapi.testclient.TestClient(app)`` (an
``httpx.Client``) to talk to the real server in-process, or one built on ``httpx.MockTransport``
to script failures. ``sleep`` and ``rng`` are injectable so retry tests take no wall time.
"""

from __future__ import annotations

import gzip
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import httpx

from probe.client import protocol

GZIP_MIN_BYTES = 1024
"""Smaller bodies are sent plain: gzip's header and CPU cost outweigh the saving."""

_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(api: str) -> bool:
    """Whether ``api`` names this machine (``localhost``, ``127.x.x.x``, ``::1``).

    Why it matters: over loopback the bytes cost nothing, but gzip costs both ends CPU. Metric JSON
    (steps, floats) shrinks only ≈3× at level 1, and compressing plus inflating a 20,000-point batch
    took ≈20 ms of the ≈60 ms it costs end to end on a 2-core machine, on cores the training and the
    server share.
    """
    host = (httpx.URL(api).host or "").lower()
    return host in _LOOPBACK_HOSTS or host.startswith("127.")

RETRY_AFTER_MAX = 60.0
"""A server's ``Retry-After`` is honoured up to this many seconds, so a typo cannot park a run."""


Encoded = tuple[bytes | None, dict[str, str]]
"""A request body as sent: the (possibly gzipped) bytes and their headers."""


class TransportError(Exception):
    """Base class of everything :class:`Transport` raises."""


class TransientError(TransportError):
    """The request may succeed later (network down, timeout, 429, 5xx)."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class PermanentError(TransportError):
    """The server refused the request (4xx other than 429); resending it is pointless."""

    def __init__(self, message: str, *, status: int, detail: Any = None):
        super().__init__(message)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with "equal jitter": half the delay is fixed, half random.

    The fixed half guarantees the server a breather; the random half keeps many clients (or the
    ranks of one job) from retrying in lockstep after a restart.
    """

    base: float = 0.25
    maximum: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Delay before retry number ``attempt`` (0-based)."""
        ceiling = min(self.maximum, self.base * (2.0 ** min(attempt, 32)))
        return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, min(RETRY_AFTER_MAX, float(value)))
    except ValueError:
        return None  # an HTTP date: rare from our server; plain backoff is fine


def _detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    return body.get("detail", body) if isinstance(body, dict) else body


class Transport:
    """Synchronous JSON-over-HTTP calls to ``/api/v1`` with retries.

    Args:
        api: API root, e.g. ``http://127.0.0.1:8000/api/v1``.
        token: bearer token or ``None``.
        client: an ``httpx.Client`` to use (not closed by :meth:`close`); a private one otherwise.
        timeout: seconds per request for the private client.
        max_attempts: tries per call before giving up with :class:`TransientError`.
        backoff: delays between tries.
        sleep: how to wait between tries (tests pass a recorder).
        rng: jitter source; a private ``random.Random`` (never the global RNG).
        compress: gzip bodies of at least :data:`GZIP_MIN_BYTES`; ``None`` (default) compresses
            unless ``api`` is a loopback address (see :func:`is_loopback`).
    """

    def __init__(
        self,
        api: str,
        token: str | None = None,
        *,
        client: httpx.Client | None = None,
        timeout: float = 10.0,
        max_attempts: int = 3,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        compress: bool | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"Invalid max_attempts: {max_attempts} (must be >= 1)")
        self.api = api.rstrip("/")
        self.compress = not is_loopback(self.api) if compress is None else compress
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout)
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.max_attempts = max_attempts
        self.backoff = backoff or Backoff()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.requests = 0
        """HTTP requests issued (retries included); the benchmark and tests read it."""

    # -- the API calls the client needs ------------------------------------------------------------

    def create_run(self, body: protocol.RunCreate, *, attempts: int | None = None,
                   timeout: float | None = None, cancel: threading.Event | None = None) -> dict[str, Any]:
        """``POST /runs``: idempotent on the client-chosen id (200 if it exists already).

        ``timeout`` and ``cancel`` (here and below): as for :meth:`request`."""
        return self.request("POST", "/runs", body, attempts=attempts, timeout=timeout, cancel=cancel)

    def send_batch(self, run_id: str, batch: protocol.Batch, *, attempts: int | None = None,
                   encoded: Encoded | None = None, timeout: float | None = None,
                   cancel: threading.Event | None = None) -> dict[str, Any]:
        """``POST /runs/{id}/batches``; a resent ``batch_id`` is answered ``{"duplicate": true}``.

        ``encoded``: ``batch`` already passed through :meth:`encode` (the sender encodes the next batch
        while this one is in flight)."""
        return self.request("POST", f"/runs/{run_id}/batches", batch, attempts=attempts, encoded=encoded,
                            timeout=timeout, cancel=cancel)

    def heartbeat(self, run_id: str, *, attempts: int | None = None, timeout: float | None = None,
                  cancel: threading.Event | None = None) -> dict[str, Any]:
        return self.request("POST", f"/runs/{run_id}/heartbeat", None, attempts=attempts, timeout=timeout,
                            cancel=cancel)

    def finish(self, run_id: str, status: protocol.Status, *, attempts: int | None = None,
               timeout: float | None = None, cancel: threading.Event | None = None) -> dict[str, Any]:
        return self.request("POST", f"/runs/{run_id}/finish", {"status": status}, attempts=attempts,
                            timeout=timeout, cancel=cancel)

    def get(self, path: str, params: Any = None) -> Any:
        """A GET with the same error mapping (used by ``optiscope sync`` and tests)."""
        return self._once("GET", path, None, params)

    # -- machinery ----------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any, *, attempts: int | None = None,
                encoded: Encoded | None = None, timeout: float | None = None,
                cancel: threading.Event | None = None) -> Any:
        """Send ``body`` (wire-encoded JSON) and return the decoded answer.

        Retries transient failures up to ``attempts`` (default ``max_attempts``) times, waiting
        ``backoff`` (or the server's ``Retry-After``) in between. Raises :class:`TransientError`
        after the last try and :class:`PermanentError` at once. ``encoded`` is ``encode(body)``
        when the caller made it ahead of time.

        ``timeout``: seconds for this call's tries instead of the client's own (the end of a run has
        less time than a request normally gets). ``cancel``: once set, no further try is made and the
        wait between tries ends at once: a run being terminated must not sit out ``max_attempts``
        tries and their backoff (tens of seconds against a server that stopped answering).
        """
        content, headers = encoded if encoded is not None else self.encode(body)
        tries = self.max_attempts if attempts is None else max(1, attempts)
        for attempt in range(tries):
            try:
                return self._send(method, path, content, headers, None, timeout)
            except TransientError as exc:
                if attempt + 1 >= tries or (cancel is not None and cancel.is_set()):
                    raise
                delay = self.backoff.delay(attempt, self._rng)
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                if cancel is None:
                    self._sleep(delay)
                elif cancel.wait(delay):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(self, method: str, path: str, body: Any, params: Any) -> Any:
        content, headers = self.encode(body)
        return self._send(method, path, content, headers, params)

    def encode(self, body: Any) -> Encoded:
        """The bytes and headers :meth:`request` would send for ``body`` (thread-safe: no state)."""
        headers = dict(self._headers)
        if body is None:
            return None, headers
        content = protocol.dumps(body)
        headers["Content-Type"] = "application/json"
        if self.compress and len(content) >= GZIP_MIN_BYTES:
            # Level 1: ~5x smaller for metric JSON at a fraction of level 9's CPU.
            content = gzip.compress(content, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        return content, headers

    def _send(self, method: str, path: str, content: bytes | None, headers: dict[str, str], params: Any,
              timeout: float | None = None) -> Any:
        self.requests += 1
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            response = self._client.request(method, self.api + path, content=content, headers=headers,
                                            params=params, **extra)
        except (httpx.TransportError, OSError) as exc:  # connect errors, timeouts, resets
            raise TransientError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if status < 300:
            if status == 204 or not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                return response.text
        if status == 429 or status >= 500:
            raise TransientError(
                f"{method} {path}: HTTP {status}", status=status, retry_after=_retry_after(response)
            )
        detail = _detail(response)
        raise PermanentError(f"{method} {path}: HTTP {status}: {detail}", status=status, detail=detail)

    def close(self) -> None:
        """Close the private client (an injected one belongs to the caller)."""
        if self._owns_client:
            self._client.close()
