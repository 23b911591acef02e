"""Server settings, read from ``OPTISCOPE_*`` environment variables.

Nothing is built at import: ``get_settings()`` is cached and tests pass their own ``Settings``.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

VERSION = "0.1.0"
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: where reads may skip the token."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def normalize_db_url(url: str) -> str:
    """Make plain ``postgresql://`` URLs use psycopg 3 (the only PG driver we ship)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


class Settings(BaseSettings):
    """Everything the server needs; the probe's ``OPTISCOPE_URL``/``OPTISCOPE_TOKEN`` are ignored."""

    model_config = SettingsConfigDict(env_prefix="OPTISCOPE_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path("~/.optiscope").expanduser())
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 32 * 1024 * 1024
    heartbeat_timeout: float = 120.0
    reaper_interval: float = 15.0
    # Decoded long series kept in memory per process (0 disables); see store.series.SeriesCache.
    series_cache_mb: int = 256
    # None = derived from the bind host (loopback → reads are open); True/False force it.
    read_auth: bool | None = None
    # Extra Host names answered besides the bound address and loopback names (comma-separated;
    # "*" turns the DNS-rebinding check off, e.g. behind a proxy that checks Host itself).
    allowed_hosts: str = ""
    # Slow clients (``optiscope serve``): a connection must deliver its request headers within
    # ``header_timeout`` s; idle keep-alive connections close after ``keep_alive_timeout`` s;
    # past ``limit_concurrency`` open connections new requests get 503.
    header_timeout: float = 10.0
    keep_alive_timeout: int = 5
    limit_concurrency: int = 1000
    backlog: int = 2048
    # One GET /runs/{id}/arrays may return at most this many float values (≈ 20 bytes each as
    # JSON); larger reads are refused with 422 saying how to page.
    max_array_read_values: int = 1_000_000
    # Array reads that may build their response at the same time (the rest wait): bounds the
    # server's memory under concurrent heavy reads.
    array_read_concurrency: int = 2

    @property
    def db_url(self) -> str:
        """The SQLAlchemy URL: explicit, or the embedded SQLite file under ``home``."""
        if self.database_url:
            return normalize_db_url(self.database_url)
        return f"sqlite:///{Path(self.home).expanduser() / 'optiscope.db'}"

    @property
    def uses_default_db(self) -> bool:
        return not self.database_url

    @property
    def extra_hosts(self) -> frozenset[str]:
        """``allowed_hosts`` as lower-case names (ports and brackets stripped)."""
        names = (h.strip().lower() for h in self.allowed_hosts.split(","))
        return frozenset(n for n in names if n)

    @property
    def reads_need_token(self) -> bool:
        if self.read_auth is not None:
            return self.read_auth
        return not is_loopback(self.host)


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment, built once per process on first use."""
    return Settings()
