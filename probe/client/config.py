"""Where the probe sends data and how hard it tries (``ClientConfig``).

Resolution order, per ``docs/ARCHITECTURE.md``: explicit arguments, then ``OPTISCOPE_URL`` /
``OPTISCOPE_TOKEN``, then the files a local ``optiscope serve`` writes into ``$OPTISCOPE_HOME``
(``server.json`` with its URL, ``local-token`` with its token), then ``http://127.0.0.1:8000``.
That last step is why a user on one machine never configures anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

DEFAULT_URL = "http://127.0.0.1:8000"
API_PREFIX = "/api/v1"

FsyncPolicy = Literal["batch", "none"]

_ENV_TUNING: tuple[tuple[str, str, type], ...] = (
    ("spool_max_bytes", "OPTISCOPE_SPOOL_MAX_BYTES", int),
    ("flush_interval", "OPTISCOPE_FLUSH_INTERVAL", float),
    ("fsync", "OPTISCOPE_FSYNC", str),
    ("term_timeout", "OPTISCOPE_TERM_TIMEOUT", float),
)
"""Tuning a cluster admin may want to set for every job without touching training code."""


def default_home(env: Mapping[str, str] | None = None) -> Path:
    """``$OPTISCOPE_HOME`` or ``~/.optiscope``."""
    env = os.environ if env is None else env
    value = env.get("OPTISCOPE_HOME")
    return Path(value).expanduser() if value else Path.home() / ".optiscope"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _url_from_server_json(home: Path) -> str | None:
    text = _read_text(home / "server.json")
    if text is None:
        return None
    try:
        url = json.loads(text).get("url")
    except (ValueError, AttributeError):
        return None
    return url if isinstance(url, str) and url else None


def normalize_url(url: str) -> str:
    """Base URL without a trailing slash or ``/api/v1`` (users paste either form)."""
    url = url.strip().rstrip("/")
    if url.endswith(API_PREFIX):
        url = url[: -len(API_PREFIX)]
    return url


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything the client needs; immutable so the sender thread can read it without locks.

    Attributes:
        url: server base URL (the API lives under ``url + "/api/v1"``).
        token: bearer token, or ``None`` (the server will then answer 401 to writes).
        home: data directory; the spool lives in ``home / "spool"``.
        flush_interval: seconds between sender wake-ups; bounds the live latency.
        heartbeat_interval: seconds between heartbeats; must stay well below the server's
            ``OPTISCOPE_HEARTBEAT_TIMEOUT`` (120 s) or live runs get marked crashed.
        queue_size: records held in memory; beyond it the oldest are dropped (counted) so memory
            stays bounded whatever the sender is doing.
        batch_points: data records per POST; keeps bodies well under the server's 32 MiB limit.
        spool_max_bytes: disk budget of one run's spool; beyond it the oldest segments are dropped.
        spool_segment_bytes: size at which a spool segment file is closed and a new one started;
            also the granularity of drop-oldest.
        fsync: ``"batch"`` fsyncs every spooled batch (survives power loss), ``"none"`` leaves it to
            the OS (survives a killed process only).
        timeout: seconds per HTTP request.
        max_attempts: tries per request inside the transport before the batch goes to the spool.
        backoff_base, backoff_max: exponential backoff (with jitter) between tries, in seconds.
        finish_timeout: how long ``finish()`` may wait for the last batches before leaving them in
            the spool for ``optiscope sync``.
        term_timeout: the same on SIGTERM. Shorter: whoever sends SIGTERM sends SIGKILL after a grace
            period (``docker stop``: 10 s) that the user's own handler and the interpreter's exit also
            need, and a job being stopped must go promptly whatever the server's speed. What is not
            delivered by then is on disk for ``optiscope sync``.
    """

    url: str = DEFAULT_URL
    token: str | None = None
    home: Path = dataclasses.field(default_factory=default_home)
    flush_interval: float = 0.5
    heartbeat_interval: float = 30.0
    queue_size: int = 100_000
    batch_points: int = 20_000
    spool_max_bytes: int = 1 << 30
    spool_segment_bytes: int = 8 << 20
    fsync: FsyncPolicy = "batch"
    timeout: float = 10.0
    max_attempts: int = 3
    backoff_base: float = 0.25
    backoff_max: float = 30.0
    finish_timeout: float = 30.0
    term_timeout: float = 5.0

    def __post_init__(self) -> None:
        positive = ("flush_interval", "heartbeat_interval", "timeout", "backoff_base", "backoff_max")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"Invalid {name}: {getattr(self, name)} (must be > 0)")
        for name in ("queue_size", "batch_points", "spool_max_bytes", "spool_segment_bytes", "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"Invalid {name}: {getattr(self, name)} (must be >= 1)")
        if self.fsync not in ("batch", "none"):
            raise ValueError(f"Invalid fsync: {self.fsync!r} (must be 'batch' or 'none')")
        for name in ("finish_timeout", "term_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"Invalid {name}: {getattr(self, name)} (must be >= 0)")

    @property
    def api(self) -> str:
        """The API root, e.g. ``http://127.0.0.1:8000/api/v1``."""
        return self.url + API_PREFIX

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"

    @classmethod
    def from_env(
        cls,
        url: str | None = None,
        token: str | None = None,
        home: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> ClientConfig:
        """Resolve url/token/home from arguments, environment and the local server's files.

        ``overrides`` set the tuning fields (``flush_interval=0.01`` in tests).
        """
        env = os.environ if env is None else env
        home_path = Path(home).expanduser() if home is not None else default_home(env)
        resolved_url = url or env.get("OPTISCOPE_URL") or _url_from_server_json(home_path) or DEFAULT_URL
        resolved_token = token or env.get("OPTISCOPE_TOKEN") or _read_text(home_path / "local-token")
        for field_name, variable, kind in _ENV_TUNING:
            if field_name not in overrides and env.get(variable):
                try:
                    overrides[field_name] = kind(env[variable])
                except ValueError:
                    raise ValueError(f"Invalid {variable}: {env[variable]!r} (expected {kind.__name__})") from None
        return cls(url=normalize_url(resolved_url), token=resolved_token, home=home_path, **overrides)

    def replace(self, **changes: Any) -> ClientConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
