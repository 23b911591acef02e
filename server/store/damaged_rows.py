"""Rows that no longer fit the schema: logged, repaired or skipped, and flagged — never a 500.

Every write path validates (ingest models, the import parser), but a database can still hold a
row written by an older version, by hand, or by another tool. One such row must not take down the
runs list or a run's charts for everyone: readers go through these helpers, which log the row,
serve what can be served, and mark the answer ``damaged`` so the damage is visible, not hidden.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import numpy as np
from pydantic import ValidationError

from server.schemas import RunRead

log = logging.getLogger("optiscope.server.damaged")
I8, F8 = np.dtype("<i8"), np.dtype("<f8")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

# What a field that cannot be read is served as (the run itself stays listed and deletable).
RUN_FALLBACK: dict[str, Any] = {
    "name": "", "status": "crashed", "config": {}, "tags": [], "optimizer": None, "host": None,
    "world_size": 1, "rank": None, "created_at": EPOCH, "updated_at": EPOCH, "heartbeat_at": None,
    "finished_at": None, "last_step": None, "alerts_count": 0, "summary": {},
}


def run_read(data: dict[str, Any]) -> RunRead:
    """``RunRead`` of a run row's fields; unreadable fields get :data:`RUN_FALLBACK` values and
    the result carries ``damaged: true`` and ``errors`` (one line per bad field)."""
    try:
        return RunRead.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
    bad = sorted({str(e["loc"][0]) for e in errors if e["loc"]})
    log.warning("run %r has unreadable field(s) %s in the database; served with defaults",
                data.get("id"), ", ".join(bad))
    repaired = {**data, **{f: RUN_FALLBACK[f] for f in bad if f in RUN_FALLBACK}}
    messages = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors]
    try:
        read = RunRead.model_validate(repaired)
    except ValidationError:  # id/project themselves unreadable: serve the bare minimum
        read = RunRead.model_validate({**RUN_FALLBACK, "id": str(data.get("id")), "project": str(data.get("project"))})
    return read.model_copy(update={"damaged": True, "errors": messages})


def array_values(run_id: str, key: str, step: Any, values: Any, shape: Any) -> np.ndarray | None:
    """The float64 vector of a stored array record, or None (logged) when its bytes cannot be
    what its header says: not whole float64s, or a ``shape`` that does not multiply to them."""
    if isinstance(values, memoryview):
        values = values.tobytes()
    if not isinstance(values, bytes) or len(values) % 8:
        log.warning("array %s/%s@%s: %r bytes are not float64 values; skipped", run_id, key, step,
                    len(values) if isinstance(values, bytes) else type(values).__name__)
        return None
    arr = np.frombuffer(values, F8)
    size = 1
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        log.warning("array %s/%s@%s: shape %r is not a list of sizes; skipped", run_id, key, step, shape)
        return None
    for d in shape:
        size *= d
    if size != len(arr):
        log.warning("array %s/%s@%s: shape %r needs %d values, %d stored; skipped", run_id, key, step, shape,
                    size, len(arr))
        return None
    return arr


def chunk_is_sound(series_id: int, steps: Any, values: Any, times: Any | None) -> bool:
    """Whether a stored chunk's blobs are whole int64/float64 vectors of one length (logged if not)."""
    blobs = [b for b in (steps, values, times) if b is not None]
    sizes = [len(b) if isinstance(b, (bytes, memoryview)) else -1 for b in blobs]
    if min(sizes) >= 0 and len(set(sizes)) == 1 and sizes[0] % 8 == 0:
        return True
    log.warning("series %s: a chunk with blob sizes %s is unreadable; skipped", series_id, sizes)
    return False
