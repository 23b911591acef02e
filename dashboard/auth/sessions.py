"""Server-side sign-ins: session id -> the person's API token, with an absolute expiry.

The token never goes into the cookie (a signed cookie is readable by whoever holds it, and would
outlive a logout); only the random session id does. In memory on purpose: a restart signs everyone
out, and nothing secret is written to disk.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SignIn:
    """One signed-in person: their token, what the server says it is, and when it stops counting."""

    token: str
    token_id: int | None
    project: str | None  # the token's project scope (None: every project)
    expires_at: float  # monotonic clock


class SessionStore:
    """Thread-safe map of session ids to :class:`SignIn`; expired entries are dropped when seen."""

    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, SignIn] = {}

    def create(self, token: str, *, token_id: int | None, project: str | None) -> str:
        """Store a sign-in; returns its new, unguessable session id."""
        sid = secrets.token_urlsafe(32)
        entry = SignIn(token=token, token_id=token_id, project=project, expires_at=self._clock() + self.ttl_s)
        with self._lock:
            self._prune()
            self._entries[sid] = entry
        return sid

    def get(self, sid: str | None) -> SignIn | None:
        """The live sign-in for ``sid``, or None (unknown, logged out or expired)."""
        if not sid:
            return None
        with self._lock:
            entry = self._entries.get(sid)
            if entry is not None and entry.expires_at <= self._clock():
                del self._entries[sid]
                return None
            return entry

    def drop(self, sid: str | None) -> None:
        """End a sign-in (logout)."""
        if sid:
            with self._lock:
                self._entries.pop(sid, None)

    def _prune(self) -> None:
        now = self._clock()
        for sid in [k for k, e in self._entries.items() if e.expires_at <= now]:
            del self._entries[sid]
