"""Dashboard settings: where the query API lives, how often live pages poll, and how people sign in.

Read from the environment only when asked (never at import), so that tests and the server's
``mount`` can pass explicit values and one process may host dashboards for different servers.

The dashboard holds no API token of its own: every request to the API carries the token of the
person using it (``dashboard.auth``). What the config decides is only *when* a sign-in is needed.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"
API_PREFIX = "/api/v1"
DEFAULT_SESSION_HOURS = 12.0
SECRET_FILE = "dashboard-secret"
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})
# OPTISCOPE_DASHBOARD_AUTH: "auto" (sign-in needed unless bound to loopback) or "login" (always).
AUTH_MODES = ("auto", "login")


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: a single-user bind where reads may stay open."""
    if not host:
        return False
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class DashboardConfig:
    """Everything the dashboard needs to know about its surroundings.

    ``api_url`` is the server's base URL (``/api/v1`` is appended when missing) so the same value
    works for ``OPTISCOPE_URL`` and for a URL copied from the browser's address bar.
    """

    api_url: str = DEFAULT_URL
    # The address the dashboard is served on. None (unknown) counts as "not loopback": a sign-in is
    # then required for everything, which fails closed.
    bind_host: str | None = "127.0.0.1"
    # True: a sign-in is needed for every page, asset and callback, whatever the bind address.
    force_login: bool = False
    # Absolute lifetime of a sign-in (not refreshed by activity).
    session_ttl_s: float = DEFAULT_SESSION_HOURS * 3600.0
    # Signs the session cookie; None = generated per process (sessions end with the process).
    secret_key: str | None = None
    # Extra Host names the standalone dashboard answers (OPTISCOPE_ALLOWED_HOSTS); "*" = any.
    allowed_hosts: tuple[str, ...] = ()
    # The standalone dashboard checks Host itself; mounted in the server, the server's own host
    # check runs before the dashboard sees the request.
    check_host: bool = False
    # 1 s polling keeps "logged -> visible" under the 2 s bar with room for one slow request.
    poll_interval_ms: int = 1000
    # Points asked of the server per series: about a chart's pixel width, min/max preserved there.
    series_points: int = 1500
    # Distinct steps asked for step x index heatmaps; the server subsamples evenly, keeps first/last.
    heatmap_steps: int = 120
    # Columns of the layer x step heatmaps built from per-layer scalar series.
    layer_grid_bins: int = 200
    request_timeout_s: float = 15.0

    @property
    def api_base(self) -> str:
        """The ``/api/v1`` root that every request path is relative to."""
        base = self.api_url.rstrip("/")
        return base if base.endswith(API_PREFIX) else base + API_PREFIX

    @property
    def login_required(self) -> bool:
        """Whether anything at all is served without a sign-in (only on a loopback bind)."""
        return self.force_login or not is_loopback(self.bind_host)


def _home() -> Path:
    return Path(os.environ.get("OPTISCOPE_HOME") or Path.home() / ".optiscope")


def secret_key_from(home: Path) -> str:
    """``OPTISCOPE_SECRET_KEY``, else the key in ``$OPTISCOPE_HOME/dashboard-secret`` (made 0600 on
    first use, in a 0700 directory), so sign-ins survive a restart and nobody else can read it."""
    env = os.environ.get("OPTISCOPE_SECRET_KEY")
    if env:
        return env
    path = home / SECRET_FILE
    try:
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return key
    except OSError:
        pass
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    # O_EXCL: two processes starting at once both end up with the first one's key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip() or key
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    return key


def session_ttl_from_env() -> float:
    """``OPTISCOPE_DASHBOARD_SESSION_HOURS`` (default 12) as seconds; a bad value is an error that
    names the variable rather than a silent default."""
    raw = os.environ.get("OPTISCOPE_DASHBOARD_SESSION_HOURS")
    if raw is None or raw.strip() == "":
        return DEFAULT_SESSION_HOURS * 3600.0
    try:
        hours = float(raw)
    except ValueError:
        hours = -1.0
    if not (math.isfinite(hours) and hours > 0):
        raise ValueError(f"OPTISCOPE_DASHBOARD_SESSION_HOURS: expected a positive number of hours, got {raw!r}")
    return hours * 3600.0


def _auth_mode() -> str:
    mode = (os.environ.get("OPTISCOPE_DASHBOARD_AUTH") or "auto").strip().lower()
    if mode not in AUTH_MODES:
        raise ValueError(f"OPTISCOPE_DASHBOARD_AUTH: expected one of {', '.join(AUTH_MODES)}, got {mode!r}")
    return mode


def from_env(api_url: str | None = None, *, bind_host: str | None = "127.0.0.1",
             check_host: bool = False) -> DashboardConfig:
    """Explicit arguments first, then ``OPTISCOPE_URL``, then the ``server.json`` that
    ``optiscope serve`` writes. ``OPTISCOPE_TOKEN`` and the local-token file are deliberately NOT
    read: a token held by the dashboard would let anyone who reaches it act with it."""
    home = _home()
    url = api_url or os.environ.get("OPTISCOPE_URL")
    if not url:
        try:
            url = json.loads((home / "server.json").read_text(encoding="utf-8"))["url"]
        except (OSError, ValueError, KeyError, TypeError):
            url = DEFAULT_URL
    hosts = tuple(h.strip().lower() for h in os.environ.get("OPTISCOPE_ALLOWED_HOSTS", "").split(",") if h.strip())
    return DashboardConfig(
        api_url=url, bind_host=bind_host, force_login=_auth_mode() == "login",
        session_ttl_s=session_ttl_from_env(), secret_key=secret_key_from(home), allowed_hosts=hosts,
        check_host=check_host,
    )
