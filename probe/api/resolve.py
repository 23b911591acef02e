"""Turn what a user typed (a run id or a run name) into exactly one run, or say why not.

Names are what people remember and ids are what the server keys on; a name that matches
several runs must not silently pick one (deleting or exporting the wrong run loses work), so
an ambiguous name is an error that lists the candidates' ids.
"""

from __future__ import annotations

import re
from typing import Any

from probe.api.http import ApiError, HttpSession

_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def resolve_run(http: HttpSession, name_or_id: str, *, project: str | None = None) -> dict[str, Any]:
    """The run (``RunRead`` dict) whose id is ``name_or_id``, else the one run with that exact name."""
    if not name_or_id:
        raise ApiError("a run name or id is needed")
    if _ID_PATTERN.fullmatch(name_or_id):
        try:
            run = http.get(f"/runs/{name_or_id}")
        except ApiError as exc:
            if exc.status != 404:
                raise
        else:
            if project is None or run.get("project") == project:
                return run
    found = http.get("/runs", q=name_or_id, project=project, limit=1000)["data"]
    exact = [r for r in found if r.get("name") == name_or_id]
    if not exact:
        where = f" in project {project!r}" if project else ""
        raise ApiError(f"no run named or with id {name_or_id!r}{where} (list them: optiscope runs)", 404)
    if len(exact) > 1:
        ids = ", ".join(f"{r['id']} ({r['project']})" for r in exact[:10])
        raise ApiError(f"{len(exact)} runs are named {name_or_id!r}: {ids}; pass the id instead", 409)
    return exact[0]
