"""``optiscope export`` / ``optiscope import`` over HTTP: a run's NDJSON export to and from a server.

The file is the server's own export format (``GET /runs/{id}/export``, ``POST /runs/import``), so
a file exported over HTTP imports into a database directly and the other way round.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

from probe.api.http import HttpSession
from probe.api.resolve import resolve_run


def export_to_file(http: HttpSession, name_or_id: str, output: str | Path,
                   *, project: str | None = None) -> dict[str, Any]:
    """Write the run's export to ``output`` (gzip when it ends in ``.gz``); returns the run."""
    run = resolve_run(http, name_or_id, project=project)
    data = http.request("GET", f"/runs/{run['id']}/export").content
    path = Path(output)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return run


def import_from_file(http: HttpSession, path: str | Path) -> dict[str, Any]:
    """Send an export file (plain or gzip) to the server; returns the stored run."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return http.request("POST", "/runs/import", content=raw,
                        headers={"Content-Type": "application/x-ndjson"}).json()
