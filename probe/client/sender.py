"""The one background thread between ``Run.log`` and the server.

Per wake-up (every ``flush_interval``, or early when the queue passes its high-water mark or a
``flush()`` asks) it drains what is queued, builds batches (:mod:`probe.client.batching`) and
delivers each one:

* **online** and nothing spooled: POST it (the transport retries a few times with backoff; a
  cycle somebody waits for — ``flush()`` — makes one try per request, and what fails is spooled);
* otherwise — the server is down or slow, or earlier batches still wait on disk — append it to
  the run's spool, so order is kept and memory stays bounded however long the outage lasts.

While batches wait in the spool, the thread retries the oldest one on an exponential backoff with
jitter (using timestamps, never sleeping, so ``finish()`` is never stuck behind a long wait) and
replays the spool in order once the server answers. At ``finish()`` everything still queued goes
to the spool first and is then replayed while time allows, so a server that stops answering at the
very end cannot take records with it when the process exits. A 413 (body too large for the
server, or for a proxy in front of it) sends the batch again in halves, down to single records; any
other 4xx that is not 429 is reported once; auth failures stop sending but keep spooling so that
``optiscope sync --token ...`` can deliver later.

States: ``online`` (sending), ``outage`` (spooling, probing), ``halted`` (permanent refusal:
spooling only), ``offline`` (mode="offline": spooling only, by design).
"""

from __future__ import annotations

import math
import queue
import random
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable, Iterator

from probe.client import protocol
from probe.client.batching import BatchBuilder, Record
from probe.client.config import ClientConfig
from probe.client.problems import Problems
from probe.client.spool import RunSpool
from probe.client.transport import Backoff, Encoded, PermanentError, Transport, TransientError

ONLINE, OUTAGE, HALTED, OFFLINE = "online", "outage", "halted", "offline"

PREFETCH_MIN_RECORDS = 1000
"""Fewer records than this (one batch or so) are built inline: no helper thread for them."""

PREFETCH_DEPTH = 2
"""Batches built and encoded ahead of the one in flight (bounds the extra memory)."""

_DONE = object()

REPLAY_BUDGET_S = 0.25
"""Seconds of replay per wake-up before the queue is drained again, so that during a long replay
new records keep moving to disk instead of piling up in memory."""

_AUTH_STATUSES = (401, 403)

END_REQUEST_SHARE = 0.4
"""At the end, no request may take longer than this share of the time ``finish()`` waits: the last
batch and the final status both fit before the deadline (0.8 of it), however short the wait is (a
SIGTERM allows seconds, see ``ClientConfig.term_timeout``), instead of one 10 s request eating it all."""


class CudaOrder:
    """Orders the sender thread's device-to-host copies after the streams that produced logged tensors.

    The sender copies tensors on its own thread's current stream; a value computed on another stream
    (a side stream, or any stream the training thread made current) could be read before it is
    written. ``note`` records a CUDA event on the producer's current stream at ``log()`` time (no host
    sync) *before* the record is queued; the sender takes the queue, then waits (``wait``) on every event
    noted so far (``Stream.wait_event``: device-side, no host sync), so each copy is ordered after its
    producer. Without CUDA (torch not imported or CUDA never initialised) ``note`` returns at once.
    """

    def __init__(self, maxlen: int | None = None) -> None:
        # At most one mark per queued record, so the queue's bound is theirs: when the queue drops its
        # oldest records, the marks of the newest ones (which cover older work on the same stream) stay.
        self._marks: deque[tuple[Any, Any]] = deque(maxlen=maxlen)

    def note(self, values: Iterable[Any]) -> None:
        """Training thread: mark the current stream of each CUDA device among ``values``."""
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_initialized():
            return
        devices = {v.device for v in values if isinstance(v, torch.Tensor) and v.is_cuda}
        for device in devices:
            stream = torch.cuda.current_stream(device)
            event = torch.cuda.Event()
            event.record(stream)
            self._marks.append((device, event))

    def wait(self) -> None:
        """Sender thread: make its current streams wait for every event noted until now."""
        n = len(self._marks)
        if not n:
            return
        torch = sys.modules["torch"]
        for _ in range(n):
            device, event = self._marks.popleft()
            torch.cuda.current_stream(device).wait_event(event)


class _StopReplay(Exception):
    """Raised inside a replay to leave the current batch first in line."""


class _Pause(Exception):
    """Raised inside a replay when its time budget is spent or the queue backs up."""


class _Waiter:
    __slots__ = ("event", "ok")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ok = False


class Sender:
    """Owns the bounded queue, the spool and the transport of one run (one rank of it).

    Args:
        run_id: the run.
        create_body: ``POST /runs`` body, sent (idempotently) before the first batch.
        config: timings and limits.
        transport: ``None`` in offline mode.
        spool: ``None`` if the spool directory could not be created (then an outage loses data,
            counted in :attr:`lost`).
        builder: record → batch conversion.
        problems: failure counters (shared with the :class:`~probe.client.run.Run`).
        owns_run: whether this sender heartbeats and finishes the run (rank 0 of a shared run).
        clock: monotonic seconds (tests inject a fake one).
        rng: jitter for the outage backoff.
    """

    def __init__(
        self,
        run_id: str,
        create_body: protocol.RunCreate,
        *,
        config: ClientConfig,
        transport: Transport | None,
        spool: RunSpool | None,
        builder: BatchBuilder,
        problems: Problems,
        owns_run: bool = True,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.run_id = run_id
        self.create_body = create_body
        self.config = config
        self.transport = transport
        self.spool = spool
        self.builder = builder
        self.problems = problems
        self.owns_run = owns_run
        self._clock = clock
        self._rng = rng or random.Random()
        self._backoff = Backoff(config.backoff_base, config.backoff_max)

        self.queue: deque[Record] = deque(maxlen=config.queue_size)
        self._ahead: tuple[protocol.Batch, Encoded | None] | None = None  # the batch being handled, encoded
        self.cuda_order = CudaOrder(config.queue_size)
        self.high_water = max(1, config.queue_size // 2)
        self.wake = threading.Event()
        self._closing = threading.Event()
        self._closed = threading.Event()
        self._waiters: list[_Waiter] = []
        self._waiters_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._final_status: protocol.Status = "finished"
        self._finish_deadline = math.inf  # set by close()
        self._finish_requested = False  # a request was made since closing began
        self._end_timeout = config.timeout  # seconds per request once closing (set by close())
        self._spool_lock = threading.Lock()
        self._abandoned = False
        """Set (under ``_spool_lock``) when close() ran out of time and its caller took the spool over."""

        self.state = OFFLINE if transport is None else ONLINE
        self.created = False
        self._outage_attempt = 0
        self._next_try = 0.0
        self._next_heartbeat = 0.0
        self._not_found = 0

        self.queue_dropped = 0
        """Records dropped because the in-memory queue was full (incremented by ``Run``)."""
        self.rejected = 0
        """Records the server refused with a 4xx (bad data; resending cannot help)."""
        self.unspooled = 0
        """Records lost in an outage because no spool was available."""
        self.sent_batches = 0
        self.duplicate_batches = 0
        self.split_batches = 0
        """Batches the server refused as too large (413) and that were sent again in halves."""
        self.spooled_batches = 0

    # -- counters -------------------------------------------------------------------------------------

    @property
    def lost(self) -> int:
        """Every record that will never reach the server, whatever the reason."""
        spool_dropped = self.spool.dropped_records if self.spool is not None else 0
        return self.queue_dropped + self.rejected + self.unspooled + spool_dropped + self.builder.lost

    # -- lifetime (called from the training thread) ---------------------------------------------------

    def start(self) -> None:
        if self.transport is not None:
            # The first cycle at once, not after a flush interval: the run exists on the server (and the
            # connection is open) from the start, so a short run's finish() does not also pay for them.
            self.wake.set()
        self._thread = threading.Thread(target=self._run, name=f"optiscope-sender-{self.run_id[:8]}", daemon=True)
        self._thread.start()

    def flush(self, timeout: float | None = None) -> bool:
        """Deliver everything queued so far; True when it all reached the server (or, offline, the disk).

        ``timeout=None`` waits for one delivery cycle; a number keeps asking until it passes.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed.is_set() or self._thread is None:
                return self._everything_delivered()
            waiter = _Waiter()
            with self._waiters_lock:
                self._waiters.append(waiter)
            self.wake.set()
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not waiter.event.wait(remaining):
                return False
            if waiter.ok or deadline is None:
                return waiter.ok
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # Not delivered yet (an outage or a retry pending): look again after a sender cycle.
            self._closed.wait(min(remaining, self.config.flush_interval))

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self, status: protocol.Status, timeout: float | None) -> bool:
        """Drain, deliver or spool everything, finish the run; True if the thread ended in time.

        Returns after ``timeout`` at the latest, whatever the server does. If the thread is still
        busy then (a request sent before closing began, under the client's full ``timeout``), the
        caller's thread takes the spool over (:meth:`_take_over`): what is still queued goes to
        disk for ``optiscope sync`` instead of dying with the process in memory.
        """
        if self._thread is None:
            return True
        self._final_status = status
        # the end's network work must be over before finish() stops waiting (set here, not when the
        # thread notices: a request in flight now already eats into that time)
        self._finish_deadline = self._clock() + 0.8 * timeout if timeout is not None else math.inf
        if timeout is not None:
            self._end_timeout = min(self.config.timeout, END_REQUEST_SHARE * timeout)
        self._closing.set()
        self.wake.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            return True
        self._take_over()
        return False

    def _take_over(self) -> None:
        """From the caller of :meth:`close`, once its time is up and the thread is stuck in a request:
        spool what is still queued (and the batch in flight: should it arrive after all, the server
        answers its copy as a duplicate) with the final status, and leave the thread nothing to write.
        Records the thread had taken for later batches of the same cycle are counted as lost by it."""
        with self._spool_lock:
            self._abandoned = True
            spool = self.spool
            if spool is None:
                n = len(self.queue)
                self.queue.clear()
                if n:
                    self.unspooled += n
                    self.problems.report("no_spool",
                                         f"finish() ran out of time with no spool on disk; {n} records lost")
                return
            ahead = self._ahead
            records = [self.queue.popleft() for _ in range(len(self.queue))]
            try:
                spool.new_segment()  # never the segment a replay in flight may delete when it is done
                if ahead is not None:
                    spool.append(ahead[0])
                if records:
                    self.cuda_order.wait()
                    for batch in self.builder.iter_build(records):
                        spool.append(batch)
                spool.write_finish(self._final_status)
            except OSError as exc:
                self.problems.report("spool_write", f"could not write the spool at the end ({exc})")
            finally:
                spool.release()
            self.problems.report(
                "unsynced",
                f"the server did not answer in time: run {self.run_id} is kept in {spool.directory}; "
                "run `optiscope sync` to deliver it",
            )

    def _limits(self) -> dict[str, Any]:
        """Per-request ``timeout`` and ``cancel`` for the transport: once closing, a request gets at most
        the end's share of the time and the transport's retries stop."""
        return {"timeout": self._end_timeout if self._closing.is_set() else None, "cancel": self._closing}

    # -- the thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self.wake.wait(self.config.flush_interval)
            self.wake.clear()
            closing = self._closing.is_set()
            try:
                self._cycle(final=closing)
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any bug
                self.problems.report("sender", f"sender error: {exc!r}")
            if closing:
                try:
                    self._replay_before_exit()
                    self._shutdown()
                except Exception as exc:  # noqa: BLE001
                    self.problems.report("sender", f"error while finishing the run: {exc!r}")
                finally:
                    self._closed.set()
                    self._release_waiters()
                return

    def _cycle(self, *, final: bool = False) -> None:
        with self._waiters_lock:
            waiters, self._waiters = self._waiters, []
        if final and self.spool is not None:
            # The end: each batch goes straight to a server that is up while a whole request still
            # fits before finish's deadline, else to disk, so that nothing taken from the queue can be
            # lost whatever the network does while finish() waits; _replay_before_exit then sends
            # what is on disk (and answers the flush() callers waiting now, like those who come later).
            if self.state == ONLINE and not self.created:
                self._catch_up(attempts=1)
            self._take_queue(self._send_at_finish, everything=True)
            with self._waiters_lock:
                self._waiters[:0] = waiters
            return
        # Somebody waits (flush, or finish without a spool): one try per request, never the
        # transport's retries (max_attempts x timeout); what fails is spooled and retried with backoff.
        attempts = 1 if (final or waiters) else None
        # Older data first: create the run and replay the spool (when due), then the new records.
        now = self._clock()
        if self.state in (ONLINE, OUTAGE) and (final or now >= self._next_try):
            if self.state == OUTAGE or (final and not self.created):
                self._catch_up(attempts=1)  # a probe: one try, the backoff is in _next_try
            elif not self.created or self.spool:
                self._catch_up(attempts=attempts)
        self._take_queue(lambda batch: self._deliver(batch, attempts), everything=final)
        now = self._clock()
        if self.owns_run and self.state == ONLINE and self.created and now >= self._next_heartbeat and not final:
            self._heartbeat(now)
        ok = self._everything_delivered()
        for waiter in waiters:
            waiter.ok = ok
            waiter.event.set()

    def _take_queue(self, handle: Callable[[protocol.Batch], None], *, everything: bool) -> None:
        """Batch what is queued now and hand each batch on; a record logged meanwhile waits for the
        next wake-up, except with ``everything`` (the end), when the queue is emptied."""
        while True:
            n = len(self.queue)
            if n:
                records = [self.queue.popleft() for _ in range(n)]
                self.cuda_order.wait()  # after taking the records: covers every event noted for them
                for batch, encoded in self._batches(records):
                    self._ahead = (batch, encoded)
                    try:
                        handle(batch)
                    except Exception as exc:  # noqa: BLE001 - taken from the queue: count it, never lose it silently
                        self._lost(batch, ("sender", f"sender error ({exc!r})"))
                    finally:
                        self._ahead = None
            if not everything or not self.queue:
                return

    def _batches(self, records: list[Record]) -> Iterator[tuple[protocol.Batch, Encoded | None]]:
        """The batches of ``records`` in order, each with its request body when it was encoded ahead.

        Why a helper thread: a run that logs faster than the flush interval hands the sender many
        batches at once (all of them at ``finish()``). Built and sent one after the other, the server
        waits while this process converts and encodes, and this process waits while the server
        stores. So from the second batch on, a short-lived thread converts and encodes batch k+1 while
        batch k is in flight (the sender blocks in the socket, the GIL released), at most
        :data:`PREFETCH_DEPTH` ahead. Every decision (send, spool, split) is still made here, in order,
        after the previous batch's answer; a batch spooled instead is simply not sent as encoded.
        """
        built = self.builder.iter_build(records)
        first = next(built, None)
        if first is None:
            return
        if self.transport is None or len(records) < PREFETCH_MIN_RECORDS:
            yield first, None
            for batch in built:
                yield batch, None
            return
        transport = self.transport
        ahead: queue.Queue[Any] = queue.Queue(maxsize=PREFETCH_DEPTH)
        stop = threading.Event()

        def hand_over(item: Any) -> bool:
            """Put ``item`` in the bounded queue; False once the sender has stopped listening."""
            while not stop.is_set():
                try:
                    ahead.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for batch in built:
                    if not hand_over((batch, transport.encode(batch))):
                        return
            except BaseException as exc:  # noqa: BLE001 - handed to the sender thread, which counts it
                hand_over(exc)
            else:
                hand_over(_DONE)

        producer = threading.Thread(target=produce, name=f"optiscope-encoder-{self.run_id[:8]}", daemon=True)
        producer.start()
        try:
            yield first, None
            while True:
                item = ahead.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    # the builder counts what it cannot convert; anything else is a bug, and the
                    # records not yet built are lost: say so rather than drop them silently
                    self.problems.report("sender", f"sender error while building batches: {item!r}")
                    return
                yield item
        finally:
            stop.set()
            producer.join()

    def _release_waiters(self) -> None:
        with self._waiters_lock:
            waiters, self._waiters = self._waiters, []
        ok = self._everything_delivered()
        for waiter in waiters:
            waiter.ok = ok
            waiter.event.set()

    def _everything_delivered(self) -> bool:
        if len(self.queue):
            return False
        if self.state == OFFLINE:
            return self.spool is not None
        return self.state == ONLINE and self.created and not self.spool

    # -- delivery ---------------------------------------------------------------------------------------

    def _deliver(self, batch: protocol.Batch, attempts: int | None) -> None:
        # A backed-up queue means the server is slower than training logs: spool (fast, ordered)
        # and let replay catch up, rather than let memory fill and drop records.
        if self._closing.is_set():  # a cycle that began before close(): the end's rules from now on
            self._send_at_finish(batch)
            return
        backed_up = len(self.queue) >= self.high_water
        if self.state == ONLINE and self.created and not self.spool and not backed_up:
            try:
                self._post(batch, attempts=attempts)
                return
            except TransientError as exc:
                self._enter_outage(exc)
            except _StopReplay:
                pass  # 404 or auth: keep the batch (below), the state says what comes next
        self._to_spool(batch)

    def _send_at_finish(self, batch: protocol.Batch) -> None:
        """POST at finish when the server is up and the request's whole ``timeout`` ends before the
        deadline; otherwise (or when it fails) the spool. Writing every batch to disk first and
        reading it back doubled the end's work: a run that logged faster than the flush interval
        spent its finish() encoding, fsyncing and re-reading its whole tail."""
        if (self.state == ONLINE and self.created and not self.spool
                and self._clock() + self._end_timeout <= self._finish_deadline):
            self._finish_requested = True
            try:
                self._post(batch, attempts=1)
                return
            except TransientError as exc:
                self._enter_outage(exc)
            except _StopReplay:
                pass
        self._store_at_finish(batch)

    def _store_at_finish(self, batch: protocol.Batch) -> None:
        """The spool first. A disk that fails sends the batch straight away (one try), but only in
        order (nothing older waiting in the spool) and only while a request fits in finish's time."""
        failure = self._spool_append(batch)
        if failure is None:
            return
        if self.state == ONLINE and self.created and not self.spool and self._start_request():
            try:
                self._post(batch, attempts=1)
                return
            except TransientError as exc:
                self._enter_outage(exc)
            except _StopReplay:
                pass
        self._lost(batch, failure)

    def _to_spool(self, batch: protocol.Batch) -> None:
        failure = self._spool_append(batch)
        if failure is not None:
            self._lost(batch, failure)

    def _lost(self, batch: protocol.Batch, failure: tuple[str, str]) -> None:
        problem, why = failure
        n = protocol.batch_size(batch)
        self.unspooled += n
        self.problems.report(problem, f"{why}; {n} records lost")

    def _spool_append(self, batch: protocol.Batch) -> tuple[str, str] | None:
        """Append to the spool: None when stored, else (problem key, why not)."""
        if self.spool is None:
            return "no_spool", "server unreachable and no spool on disk"
        dropped_before = self.spool.dropped_records
        with self._spool_lock:
            if self._abandoned:
                return "finish_timeout", "finish() ran out of time while this batch waited behind a request"
            try:
                self.spool.append(batch)
                self.spooled_batches += 1
            except OSError as exc:
                return "spool_write", f"could not write the spool ({exc})"
        newly_dropped = self.spool.dropped_records - dropped_before
        if newly_dropped:
            self.problems.report(
                "spool_full",
                f"spool over its limit ({self.config.spool_max_bytes} bytes) in {self.spool.directory}: "
                "dropping the oldest batches (counted in run.dropped)",
                newly_dropped,
            )
        return None

    def _post(self, batch: protocol.Batch, *, attempts: int | None) -> None:
        """Send one batch; handles 4xx here. Raises TransientError, or _StopReplay to keep the batch."""
        assert self.transport is not None
        ahead = self._ahead
        encoded = ahead[1] if ahead is not None and ahead[0] is batch else None
        try:
            answer = self.transport.send_batch(self.run_id, batch, attempts=attempts, encoded=encoded,
                                               **self._limits())
        except PermanentError as exc:
            if exc.status in _AUTH_STATUSES:
                self._halt(exc)
                raise _StopReplay from exc
            if exc.status == 404:  # the run is unknown (deleted, or created elsewhere): create it again
                self._not_found += 1
                if self._not_found > 3:
                    self._halt(exc)
                else:
                    self.created = False
                    self._enter_outage(TransientError(str(exc)), immediate=True)
                raise _StopReplay from exc
            halves = protocol.split_batch(batch) if exc.status == 413 else None
            if halves is not None:  # too large for the server (or a proxy before it): send it in halves
                self.split_batches += 1
                for half in halves:
                    self._post(half, attempts=attempts)
                return
            n = protocol.batch_size(batch)
            self.rejected += n
            self.problems.report(
                f"http_{exc.status}", f"server rejected a batch ({exc}); {n} records dropped, not retried", n
            )
            return
        self.sent_batches += 1
        if isinstance(answer, dict) and answer.get("duplicate"):
            self.duplicate_batches += 1

    def _create(self, attempts: int | None) -> None:
        assert self.transport is not None
        try:
            self.transport.create_run(self.create_body, attempts=attempts, **self._limits())
        except PermanentError as exc:
            self._halt(exc)
            raise _StopReplay from exc
        self.created = True
        self._not_found = 0

    def _catch_up(self, attempts: int | None) -> bool:
        """Create the run if needed, then replay the spool (oldest first); leave outage on success.

        Returns False when the server failed (or refused) this time, True otherwise — including
        when the replay paused to let the queue drain.
        """
        try:
            if not self.created:
                if not self._start_request():
                    raise _Pause
                self._create(attempts)
            if self.spool:
                assert self.spool is not None
                deadline = self._clock() + REPLAY_BUDGET_S

                def send(batch: protocol.Batch) -> None:
                    if self._abandoned:
                        raise _StopReplay  # the spool is no longer this thread's
                    if self._clock() > deadline or len(self.queue) >= self.high_water or not self._start_request():
                        raise _Pause
                    self._post(batch, attempts=attempts)

                self.spool.replay(send)
        except TransientError as exc:
            self._enter_outage(exc)
            return False
        except _StopReplay:
            return False
        except _Pause:
            self._next_try = 0.0
            self.wake.set()  # continue right after draining the queue, not a flush interval later
            return True
        except OSError as exc:
            self.problems.report("spool_read", f"could not read the spool ({exc})")
            return False
        if not self.spool and self.state == OUTAGE:
            self.state = ONLINE
            self._outage_attempt = 0
            self._next_try = 0.0
            # At once: after a long outage the reaper may have marked the run crashed, and a
            # heartbeat is what brings it back to "running".
            self._next_heartbeat = 0.0
        return True

    def _time_for_a_request(self) -> bool:
        """Whether a request may start now. Before finish always; at finish the first one (the data is
        on disk whatever happens to it), then only one whose whole ``timeout`` ends before the deadline."""
        if not self._closing.is_set() or not self._finish_requested:
            return True
        return self._clock() + self._end_timeout <= self._finish_deadline

    def _start_request(self) -> bool:
        """:meth:`_time_for_a_request`, counting the request as made when it may start."""
        if not self._time_for_a_request():
            return False
        self._finish_requested |= self._closing.is_set()
        return True

    def _replay_before_exit(self) -> None:
        """At finish, replay the spool before the finish deadline: one try per request, each request
        only if it fits (:meth:`_time_for_a_request`), and after a transient failure up to
        ``max_attempts`` tries in all, on the outage backoff (a paused replay is not a failure). What
        is left stays in the spool for ``optiscope sync``."""
        failures = 0
        while (self.spool or not self.created) and self.state in (ONLINE, OUTAGE):
            if not self._time_for_a_request():
                return
            # A request of this finish already failed (a batch sent straight away at the end): its
            # backoff, or the server's Retry-After, holds here too.
            if self.state == OUTAGE and self._finish_requested and not self._wait_to_retry():
                return
            if self._catch_up(attempts=1):
                continue
            failures += 1
            if failures >= self.config.max_attempts or self.state not in (ONLINE, OUTAGE):
                return
            if not self._wait_to_retry():
                return

    def _wait_to_retry(self) -> bool:
        """At finish, sleep until the outage backoff allows the next try, if that try still ends before
        the finish deadline; False (no wait) when it would not: the process may exit in the middle of
        it. Sleeping is fine here: training is over."""
        retry_at = max(self._next_try, self._clock())
        if retry_at + self._end_timeout > self._finish_deadline:
            return False
        time.sleep(max(retry_at - self._clock(), 0.0))
        return True

    def _enter_outage(self, exc: TransientError, *, immediate: bool = False) -> None:
        if self.state == HALTED:
            return
        if self.state != OUTAGE:
            where = self.spool.directory if self.spool is not None else "memory (no spool available)"
            self.problems.report(
                "outage", f"server unreachable ({exc}); spooling to {where} and retrying with backoff"
            )
        self.state = OUTAGE
        delay = 0.0 if immediate else self._backoff.delay(self._outage_attempt, self._rng)
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        self._outage_attempt += 1
        self._next_try = self._clock() + delay

    def _halt(self, exc: PermanentError) -> None:
        self.state = HALTED
        where = self.spool.directory if self.spool is not None else "nowhere (no spool)"
        self.problems.report(
            f"http_{exc.status}",
            f"server refused the run ({exc}). Nothing more is sent; data is kept in {where}. "
            "Fix the URL/token (OPTISCOPE_URL, OPTISCOPE_TOKEN) and run `optiscope sync`.",
        )

    def _heartbeat(self, now: float) -> None:
        assert self.transport is not None
        self._next_heartbeat = now + self.config.heartbeat_interval
        try:
            self.transport.heartbeat(self.run_id, attempts=1)
        except (TransientError, PermanentError):
            pass  # the next batch finds out whether the server is really gone

    def _mark_finished(self, status: protocol.Status) -> str | None:
        """POST the final status: up to ``max_attempts`` tries on the backoff, each only if it fits
        before the finish deadline. None when done, else why not."""
        assert self.transport is not None
        failure = "no time left before finish_timeout"
        for _ in range(self.config.max_attempts):
            if not self._start_request():
                return failure
            try:
                self.transport.finish(self.run_id, status, attempts=1, **self._limits())
                return None
            except PermanentError as exc:
                return str(exc)
            except TransientError as exc:
                failure = str(exc)
                self._enter_outage(exc)
                if not self._wait_to_retry():
                    return failure
        return failure

    def _shutdown(self) -> None:
        """Mark the run finished (or leave the status for ``optiscope sync``) and close the spool.

        The spool is touched under ``_spool_lock``, and not at all once :meth:`_take_over` has it;
        the network call is made outside the lock so that a take-over never waits for it."""
        status = self._final_status
        if self.state == ONLINE and self.created and not self.spool and self.transport is not None:
            if not self.owns_run:
                self._with_spool(lambda spool: spool.remove())
                return
            failure = self._mark_finished(status)
            if failure is not None:
                self.problems.report("finish", f"could not mark the run {status} on the server ({failure})")

                def keep(spool: RunSpool) -> None:
                    spool.write_finish(status)  # `optiscope sync` marks it
                    spool.release()

                self._with_spool(keep)
                return
            self._with_spool(lambda spool: spool.remove())
            return

        def keep_pending(spool: RunSpool) -> None:
            spool.write_finish(status)
            pending = spool.pending_batches
            spool.release()
            if self.state != OFFLINE:
                self.problems.report(
                    "unsynced",
                    f"{pending} batches of run {self.run_id} are kept in {spool.directory}; "
                    "run `optiscope sync` to deliver them",
                )

        self._with_spool(keep_pending)

    def _with_spool(self, act: Callable[[RunSpool], None]) -> None:
        """``act(spool)`` under the lock, unless there is no spool or the caller of close() took it over."""
        with self._spool_lock:
            if self.spool is not None and not self._abandoned:
                act(self.spool)

    def _debug_state(self) -> dict[str, Any]:
        """A snapshot for tests and the benchmark."""
        return {
            "state": self.state,
            "created": self.created,
            "spooled": self.spool.pending_batches if self.spool is not None else 0,
            "sent": self.sent_batches,
            "duplicates": self.duplicate_batches,
            "lost": self.lost,
        }
