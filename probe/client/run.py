"""``probe.init()`` and ``Run``: the user-facing side of the client.

``Run.log`` is on the training loop's hot path, so it does the least possible: stamp the time,
copy the (small) dict, append a tuple to a bounded deque, return. No lock, no I/O, no tensor
synchronisation — tensors stay tensors until the sender thread copies many of them at once. A
``Run`` never raises into training after ``init``: failures are counted (``run.dropped``,
``run.problems``) and warned about once.

How a run ends:

* ``run.finish()``, leaving a ``with`` block normally, or interpreter exit (``atexit``) → finished;
* an exception leaving the ``with`` block, or an uncaught exception (``sys.excepthook``) → crashed;
* SIGTERM (``kill``, a scheduler's preemption, ``docker stop``) → what is queued is delivered (or
  spooled) and the run is marked crashed, within ``ClientConfig.term_timeout`` (5 s) whatever the
  server does, then the signal takes its usual course (the previous handler, or the default exit
  with status 143); installed only from the main thread, and never over a handler that ignores
  the signal;
* a process killed outright (SIGKILL, OOM) cannot say anything: heartbeats stop and the server's
  reaper marks the run crashed; ``optiscope sync`` does the same for a spool it left unfinished.

Distributed (``torch.distributed`` or the ``RANK``/``WORLD_SIZE`` variables): by default only
rank 0 logs and the other ranks get a disabled run whose methods do nothing. With
``log_all_ranks=True`` every rank logs into rank 0's run: rank 0 chooses the id and broadcasts it
(``OPTISCOPE_RUN_ID`` overrides, for launchers without a process group); rank ``r > 0`` prefixes
its keys with ``"rank<r>."`` (``rank1.loss``, ``rank1.grad_norm/fc1.weight``) and tags its events
with ``data["rank"]``; rank 0's keys stay plain so every dashboard view works unchanged.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import httpx

from probe.client import protocol
from probe.client.batching import ARRAY, EVENT, SCALARS, BatchBuilder
from probe.client.config import ClientConfig
from probe.client.problems import Problems
from probe.client.sender import Sender
from probe.client.spool import RunSpool, SpoolBusy
from probe.client.transport import Backoff, Transport

Mode = Literal["online", "offline", "disabled"]
_MODES = ("online", "offline", "disabled")

_time = time.time


class Run:
    """A run being logged. Create it with :func:`init`.

    Attributes:
        id: run id (``uuid4().hex`` unless given), also the spool directory name.
        project, name: as shown in the dashboard.
        rank, world_size: this process's place in a distributed job.
        mode: ``"online"``, ``"offline"`` or ``"disabled"`` (also: a rank that does not log).
    """

    def __init__(
        self,
        *,
        run_id: str,
        project: str,
        name: str,
        mode: Mode,
        rank: int = 0,
        world_size: int = 1,
        sender: Sender | None = None,
        problems: Problems | None = None,
        finish_timeout: float = 30.0,
        term_timeout: float = 5.0,
    ) -> None:
        self.id = run_id
        self.project = project
        self.name = name
        self.mode = mode
        self.rank = rank
        self.world_size = world_size
        self._sender = sender
        self._problems = problems or Problems(f"[{run_id[:8]}]")
        self._finish_timeout = finish_timeout
        self._term_timeout = term_timeout
        self._q = sender.queue if sender is not None else None
        self._maxlen = (sender.queue.maxlen or 0) if sender is not None else 0
        self._high_water = sender.high_water if sender is not None else 0
        self._next_step = 0
        self._failed_calls = 0
        self._finish_lock = threading.RLock()  # re-entrant: a SIGTERM may arrive inside finish()
        self.status: str = "running" if sender is not None else "disabled"

    # -- logging (hot path) ------------------------------------------------------------------------

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Queue scalar metrics (floats, ints or 1-element tensors) at ``step``.

        ``step=None`` continues from the last step (+1). Returns in about a microsecond; never
        touches the network and never synchronises a tensor. Tensors are read later, in the
        sender thread: do not modify one in place after logging it.
        """
        if self._q is None:
            return
        try:
            if step is None:
                step = self._next_step
            self._next_step = step + 1
            self._queue_scalars(metrics, step)
        except Exception as exc:  # noqa: BLE001 - never raise into training
            self._log_failed("run.log", exc)

    def log_at(self, metrics: Mapping[str, Any], *, step: int) -> None:
        """Queue scalar metrics at ``step`` like :meth:`log`, without moving the step that
        ``log(metrics)`` continues from: for records of other steps than the user's current one.

        The probe uses it (a Monitor logs a whole interval of past steps at once, InfoBatch logs per
        epoch), so that a training loop that calls ``run.log({"loss": ...})`` without a step keeps
        its own count.
        """
        if self._q is None:
            return
        try:
            self._queue_scalars(metrics, step)
        except Exception as exc:  # noqa: BLE001 - never raise into training
            self._log_failed("run.log_at", exc)

    def _queue_scalars(self, metrics: Mapping[str, Any], step: int) -> None:
        q = self._q
        assert q is not None
        if len(q) >= self._maxlen:
            self._queue_full()
        self._sender.cuda_order.note(metrics.values())  # type: ignore[union-attr]
        q.append((SCALARS, dict(metrics), step, _time()))
        if len(q) >= self._high_water:
            self._sender.wake.set()  # type: ignore[union-attr]

    def _log_failed(self, call: str, exc: Exception) -> None:
        self._failed_calls += 1
        self._problems.report("log", f"{call} failed ({exc!r}); record dropped")

    def log_array(self, key: str, values: Any, *, step: int, layer: str = "") -> None:
        """Queue a vector (spectrum, per-neuron norms, histogram) of ``key``/``layer`` at ``step``."""
        q = self._q
        if q is None:
            return
        try:
            if len(q) >= self._maxlen:
                self._queue_full()
            self._sender.cuda_order.note((values,))  # type: ignore[union-attr]
            q.append((ARRAY, key, values, step, layer, _time()))
        except Exception as exc:  # noqa: BLE001
            self._log_failed("run.log_array", exc)

    def log_event(
        self,
        key: str,
        message: str,
        *,
        step: int | None = None,
        layer: str | None = None,
        level: str = "warning",
        kind: str = "alert",
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue an event (by default a warning-level alert, e.g. ``key="nonfinite"``)."""
        q = self._q
        if q is None:
            return
        try:
            if len(q) >= self._maxlen:
                self._queue_full()
            q.append((EVENT, key, message, step, layer, level, kind, data, _time()))
        except Exception as exc:  # noqa: BLE001
            self._log_failed("run.log_event", exc)

    def _queue_full(self) -> None:
        sender = self._sender
        assert sender is not None
        sender.queue_dropped += 1
        self._problems.report(
            "queue_full",
            f"more than {self._maxlen} records waiting for the sender: dropping the oldest (counted in run.dropped)",
        )

    # -- delivery and end ---------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything logged so far reached the server (offline: the spool).

        With a ``timeout``, keeps waiting through retries and outages until it passes; with
        ``None``, waits for one delivery attempt only, so a call at the end of an epoch can never
        hang training on a dead server. Returns True when everything was delivered.
        """
        if self._sender is None:
            return True
        try:
            return self._sender.flush(timeout)
        except Exception as exc:  # noqa: BLE001
            self._problems.report("flush", f"flush failed ({exc!r})")
            return False

    def finish(self, status: str = "finished", *, timeout: float | None = None) -> None:
        """End the run: deliver (or spool) what is queued, then mark it ``status`` on the server.

        Idempotent; called for you by the context manager, ``atexit``, ``sys.excepthook`` and on
        SIGTERM. Waits at most ``timeout`` seconds (default ``ClientConfig.finish_timeout``; on
        SIGTERM ``ClientConfig.term_timeout``); whatever is not delivered by then stays in the
        spool for ``optiscope sync``.
        """
        if status not in ("finished", "crashed"):
            raise ValueError(f"Invalid status: {status!r} (must be 'finished' or 'crashed')")
        with self._finish_lock:
            if self.status in ("finished", "crashed", "disabled"):
                return
            self.status = status
            self._q = None  # later log calls are no-ops
        _LIVE.discard(self)
        sender = self._sender
        assert sender is not None
        wait = self._finish_timeout if timeout is None else timeout
        try:
            if not sender.close(status, wait):  # type: ignore[arg-type]
                self._problems.report(
                    "finish_timeout", f"finish() gave up after {wait}s; undelivered batches stay in the spool"
                )
        except Exception as exc:  # noqa: BLE001
            self._problems.report("finish", f"finish failed ({exc!r})")
        finally:
            if sender.transport is not None and not sender.is_alive():
                sender.transport.close()  # closes only a client the transport made itself

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.finish("crashed" if exc_type is not None else "finished")

    # -- what went wrong ----------------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Records that will never reach the server: queue or spool full, rejected by the server
        (4xx), or not convertible to a number."""
        return self._failed_calls + (self._sender.lost if self._sender is not None else 0)

    @property
    def problems(self) -> dict[str, int]:
        """Counts of every failure kind seen so far (each was warned about once)."""
        return dict(self._problems.counts)

    @property
    def spool_dir(self) -> str | None:
        """Where this run's undelivered data lives (None for a disabled run)."""
        sender = self._sender
        if sender is None or sender.spool is None:
            return None
        return str(sender.spool.directory)

    @property
    def sender(self) -> Sender | None:
        """The background sender (for diagnostics and tests; not needed for logging)."""
        return self._sender

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, project={self.project!r}, name={self.name!r}, mode={self.mode!r}, rank={self.rank})"


# -- process-wide hooks (installed by the first init, never at import) -----------------------------

_LIVE: set[Run] = set()
"""Unfinished runs. Strong references on purpose: a run the user stopped referencing still has a
live sender thread and queued data, and must still be finished (and flushed) at exit."""
_hooks_lock = threading.Lock()
_hooks_installed = False


def _finish_all(status: str, *, terminated: bool = False) -> None:
    """Finish every live run; ``terminated``: on SIGTERM, all of them within ``term_timeout`` of the
    signal (one budget for the process, not one per run: the grace period is the process's)."""
    start = time.monotonic()
    for run in list(_LIVE):
        timeout = max(0.0, run._term_timeout - (time.monotonic() - start)) if terminated else None
        try:
            run.finish(status, timeout=timeout)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - at exit, nothing may raise
            pass


def _install_hooks() -> None:
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
        atexit.register(_finish_all, "finished")
        previous = sys.excepthook

        def excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
            try:
                previous(exc_type, exc, tb)  # the traceback first: finishing may take a moment
            finally:
                _finish_all("crashed")

        sys.excepthook = excepthook
        _install_sigterm_handler()
        if hasattr(os, "register_at_fork"):
            # A forked child (DataLoader worker) inherits the runs but not the sender thread:
            # logging there would only fill a queue nobody drains.
            os.register_at_fork(after_in_child=_disable_in_child)


def _install_sigterm_handler() -> None:
    """Finish the runs as crashed on SIGTERM, then let the signal do what it did before."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (AttributeError, ValueError):  # pragma: no cover - a platform without SIGTERM
        return
    if previous in (signal.SIG_IGN, None):  # ignored on purpose, or set outside Python: leave it
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        _finish_all("crashed", terminated=True)
        if callable(previous):
            previous(signum, frame)
            return
        signal.signal(signum, signal.SIG_DFL)  # the default action: terminate, status 128 + 15
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_sigterm)


def _disable_in_child() -> None:
    for run in list(_LIVE):
        run._q = None
        run.status = "disabled"
    _LIVE.clear()


# -- init --------------------------------------------------------------------------------------------


def _config_dict(config: Any) -> dict[str, Any]:
    """Accept what people pass as a config: a mapping, a dataclass, an argparse ``Namespace``."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if hasattr(config, "__dict__"):
        return dict(vars(config))
    return {"config": config}


def _distributed(rank: int | None, world_size: int | None) -> tuple[int, int, Any]:
    """``(rank, world_size, dist module or None)`` from arguments, torch.distributed or env."""
    torch = sys.modules.get("torch")
    dist = getattr(torch, "distributed", None) if torch is not None else None
    active = dist is not None and dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if active else int(os.environ.get("RANK", "0") or 0)
    if world_size is None:
        world_size = dist.get_world_size() if active else int(os.environ.get("WORLD_SIZE", "1") or 1)
    return rank, max(1, world_size), dist if active else None


def _shared_run_id(run_id: str | None, rank: int, world_size: int, dist: Any, problems: Problems) -> str:
    if run_id:
        return run_id
    env_id = os.environ.get("OPTISCOPE_RUN_ID")
    if env_id:
        return env_id
    chosen = [protocol.new_run_id() if rank == 0 else None]
    if dist is not None and world_size > 1:
        dist.broadcast_object_list(chosen, src=0)
    elif rank != 0:
        problems.report(
            "no_shared_id",
            "log_all_ranks=True but no process group and no OPTISCOPE_RUN_ID: this rank logs into its own run",
        )
        chosen = [protocol.new_run_id()]
    return str(chosen[0])


def init(
    project: str = "default",
    name: str | None = None,
    config: Mapping[str, Any] | Any | None = None,
    tags: Sequence[str] | None = None,
    *,
    url: str | None = None,
    token: str | None = None,
    mode: Mode | None = None,
    optimizer: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    log_all_ranks: bool = False,
    run_id: str | None = None,
    resume: bool = False,
    resume_from: int | None = None,
    home: str | os.PathLike[str] | None = None,
    settings: ClientConfig | None = None,
    client: httpx.Client | None = None,
) -> Run:
    """Start a run and its background sender; never touches the network itself.

    Args:
        project, name, config, tags, optimizer: run metadata. ``config`` is a mapping, a
            dataclass or an ``argparse.Namespace``; values that are not JSON become strings.
        url, token: server and credentials; default ``OPTISCOPE_URL``/``OPTISCOPE_TOKEN``, then the
            files of a local ``optiscope serve`` (see :class:`~probe.client.config.ClientConfig`).
        mode: ``"online"`` (default, or ``OPTISCOPE_MODE``), ``"offline"`` (spool only; deliver
            later with ``optiscope sync``) or ``"disabled"`` (every call is a no-op).
        rank, world_size: override what torch.distributed / ``RANK`` / ``WORLD_SIZE`` say.
        log_all_ranks: every rank logs into one shared run (keys of rank r > 0 get ``rank<r>.``);
            must be the same on every rank, since rank 0 broadcasts the run id.
        run_id: choose the id (``[A-Za-z0-9_-]{1,64}``); default ``uuid4().hex``.
        resume: continue the existing run ``run_id`` (after a restart): it is marked running again and
            ``config`` is merged into the stored one (the keys that changed are recorded in a ``resume``
            event). A run id the server does not know is simply created.
        resume_from: the step your checkpoint resumes at (implies ``resume``): everything the run logged
            at this step or later is dropped first, so steps logged again replace the abandoned ones
            instead of being stored twice. Applied once, also if the request is replayed later.
        home: data directory (default ``OPTISCOPE_HOME`` or ``~/.optiscope``).
        settings: tuning (flush interval, limits); url/token/home arguments still override it.
        client: an ``httpx.Client`` to send through (tests pass ``TestClient(app)``).

    Raises:
        ValueError: for an unknown ``mode`` or a malformed ``run_id``.
    """
    mode = mode or os.environ.get("OPTISCOPE_MODE") or "online"  # type: ignore[assignment]
    if mode not in _MODES:
        raise ValueError(f"Invalid mode: {mode!r} (must be one of {', '.join(_MODES)})")
    if run_id is not None and not protocol.RUN_ID_PATTERN.match(run_id):
        raise ValueError(f"Invalid run_id: {run_id!r} (must match [A-Za-z0-9_-]{{1,64}})")
    resume = resume or resume_from is not None
    if resume and not run_id:
        raise ValueError("Invalid resume: needs the run_id of the run to continue")
    if resume_from is not None and not -(2**63) <= int(resume_from) < 2**63:
        raise ValueError(f"Invalid resume_from: {resume_from!r} (must be an int64 step)")
    if settings is None:
        settings = ClientConfig.from_env(url, token, home)
    elif url is not None or token is not None or home is not None:
        resolved = ClientConfig.from_env(url or settings.url, token or settings.token, home or settings.home)
        settings = settings.replace(url=resolved.url, token=resolved.token, home=resolved.home)

    problems = Problems()
    rank_, world_size_, dist = _distributed(rank, world_size)
    # A run id minted here is new to the server; one given to us may already hold batches.
    minted_here = not run_id and not os.environ.get("OPTISCOPE_RUN_ID")
    if log_all_ranks and mode != "disabled":
        run_id = _shared_run_id(run_id, rank_, world_size_, dist, problems)
    run_id = run_id or (protocol.new_run_id() if rank_ == 0 else os.environ.get("OPTISCOPE_RUN_ID", ""))
    problems.prefix = f"[{run_id[:8]}]"
    name = name or f"run-{run_id[:8]}"  # derived from the id, so every rank proposes the same name

    if mode == "disabled" or (rank_ != 0 and not log_all_ranks):
        return Run(run_id=run_id, project=project, name=name, mode="disabled", rank=rank_, world_size=world_size_)

    create_body: protocol.RunCreate = {
        "id": run_id,
        "project": project,
        "name": name,
        "config": protocol.encode_json_value(_config_dict(config)),
        "tags": [str(t) for t in (tags or [])],
        "optimizer": optimizer,
        "host": socket.gethostname(),
        "world_size": world_size_,
        "rank": rank_,
    }
    if resume and rank_ == 0:
        create_body["resume"] = {"id": protocol.new_run_id(),
                                 "from_step": None if resume_from is None else int(resume_from)}
    owns_run = rank_ == 0
    spool: RunSpool | None = None
    try:
        spool = RunSpool.create(
            settings.spool_dir,
            run_id if owns_run else f"{run_id}.r{rank_}",
            create_body,
            owns_run=owns_run,
            max_bytes=settings.spool_max_bytes,
            segment_bytes=settings.spool_segment_bytes,
            fsync=settings.fsync,
        )
    except (OSError, SpoolBusy) as exc:
        problems.report("no_spool", f"no spool directory under {settings.spool_dir} ({exc}); an outage will lose data")
        if mode == "offline":
            problems.report("offline_no_spool", "offline mode without a spool keeps nothing")

    transport = None
    if mode == "online":
        transport = Transport(
            settings.api,
            settings.token,
            client=client,
            timeout=settings.timeout,
            max_attempts=settings.max_attempts,
            backoff=Backoff(settings.backoff_base, settings.backoff_max),
        )
    builder = BatchBuilder(
        run_id,
        rank=rank_ if log_all_ranks else None,
        key_prefix=f"rank{rank_}." if log_all_ranks and rank_ else "",
        session=None if minted_here else protocol.new_run_id()[:8],
        batch_points=settings.batch_points,
        problems=problems,
    )
    sender = Sender(
        run_id,
        create_body,
        config=settings,
        transport=transport,
        spool=spool,
        builder=builder,
        problems=problems,
        owns_run=owns_run,
    )
    run = Run(
        run_id=run_id,
        project=project,
        name=name,
        mode=mode,  # type: ignore[arg-type]
        rank=rank_,
        world_size=world_size_,
        sender=sender,
        problems=problems,
        finish_timeout=settings.finish_timeout,
        term_timeout=settings.term_timeout,
    )
    _install_hooks()
    _LIVE.add(run)
    sender.start()
    return run
