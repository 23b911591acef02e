"""Replaying spools left on disk: offline runs, runs that ended during an outage, dead processes.

For each run directory: create the run (idempotent), send every batch oldest first (duplicates are
answered ``{"duplicate": true}`` and cost nothing), then end the run — with the status its process
recorded, or ``crashed`` if the process died before it could say (no ``finish.json``). A directory
is deleted only once all of this succeeded; a directory locked by a live process is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from probe.client import protocol
from probe.client.spool import RunSpool, SpoolBusy, spooled_runs
from probe.client.transport import PermanentError, Transport, TransientError


@dataclass(slots=True)
class SyncReport:
    """What happened to one spooled run."""

    directory: Path
    run_id: str = ""
    batches: int = 0
    records: int = 0
    duplicates: int = 0
    rejected: int = 0
    status: str | None = None
    skipped: str | None = None
    error: str | None = None
    unreachable: bool = False
    """The error was transient (server down or overloaded): later runs are not even tried."""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def line(self) -> str:
        """One human-readable line for the CLI."""
        head = f"{self.run_id or self.directory.name}: "
        if self.skipped:
            return head + f"skipped ({self.skipped})"
        text = f"{self.batches} batches ({self.records} records) sent, {self.duplicates} already on the server"
        if self.rejected:
            text += f", {self.rejected} records rejected"
        if self.status:
            text += f", marked {self.status}"
        if self.error:
            text += f"; FAILED: {self.error} (kept on disk, run sync again)"
        return head + text


def sync_run(directory: Path, transport: Transport) -> SyncReport:
    """Replay one run directory to the server behind ``transport``."""
    report = SyncReport(directory)
    try:
        spool = RunSpool.open(directory)
    except SpoolBusy:
        report.skipped = "in use by a running process"
        return report
    except OSError as exc:
        report.error = f"cannot open: {exc}"
        return report
    try:
        body = spool.create_body
        if body is None:
            report.error = "run.json missing or unreadable"
            return report
        report.run_id = run_id = body["id"]

        def send(batch: protocol.Batch) -> None:
            n = protocol.batch_size(batch)
            try:
                answer = transport.send_batch(run_id, batch)
            except PermanentError as exc:
                if exc.status in (401, 403, 404):
                    raise
                halves = protocol.split_batch(batch) if exc.status == 413 else None
                if halves is not None:  # too large for the server: send it in halves
                    for half in halves:
                        send(half)
                    return
                report.rejected += n  # bad data: resending cannot help, keep going
                report.notes.append(str(exc))
                return
            report.batches += 1
            report.records += n
            if isinstance(answer, dict) and answer.get("duplicate"):
                report.duplicates += 1

        try:
            transport.create_run(body)
            spool.replay(send)
            if spool.owns_run:
                status = spool.finish_status or "crashed"
                transport.finish(run_id, status)
                report.status = status
        except (TransientError, PermanentError) as exc:
            report.error = str(exc)
            report.unreachable = isinstance(exc, TransientError)
            return report
        if spool.skipped_lines:
            report.notes.append(f"{spool.skipped_lines} torn lines skipped")
        spool.remove()
        return report
    finally:
        spool.release()


def sync_home(spool_root: Path, transport: Transport, run_ids: list[str] | None = None) -> list[SyncReport]:
    """Replay every run under ``spool_root`` (``$OPTISCOPE_HOME/spool``), oldest first."""
    reports: list[SyncReport] = []
    unreachable = False
    for directory in spooled_runs(spool_root):
        if run_ids and directory.name.split(".r")[0] not in run_ids:
            continue
        if unreachable:  # each try would wait out the retries again: say so instead
            reports.append(SyncReport(directory, skipped="server unreachable, not tried"))
            continue
        report = sync_run(directory, transport)
        unreachable = report.unreachable
        reports.append(report)
    return reports
