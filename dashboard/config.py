"""Dashboard settings: where the query API lives and how often live pages poll.

Read from the environment only when asked (never at import), so that tests and the server's
``mount`` can pass explicit values and one process may host dashboards for different servers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"
API_PREFIX = "/api/v1"


@dataclass(frozen=True, slots=True)
class DashboardConfig:
    """Everything the dashboard needs to know about its surroundings.

    ``api_url`` is the server's base URL (``/api/v1`` is appended when missing) so the same value
    works for ``OPTISCOPE_URL`` and for a URL copied from the browser's address bar.
    """

    api_url: str = DEFAULT_URL
    token: str | None = None
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


def _home() -> Path:
    return Path(os.environ.get("OPTISCOPE_HOME") or Path.home() / ".optiscope")


def from_env(api_url: str | None = None, token: str | None = None) -> DashboardConfig:
    """Explicit arguments first, then ``OPTISCOPE_URL``/``OPTISCOPE_TOKEN``, then the local files
    that ``optiscope serve`` writes (``server.json``, ``local-token``), as the probe does."""
    home = _home()
    url = api_url or os.environ.get("OPTISCOPE_URL")
    if not url:
        try:
            import json

            url = json.loads((home / "server.json").read_text(encoding="utf-8"))["url"]
        except (OSError, ValueError, KeyError, TypeError):
            url = DEFAULT_URL
    tok = token or os.environ.get("OPTISCOPE_TOKEN")
    if not tok:
        try:
            tok = (home / "local-token").read_text(encoding="utf-8").strip() or None
        except OSError:
            tok = None
    return DashboardConfig(api_url=url, token=tok)
