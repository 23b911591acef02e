"""Send an :class:`~probe.importers.model.ImportedRun` to a server through the public HTTP API.

The run id comes from the source, so a second import finds the run; the server's per-key last
steps then say which points it already has, and only later ones are sent (content-hashed batch
ids guard a retried POST as well). Imported runs are marked finished (or crashed) at once, so the
heartbeat reaper never touches them.
"""

from __future__ import annotations

from dataclasses import dataclass

from probe.api.http import HttpSession
from probe.importers.model import ImportedRun


@dataclass(frozen=True)
class Uploaded:
    """What one import stored: ``created`` is False when the run was already there."""

    run_id: str
    name: str
    created: bool
    points: int
    arrays: int


def upload(http: HttpSession, imported: ImportedRun) -> Uploaded:
    """Create the run (or find it), send what the server lacks, mark it ended."""
    response = http.request("POST", "/runs", json=imported.run)
    created = response.status_code == 201
    if not created:
        keys = http.get(f"/runs/{imported.id}/keys")
        imported.drop_stored({s["key"]: s["last_step"] for s in keys["scalars"]
                              if s["last_step"] is not None},
                             {(a["key"], a["layer"] or ""): a["last_step"] for a in keys["arrays"]})
    points = arrays = 0
    for batch in imported.batches():
        answer = http.request("POST", f"/runs/{imported.id}/batches", json=batch).json()
        points += int(answer.get("scalars", 0))
        arrays += int(answer.get("arrays", 0))
    if created or points or arrays:
        http.request("POST", f"/runs/{imported.id}/finish", json={"status": imported.status})
    return Uploaded(imported.id, imported.run.get("name") or "", created, points, arrays)
