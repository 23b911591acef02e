"""A run's durable on-disk spool: what the server has not acknowledged yet.

Layout, one directory per run (``$OPTISCOPE_HOME/spool/<run_id>/``)::

    run.json                 the RunCreate body: replay starts by creating the run (idempotent)
    meta.json                {"run_id", "owns_run"}: whether replay may finish the run (rank 0 of
                             a shared run does; the other ranks' spools only carry data)
    000000000001.jsonl ...   append-only segments, one Batch JSON per line, in send order
    finish.json              {"status": ...} once the run has ended
    lock                     flock held by the live process, so `optiscope sync` leaves it alone

Why this shape: JSON lines need no framing (wire-encoded JSON has no raw newlines) and a process
killed mid-write leaves at most one torn last line, which the reader skips. Segments make
"drop the oldest when over the disk budget" a file deletion and let replay delete what the server
has acknowledged. A replayed batch keeps its ``batch_id``, so replaying twice is harmless.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from probe.client import protocol
from probe.client.config import FsyncPolicy

try:  # POSIX only; without it two processes could replay the same run (still idempotent)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

RUN_FILE = "run.json"
FINISH_FILE = "finish.json"
META_FILE = "meta.json"
LOCK_FILE = "lock"
SEGMENT_SUFFIX = ".jsonl"


class SpoolBusy(Exception):
    """Another live process owns this run's spool."""


@dataclass(slots=True)
class _Segment:
    path: Path
    size: int
    records: int | None  # data records not yet replayed (None: written by another process, count on demand)
    batches: int  # batches not yet replayed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, fsync: bool) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        _fsync_dir(path.parent)


def _read_lines(path: Path, offset: int) -> Iterator[tuple[int, bytes | None]]:
    """Yield ``(offset_after_line, line)``; ``line`` is ``None`` for a torn (unterminated) tail."""
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f:
            offset += len(line)
            yield offset, (line if line.endswith(b"\n") else None)


class RunSpool:
    """One run's spool directory; not thread-safe (the sender thread is its only user).

    Use :meth:`create` in the process that logs the run and :meth:`open` to replay a run that a
    finished or dead process left behind.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 1 << 30,
        segment_bytes: int = 8 << 20,
        fsync: FsyncPolicy = "batch",
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        # At least four segments fit in the budget, so dropping the oldest frees a quarter at most.
        self.segment_bytes = max(1, min(segment_bytes, max_bytes // 4))
        self._fsync = fsync == "batch"
        self._segments: list[_Segment] = []
        self._active_fd: int | None = None
        self._next_index = 1
        self._cursor = 0  # byte offset of the first unreplayed line in _segments[0]
        self._lock_fd: int | None = None
        self.dropped_records = 0
        """Data records deleted by the size limit (oldest first)."""
        self.dropped_batches = 0
        self.skipped_lines = 0
        """Torn or unreadable lines skipped during replay (a process killed mid-write)."""

    # -- construction -------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: Path,
        name: str,
        create_body: protocol.RunCreate,
        *,
        owns_run: bool = True,
        **options: Any,
    ) -> RunSpool:
        """Make ``root/name`` for a live run, record how to create the run, and lock it.

        ``name`` is the run id, or ``<run id>.r<rank>`` for the other ranks of a shared run (ranks
        on one machine share ``OPTISCOPE_HOME`` and must not share a directory).
        """
        directory = root / name
        directory.mkdir(parents=True, exist_ok=True)
        spool = cls(directory, **options)
        spool._lock(blocking=False)
        spool._scan()
        meta = {"run_id": create_body["id"], "owns_run": owns_run}
        _write_atomic(directory / META_FILE, protocol.dumps(meta), spool._fsync)
        _write_atomic(directory / RUN_FILE, protocol.dumps(create_body), spool._fsync)
        return spool

    @classmethod
    def open(cls, directory: Path, **options: Any) -> RunSpool:
        """Open a spool left by another process; raises :class:`SpoolBusy` if it is still alive."""
        spool = cls(directory, **options)
        spool._lock(blocking=False)
        spool._scan()
        return spool

    def _lock(self, *, blocking: bool) -> None:
        if fcntl is None:
            return
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError:
            os.close(fd)
            raise SpoolBusy(f"{self.directory} is in use by a running process") from None
        self._lock_fd = fd

    def _scan(self) -> None:
        paths = sorted(p for p in self.directory.iterdir() if p.name.endswith(SEGMENT_SUFFIX))
        for path in paths:
            batches = sum(1 for _ in _read_lines(path, 0))
            self._segments.append(_Segment(path, path.stat().st_size, None, batches))
        if paths:
            self._next_index = int(paths[-1].name[: -len(SEGMENT_SUFFIX)]) + 1

    # -- what is in it ------------------------------------------------------------------------------

    @property
    def create_body(self) -> protocol.RunCreate | None:
        try:
            return json.loads((self.directory / RUN_FILE).read_bytes())
        except (OSError, ValueError):
            return None

    @property
    def owns_run(self) -> bool:
        try:
            return bool(json.loads((self.directory / META_FILE).read_bytes()).get("owns_run", True))
        except (OSError, ValueError, AttributeError):
            return True

    @property
    def finish_status(self) -> protocol.Status | None:
        try:
            status = json.loads((self.directory / FINISH_FILE).read_bytes()).get("status")
        except (OSError, ValueError, AttributeError):
            return None
        return status if status in ("finished", "crashed") else None

    @property
    def pending_batches(self) -> int:
        """Batches written and not yet replayed (counting the current segment's already-sent ones
        only until it is deleted: an approximation that is exact whenever replay is idle)."""
        return sum(s.batches for s in self._segments)

    @property
    def bytes(self) -> int:
        return sum(s.size for s in self._segments)

    def __bool__(self) -> bool:
        """True while batches are waiting: new batches must queue behind them to keep the order."""
        return bool(self._segments)

    # -- writing ------------------------------------------------------------------------------------

    def append(self, batch: protocol.Batch) -> None:
        """Append one batch durably (per the fsync policy), then enforce the size limit."""
        line = protocol.dumps(batch) + b"\n"
        if self._active_fd is None or self._segments[-1].size >= self.segment_bytes:
            self._rotate()
        assert self._active_fd is not None
        os.write(self._active_fd, line)
        if self._fsync:
            os.fsync(self._active_fd)
        segment = self._segments[-1]
        segment.size += len(line)
        segment.batches += 1
        if segment.records is not None:
            segment.records += protocol.batch_size(batch)
        self._enforce_limit()

    def new_segment(self) -> None:
        """Start a new segment for the next appends: a replay still reading the active one deletes
        that one when it is done, never what is appended from now on."""
        self._rotate()

    def _rotate(self) -> None:
        self._close_active()
        path = self.directory / f"{self._next_index:012d}{SEGMENT_SUFFIX}"
        self._next_index += 1
        self._active_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segments.append(_Segment(path, 0, 0, 0))  # before the fsync: a failing one must not orphan the file
        if self._fsync:
            _fsync_dir(self.directory)

    def _close_active(self) -> None:
        if self._active_fd is not None:
            os.close(self._active_fd)
            self._active_fd = None

    def _enforce_limit(self) -> None:
        while self.bytes > self.max_bytes and len(self._segments) > 1:
            oldest = self._segments.pop(0)
            records = oldest.records
            if records is None:  # only what replay has not delivered yet is lost
                records = sum(protocol.batch_size(b) for b in self._batches(oldest.path, self._cursor))
            self.dropped_records += records
            self.dropped_batches += oldest.batches
            self._cursor = 0
            oldest.path.unlink(missing_ok=True)

    def write_finish(self, status: protocol.Status) -> None:
        _write_atomic(self.directory / FINISH_FILE, protocol.dumps({"status": status}), self._fsync)

    # -- replay -------------------------------------------------------------------------------------

    def _batches(self, path: Path, offset: int) -> Iterator[protocol.Batch]:
        for _, line in _read_lines(path, offset):
            if line is not None:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue

    def replay(self, send: Callable[[protocol.Batch], Any], max_batches: int | None = None) -> int:
        """Hand spooled batches to ``send`` oldest first, deleting each segment once all of it is sent.

        If ``send`` raises, the batch stays first in line and the exception propagates: the next
        call resumes at that batch. Returns the number of batches sent.
        """
        sent = 0
        while self._segments:
            segment = self._segments[0]
            for end, line in _read_lines(segment.path, self._cursor):
                if max_batches is not None and sent >= max_batches:
                    return sent
                batch = None
                if line is not None:
                    try:
                        batch = json.loads(line)
                    except ValueError:
                        batch = None
                if batch is None:
                    self.skipped_lines += 1
                else:
                    send(batch)
                    sent += 1
                    if segment.records is not None:
                        segment.records -= protocol.batch_size(batch)
                self._cursor = end
                segment.batches -= 1
            if segment is self._segments[-1]:
                self._close_active()
            segment.path.unlink(missing_ok=True)
            self._segments.pop(0)
            self._cursor = 0
        return sent

    # -- lifetime -----------------------------------------------------------------------------------

    def release(self) -> None:
        """Close files and drop the lock; the directory stays for `optiscope sync`."""
        self._close_active()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def remove(self) -> None:
        """Delete the whole directory (everything in it reached the server)."""
        self.release()
        shutil.rmtree(self.directory, ignore_errors=True)


def spooled_runs(root: Path) -> list[Path]:
    """Run directories under ``root`` (``$OPTISCOPE_HOME/spool``): owners first, then oldest first."""
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and (p / RUN_FILE).exists()]
    # The owning rank's spool first, so the run is created with rank 0's metadata.
    return sorted(dirs, key=lambda p: (".r" in p.name, (p / RUN_FILE).stat().st_mtime))
