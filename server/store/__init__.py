"""All SQL lives in this package: keyword-only functions over a sync ``Session``.

Split by what changes together: ``runs`` (run rows, projects, tags, reaper), ``ingest`` (the
all-or-nothing batch), ``series`` (chunked scalars: append, read, latest, time-to-target),
``arrays``, ``events`` and ``transfer`` (export/import).
"""

from server.store.arrays import plan_array_read, stream_array_records
from server.store.events import list_events
from server.store.ingest import ingest_batch
from server.store.runs import (
    create_run,
    delete_run,
    finish_run,
    get_run,
    heartbeat,
    list_runs,
    reap_stale_runs,
    run_read,
    update_run,
)
from server.store.series import list_keys, read_latest, read_series, time_to_target
from server.store.transfer import export_run, import_run

__all__ = [
    "create_run", "delete_run", "finish_run", "get_run", "heartbeat", "list_runs", "reap_stale_runs",
    "run_read", "update_run", "ingest_batch", "list_keys", "read_latest", "read_series", "time_to_target",
    "plan_array_read", "stream_array_records", "list_events", "export_run", "import_run",
]
