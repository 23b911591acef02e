"""The sender's outage schedule, driven by hand: a fake clock, no thread, no sleeps.

``_cycle()`` is what the thread runs per wake-up; calling it directly makes the backoff schedule
observable request by request.
"""

from __future__ import annotations

import random
from pathlib import Path

from probe.client.batching import SCALARS, BatchBuilder
from probe.client.config import ClientConfig
from probe.client.problems import Problems
from probe.client.sender import Sender
from probe.client.spool import RunSpool
from probe.client.transport import Backoff, Transport

from .conftest import FakeServer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _sender(server: FakeServer, settings: ClientConfig, clock: FakeClock) -> Sender:
    body = {"id": "run1", "project": "p", "name": "n", "config": {}, "tags": [], "world_size": 1}
    transport = Transport(settings.api, "tok", client=server.client(), max_attempts=1,
                          backoff=Backoff(1.0, 8.0), sleep=lambda s: None)
    return Sender(
        "run1", body, config=settings.replace(backoff_base=1.0, backoff_max=8.0), transport=transport,
        spool=RunSpool.create(settings.spool_dir, "run1", body), builder=BatchBuilder("run1"),
        problems=Problems(), clock=clock, rng=random.Random(0),
    )


def test_outage_probes_follow_exponential_backoff_then_replay_in_order(
    fake_server: FakeServer, fast_settings: ClientConfig
) -> None:
    clock = FakeClock()
    sender = _sender(fake_server, fast_settings, clock)
    fake_server.down = True
    probe_times = []
    for tick in range(400):  # 40 s of wake-ups every 0.1 s, one record each
        sender.queue.append((SCALARS, {"x": float(tick)}, tick, clock.now))
        before = len(fake_server.requests)
        sender._cycle()
        if len(fake_server.requests) > before:
            probe_times.append(clock.now)
        clock.now += 0.1
    gaps = [b - a for a, b in zip(probe_times, probe_times[1:])]
    # equal jitter on 1, 2, 4, 8, 8, ... s: each gap is within [ceiling/2, ceiling] (+ one tick)
    ceilings = [min(8.0, 2.0**k) for k in range(len(gaps))]
    assert all(c / 2 <= g <= c + 0.11 for g, c in zip(gaps, ceilings)), gaps
    assert 5 <= len(probe_times) <= 12  # not one request per wake-up
    assert sender.state == "outage" and sender.spool.pending_batches == 400

    assert fake_server.heartbeats == 0  # no heartbeats into a dead server

    fake_server.down = False
    clock.now += 10
    while sender.state != "online":
        sender._cycle()
    assert fake_server.steps("x") == list(range(400))  # created first, then replayed in order
    assert fake_server.heartbeats == 1  # at once after the outage
    sender.spool.release()


def test_direct_send_when_online_and_nothing_spooled(fake_server: FakeServer, fast_settings: ClientConfig) -> None:
    clock = FakeClock()
    sender = _sender(fake_server, fast_settings, clock)
    sender.queue.extend((SCALARS, {"x": float(i)}, i, clock.now) for i in range(10))
    sender._cycle()
    assert sender.created and not sender.spool and sender.sent_batches == 1
    assert [p for _, p in fake_server.requests] == ["/api/v1/runs", "/api/v1/runs/run1/batches",
                                                    "/api/v1/runs/run1/heartbeat"]
    assert not Path(sender.spool.directory / "000000000001.jsonl").exists()
    sender.spool.release()


def _builder_sender(server: FakeServer, settings: ClientConfig, clock: FakeClock, batch_points: int) -> Sender:
    sender = _sender(server, settings, clock)
    sender.builder = BatchBuilder("run1", batch_points=batch_points)
    return sender


def test_many_batches_are_encoded_ahead_and_arrive_in_order(fake_server: FakeServer,
                                                             fast_settings: ClientConfig) -> None:
    """A big take (finish after a fast loop) is built and encoded on the helper thread one batch ahead
    of the POST in flight; the server still sees every batch once, in order, every point stored."""
    import threading

    clock = FakeClock()
    sender = _builder_sender(fake_server, fast_settings, clock, batch_points=200)
    fake_server.delay = 0.002  # each POST waits on the "server" while the next batch is encoded
    encoder_threads: set[str] = set()
    encode = sender.transport.encode

    def spy(body):  # noqa: ANN001, ANN202 - records which thread encoded a batch body
        if isinstance(body, dict) and "batch_id" in body:
            encoder_threads.add(threading.current_thread().name)
        return encode(body)

    sender.transport.encode = spy  # type: ignore[method-assign]
    sender.queue.extend((SCALARS, {f"k{j}": float(i + j) for j in range(4)}, i, clock.now) for i in range(2000))
    sender._cycle()
    assert sender.sent_batches == 40 and not sender.spool
    assert fake_server.batch_ids == [f"run1:{n}" for n in range(1, 41)]
    for j in range(4):
        assert fake_server.steps(f"k{j}") == list(range(2000))
    assert any(name.startswith("optiscope-encoder-") for name in encoder_threads)
    assert not [t for t in threading.enumerate() if t.name.startswith("optiscope-encoder-")]  # joined
    sender.spool.release()


def test_a_failure_mid_take_spools_the_batches_encoded_ahead(fake_server: FakeServer,
                                                             fast_settings: ClientConfig) -> None:
    """The server goes down after a few batches of a big take: the rest (some already encoded ahead)
    goes to the spool in order, and the replay delivers every point exactly once."""
    import httpx

    clock = FakeClock()
    sender = _builder_sender(fake_server, fast_settings, clock, batch_points=200)
    sender._cycle()  # creates the run
    posts = 0

    def fail_after_three(request: httpx.Request) -> httpx.Response | None:
        nonlocal posts
        posts += 1
        return httpx.Response(503) if posts > 3 else None

    fake_server.script = [fail_after_three] * 4
    sender.queue.extend((SCALARS, {f"k{j}": float(i) for j in range(4)}, i, clock.now) for i in range(2000))
    sender._cycle()
    assert sender.sent_batches == 3 and sender.state == "outage" and sender.spool
    assert fake_server.batch_ids == ["run1:1", "run1:2", "run1:3"]
    clock.now += 60
    for _ in range(200):
        if not sender.spool:
            break
        sender._cycle()
        clock.now += 60
    assert not sender.spool and sender.lost == 0
    assert fake_server.batch_ids == [f"run1:{n}" for n in range(1, 41)]
    assert fake_server.steps("k0") == list(range(2000))
    sender.spool.release()
