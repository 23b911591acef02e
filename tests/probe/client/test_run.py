"""Run + sender behaviour through the HTTP seam (``FakeServer``): batching, outages and replay,
4xx handling, bounded memory, crash marking, offline mode + sync."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch

import probe
from probe.client.config import ClientConfig
from probe.client.problems import OptiscopeWarning
from probe.client.sync import SyncReport, sync_home
from probe.client.transport import Transport

from .conftest import FakeServer


def _init(server: FakeServer, settings: ClientConfig, **kwargs) -> probe.Run:
    return probe.init("proj", settings=settings, client=server.client(), **kwargs)


def _wait(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def _optiscope_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, OptiscopeWarning)]


def test_logged_values_arrive_once_merged_into_few_posts(fake_server: FakeServer, fast_settings: ClientConfig) -> None:
    run = _init(fake_server, fast_settings, config={"lr": 0.1}, tags=["a"], optimizer="Muon")
    for step in range(500):
        run.log({"loss": torch.tensor(1.0 / (step + 1)), "lr": 0.1, "bad": math.nan}, step=step)
    run.log_array("sv.weight", torch.tensor([3.0, math.inf]), step=10, layer="fc1.weight")
    run.log_event("nonfinite", "2 non-finite", step=10, layer="fc1.weight", data={"count": 2})
    assert run.flush(timeout=10)
    run.finish()

    assert fake_server.steps("loss") == list(range(500))
    assert sorted(fake_server.steps("lr")) == list(range(500))
    values = {s: v for _, k, s, v in fake_server.points if k == "loss"}
    assert values[3] == pytest.approx(0.25)
    assert {v for _, k, _, v in fake_server.points if k == "bad"} == {"NaN"}
    assert fake_server.arrays[0]["values"] == [3.0, "Infinity"] and fake_server.arrays[0]["shape"] == [2]
    assert fake_server.events[0]["key"] == "nonfinite" and fake_server.events[0]["data"] == {"count": 2}
    batches = [r for r in fake_server.requests if r[1].endswith("/batches")]
    assert len(batches) < 50  # 502 records, merged
    created = fake_server.runs[run.id]
    assert created["config"] == {"lr": 0.1} and created["optimizer"] == "Muon" and created["status"] == "finished"
    assert run.dropped == 0 and not Path(fast_settings.spool_dir / run.id).exists()


def test_step_defaults_to_previous_plus_one(fake_server: FakeServer, fast_settings: ClientConfig) -> None:
    with _init(fake_server, fast_settings) as run:
        run.log({"a": 1})
        run.log({"a": 1})
        run.log({"a": 1}, step=10)
        run.log({"a": 1})
    assert fake_server.steps("a") == [0, 1, 10, 11]


def test_the_probe_logging_past_steps_leaves_the_users_step_count_alone(
    fake_server: FakeServer, fast_settings: ClientConfig
) -> None:
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    with _init(fake_server, fast_settings) as run:
        monitor = probe.attach(model, opt, run=run, log_every=5)  # logs steps 0-4 inside step 4, ...
        for _ in range(12):
            opt.zero_grad()
            loss = model(torch.randn(2, 4, generator=gen)).square().mean()
            loss.backward()
            opt.step()
            run.log({"loss": loss})  # no step: the user counts on "previous + 1"
        monitor.detach()
    assert fake_server.steps("loss") == list(range(12))
    assert sorted(set(fake_server.steps("grad_norm"))) == list(range(12))


def test_outage_spools_then_replays_everything_once_in_order(
    fake_server: FakeServer, fast_settings: ClientConfig
) -> None:
    run = _init(fake_server, fast_settings)
    for step in range(100):
        run.log({"loss": float(step)}, step=step)
    assert run.flush(timeout=5)
    fake_server.down = True
    worst = 0.0
    for step in range(100, 3000):
        t0 = time.perf_counter()
        run.log({"loss": float(step)}, step=step)
        worst = max(worst, time.perf_counter() - t0)
        if step % 500 == 0:
            time.sleep(0.02)  # let the sender find the outage and spool
    assert run.flush(timeout=0.5) is False  # data waits on disk, not on the server
    assert run.sender.state == "outage" and run.sender.spool.pending_batches > 0
    recovered_at = len(fake_server.requests)
    fake_server.down = False
    _wait(lambda: run.flush(timeout=1))
    run.finish()
    assert fake_server.steps("loss") == list(range(3000))
    assert fake_server.runs[run.id]["status"] == "finished" and run.dropped == 0
    after_recovery = fake_server.requests[recovered_at:]
    assert any(path.endswith("/heartbeat") for _, path in after_recovery)  # revives a reaped run at once
    assert worst < 0.05  # the training thread never waited on the network (generous for a loaded CI box)


def test_server_down_at_start_creates_run_on_recovery(fake_server: FakeServer, fast_settings: ClientConfig) -> None:
    fake_server.down = True
    run = _init(fake_server, fast_settings)
    run.log({"x": 1.0}, step=0)
    _wait(lambda: run.sender.spool.pending_batches > 0)
    fake_server.down = False
    _wait(lambda: run.flush(timeout=1))
    run.finish()
    assert run.id in fake_server.runs and fake_server.steps("x") == [0]


def test_5xx_and_429_are_retried_without_loss(fake_server: FakeServer, fast_settings: ClientConfig) -> None:
    run = _init(fake_server, fast_settings)
    assert run.flush(timeout=5)  # the run exists
    fake_server.script += [lambda r: httpx.Response(503), lambda r: httpx.Response(429, headers={"Retry-After": "0"})]
    run.log({"x": 1.0}, step=0)
    assert run.flush(timeout=5)
    run.finish()
    assert fake_server.steps("x") == [0]


def test_rejected_batch_is_reported_once_and_not_retried(fake_server: FakeServer, fast_settings: ClientConfig) -> None:
    run = _init(fake_server, fast_settings)
    assert run.flush(timeout=5)

    def reject(request: httpx.Request) -> httpx.Response | None:
        if request.url.path.endswith("/batches"):
            return httpx.Response(422, json={"detail": [{"loc": ["body", "scalars", 0, "values"]}]})
        return None

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for step in range(3):
            fake_server.script.append(reject)
            run.log({"x": 1.0, "y": 2.0}, step=step)
            run.flush(timeout=5)
        run.log({"x": 1.0}, step=3)
        assert run.flush(timeout=5)
        run.finish()
    rejected = [m for m in _optiscope_warnings(record) if "422" in m]
    assert len(rejected) == 1 and "scalars" in rejected[0]
    assert run.dropped == 6 and run.problems["http_422"] == 6
    assert fake_server.steps("x") == [3]
    assert sum(1 for r in fake_server.requests if r[1].endswith("/batches")) == 4  # no retries


def test_bad_token_halts_sending_keeps_data_and_sync_delivers_it(
    fake_server: FakeServer, fast_settings: ClientConfig
) -> None:
    fake_server.script.append(lambda r: httpx.Response(401, json={"detail": "invalid token"}))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run = _init(fake_server, fast_settings)
        for step in range(50):
            run.log({"x": float(step)}, step=step)
        _wait(lambda: run.sender.state == "halted")
        run.finish()
    messages = _optiscope_warnings(record)
    assert any("401" in m and "optiscope sync" in m for m in messages)
    assert run.id not in fake_server.runs
    posts_while_halted = len(fake_server.requests)
    assert posts_while_halted == 1  # the refused create, nothing after it

    transport = Transport(fast_settings.api, "good", client=fake_server.client())
    (report,) = sync_home(fast_settings.spool_dir, transport)
    assert report.ok and report.status == "finished" and report.records == 50
    assert fake_server.steps("x") == list(range(50)) and fake_server.runs[run.id]["status"] == "finished"
    assert sync_home(fast_settings.spool_dir, transport) == []  # delivered spools are gone


def _finish_after(
    server: FakeServer, settings: ClientConfig, fault: Callable[[], None], records: int = 5
) -> tuple[probe.Run, float]:
    """Deliver step 0, let ``fault()`` strike, log steps 1..``records`` and finish: the run, and how
    long ``finish()`` took. The sender wakes only for flush and finish, so the fault meets the end."""
    run = _init(server, dataclasses.replace(settings, flush_interval=30.0))
    run.log({"loss": 0.0}, step=0)
    assert run.flush(timeout=5)
    fault()
    for step in range(1, records + 1):
        run.log({"loss": float(step)}, step=step)
    t0 = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptiscopeWarning)
        run.finish()
    return run, time.monotonic() - t0


def _sync(server: FakeServer, settings: ClientConfig) -> SyncReport:
    """``optiscope sync`` of the one spooled run, against ``server`` healthy again."""
    server.hang, server.delay = None, 0.0
    (report,) = sync_home(settings.spool_dir, Transport(settings.api, "t0ken", client=server.client()))
    return report


def test_finish_against_a_server_that_stopped_answering_keeps_every_record(
    fake_server: FakeServer, fast_settings: ClientConfig
) -> None:
    # Each request hangs for its whole timeout; the transport's retries (3 x 0.3 s + backoff) would
    # outlast finish_timeout, so the end of the run must reach the disk before any network attempt.
    settings = dataclasses.replace(fast_settings, timeout=0.3, max_attempts=3, finish_timeout=1.0)
    run, took = _finish_after(fake_server, settings, lambda: setattr(fake_server, "hang", 0.3), records=20)
    assert took < settings.finish_timeout + 0.5 and run.dropped == 0
    report = _sync(fake_server, settings)
    assert report.ok and report.status == "finished"
    assert fake_server.steps("loss") == list(range(21))  # every point, once
    assert fake_server.runs[run.id]["status"] == "finished"


def test_finish_retries_a_transient_error_within_its_time(fake_server: FakeServer, fast_settings: ClientConfig) -> None:
    def one_hiccup() -> None:
        fake_server.script.append(lambda r: httpx.Response(503, json={"detail": "busy"}))

    run, _ = _finish_after(fake_server, fast_settings, one_hiccup)
    assert fake_server.steps("loss") == list(range(6))
    assert fake_server.runs[run.id]["status"] == "finished" and run.dropped == 0


def _disk_full(monkeypatch) -> Callable[[], None]:
    from probe.client.spool import RunSpool

    def append(self, batch):
        raise OSError(28, "No space left on device")

    return lambda: monkeypatch.setattr(RunSpool, "append", append)


def test_finish_sends_directly_when_the_spool_cannot_be_written(
    fake_server: FakeServer, fast_settings: ClientConfig, monkeypatch
) -> None:
    run, _ = _finish_after(fake_server, fast_settings, _disk_full(monkeypatch))
    assert fake_server.steps("loss") == list(range(6)) and run.dropped == 0
    assert fake_server.runs[run.id]["status"] == "finished"


def test_finish_keeps_its_time_when_both_the_disk_and_the_server_fail(
    fake_server: FakeServer, fast_settings: ClientConfig, monkeypatch
) -> None:
    # one record a batch: five requests of 0.3 s each would outlast finish_timeout
    settings = dataclasses.replace(fast_settings, timeout=0.3, finish_timeout=1.0, batch_points=1)
    disk_full = _disk_full(monkeypatch)

    def both() -> None:
        disk_full()
        fake_server.hang = 0.3

    run, took = _finish_after(fake_server, settings, both)
    assert took < settings.finish_timeout + 0.3
    assert run.dropped == 5  # nowhere to keep them: counted and reported, never silently gone


def test_finish_does_not_sleep_past_its_time_for_a_long_retry_after(
    fake_server: FakeServer, fast_settings: ClientConfig
) -> None:
    settings = dataclasses.replace(fast_settings, finish_timeout=2.0)

    def busy_for_a_minute() -> None:
        fake_server.script.append(lambda r: httpx.Response(503, headers={"Retry-After": "60"}, json={}))

    _, took = _finish_after(fake_server, settings, busy_for_a_minute, records=1)
    assert took < 1.0  # a retry 60 s away cannot fit: the batch stays on disk
    assert _sync(fake_server, settings).ok and fake_server.steps("loss") == [0, 1]


def test_finish_starts_no_request_it_cannot_end_in_time_against_a_slow_server(
    fake_server: FakeServer, fast_settings: ClientConfig
) -> None:
    # answers take 0.7 s of a 1.0 s timeout; finish has 0.8 x 2.0 = 1.6 s for its network work
    settings = dataclasses.replace(fast_settings, timeout=1.0, finish_timeout=2.0, batch_points=1)
    run, took = _finish_after(fake_server, settings, lambda: setattr(fake_server, "delay", 0.7))
    assert took < settings.finish_timeout
    assert not run.sender.is_alive()  # ended on its own terms: the rest and the final status are on disk
    report = _sync(fake_server, settings)
    assert report.ok and report.status == "finished"
    assert sorted(fake_server.steps("loss")) == list(range(6))


def test_finish_in_its_time_while_a_request_hangs_keeps_the_queue_on_disk(
    fake_server: FakeServer, fast_settings: ClientConfig
) -> None:
    # As on SIGTERM while the first POST /runs hangs: that request was sent with the full timeout
    # before finish began, so the sender thread cannot end in time; finish's caller spools the queue.
    fake_server.hang = 1.5
    settings = dataclasses.replace(fast_settings, flush_interval=30.0, timeout=1.5)
    run = _init(fake_server, settings)
    time.sleep(0.1)  # the create is in flight
    for step in range(50):
        run.log({"loss": float(step)}, step=step)
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run.finish("crashed", timeout=0.5)
    assert time.monotonic() - t0 < 0.8
    assert any("optiscope sync" in m for m in _optiscope_warnings(record))
    time.sleep(1.6)  # the hung request ends: the sender thread must leave the spool alone now
    report = _sync(fake_server, settings)
    assert report.ok and report.status == "crashed"
    assert fake_server.steps("loss") == list(range(50))  # every point, once
    assert fake_server.runs[run.id]["status"] == "crashed"


def test_a_flush_waiting_when_finish_begins_is_answered(fake_server: FakeServer, fast_settings: ClientConfig) -> None:
    settings = dataclasses.replace(fast_settings, flush_interval=5.0)  # only flush() and finish() wake the sender
    run = _init(fake_server, settings)
    run.log({"x": 1.0}, step=0)
    sender = run.sender
    answers: list[bool] = []
    sender._closing.set()  # finish() has begun (its wake-up not yet seen) when another thread flushes:
    waiting = threading.Thread(target=lambda: answers.append(run.flush()), daemon=True)
    waiting.start()  # the flush's wake-up runs the final cycle, which takes the flush's waiter with it
    waiting.join(5)
    run.finish()
    assert not waiting.is_alive() and answers == [True]
    assert fake_server.steps("x") == [0]


def test_flush_makes_one_try_per_request_never_the_transport_retries(
    fake_server: FakeServer, fast_settings: ClientConfig
) -> None:
    settings = dataclasses.replace(fast_settings, timeout=0.3, max_attempts=4)
    run = _init(fake_server, settings)
    run.log({"x": 1.0}, step=0)
    assert run.flush(timeout=5)
    fake_server.hang = 0.3
    run.log({"x": 2.0}, step=1)
    t0 = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptiscopeWarning)
        assert run.flush() is False
    assert time.monotonic() - t0 < 3 * settings.timeout  # one try (0.3 s), not 4 tries and backoff (≥ 1.2 s)
    assert run.sender.state == "outage" and run.sender.spool.pending_batches == 1  # spooled, not lost
    fake_server.hang = None
    _wait(lambda: run.flush(timeout=1))
    run.finish()
    assert fake_server.steps("x") == [0, 1]


def test_bad_values_are_dropped_counted_and_never_raise(fake_server: FakeServer, fast_settings: ClientConfig) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _init(fake_server, fast_settings) as run:
            run.log({"ok": 1.0, "text": "nope", "vec": torch.ones(3), 5: 1.0}, step=0)
            run.log(None, step=1)  # type: ignore[arg-type]
            run.log_array("arr", ["a", "b"], step=0)
    assert fake_server.steps("ok") == [0]
    assert run.dropped == 5
    assert run.problems.keys() >= {"bad_value", "bad_key", "log"}


def test_queue_is_bounded_drop_oldest_with_one_warning(fast_settings: ClientConfig) -> None:
    server = FakeServer()
    server.down = True  # everything goes to the spool...
    settings = fast_settings.replace(queue_size=100, flush_interval=5.0)  # ...but the sender sleeps
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run = _init(server, settings)
        for step in range(1000):
            run.log({"x": float(step)}, step=step)
    assert len([m for m in _optiscope_warnings(record) if "dropping the oldest" in m]) == 1
    assert run.dropped == 900 and len(run.sender.queue) == 100
    assert run.sender.queue[0][2] == 900  # the newest survive
    run.finish()


def test_spool_limit_drops_oldest_counts_and_warns_once(fake_server: FakeServer, fast_settings: ClientConfig) -> None:
    settings = fast_settings.replace(spool_max_bytes=20_000, spool_segment_bytes=2_000, fsync="none")
    fake_server.down = True
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run = _init(fake_server, settings)
        for step in range(4000):
            run.log({"x": float(step)}, step=step)
            if step % 100 == 0:
                time.sleep(0.002)
        _wait(lambda: len(run.sender.queue) == 0)
        fake_server.down = False
        _wait(lambda: run.flush(timeout=1))
        run.finish()
    assert len([m for m in _optiscope_warnings(record) if "spool over its limit" in m]) == 1
    steps = fake_server.steps("x")
    assert run.dropped > 0 and len(steps) + run.dropped == 4000
    assert run.problems["spool_full"] == run.dropped
    assert steps == sorted(steps) and steps[-1] == 3999  # oldest dropped, newest kept, in order


def test_exception_in_with_block_marks_crashed(fake_server: FakeServer, fast_settings: ClientConfig) -> None:
    with pytest.raises(RuntimeError):
        with _init(fake_server, fast_settings) as run:
            run.log({"x": 1.0}, step=0)
            raise RuntimeError("diverged")
    assert fake_server.runs[run.id]["status"] == "crashed" and fake_server.steps("x") == [0]
    run.finish()  # idempotent
    assert fake_server.runs[run.id]["status"] == "crashed"


def test_heartbeats_are_sent_while_running(fake_server: FakeServer, fast_settings: ClientConfig) -> None:
    run = _init(fake_server, fast_settings.replace(heartbeat_interval=0.02))
    _wait(lambda: fake_server.heartbeats >= 3)
    run.finish()


def test_offline_mode_writes_only_to_disk_then_sync_delivers(
    fake_server: FakeServer, fast_settings: ClientConfig
) -> None:
    run = probe.init("proj", mode="offline", settings=fast_settings)
    for step in range(200):
        run.log({"loss": float(step)}, step=step)
    run.log_array("sv.weight", [1.0, 2.0], step=5, layer="l")
    assert run.flush(timeout=5)
    run.finish()
    assert fake_server.requests == []
    transport = Transport(fast_settings.api, "tok", client=fake_server.client())
    (report,) = sync_home(fast_settings.spool_dir, transport)
    assert report.ok and report.records == 201 and report.duplicates == 0
    assert fake_server.steps("loss") == list(range(200)) and fake_server.runs[run.id]["status"] == "finished"


def test_disabled_and_non_zero_ranks_do_nothing(fast_settings: ClientConfig) -> None:
    for run in (
        probe.init("p", mode="disabled", settings=fast_settings),
        probe.init("p", rank=1, world_size=2, settings=fast_settings),
    ):
        run.log({"x": 1.0})
        run.log_array("a", [1.0], step=0)
        run.log_event("k", "m")
        assert run.flush() and run.mode == "disabled" and run.dropped == 0
        run.finish()
    assert not fast_settings.spool_dir.exists()


def test_invalid_arguments_raise_at_init(fast_settings: ClientConfig) -> None:
    with pytest.raises(ValueError, match="mode"):
        probe.init("p", mode="sometimes", settings=fast_settings)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="run_id"):
        probe.init("p", run_id="no spaces allowed", settings=fast_settings)


EXIT_SCRIPT = """
import sys, probe
from probe.client.config import ClientConfig
run = probe.init("p", mode="offline", settings=ClientConfig.from_env(flush_interval=0.01))
run.log({"loss": 1.0}, step=0)
print(run.spool_dir, flush=True)
if sys.argv[1] == "raise":
    raise RuntimeError("boom")
"""


@pytest.mark.parametrize(("how", "status"), [("raise", "crashed"), ("return", "finished")])
def test_process_exit_finishes_the_run(how: str, status: str, tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "OPTISCOPE_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, how], env=env, capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[3])
    assert (proc.returncode != 0) == (how == "raise")
    if how == "raise":
        assert "RuntimeError: boom" in proc.stderr  # the user's traceback is still printed
    spool = Path(proc.stdout.strip())
    assert json.loads((spool / "finish.json").read_text()) == {"status": status}


def test_client_imports_neither_torch_nor_the_server() -> None:
    import subprocess
    import sys

    code = (
        "import sys, probe.client.run, probe.client.cli, probe.client.sync\n"
        "bad = [m for m in ('torch', 'server', 'fastapi', 'dashboard', 'sqlalchemy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).resolve().parents[3])


def test_slow_server_backs_up_to_the_spool_not_memory(fake_server: FakeServer, fast_settings: ClientConfig) -> None:
    """Training logs faster than the server ingests: the queue stays bounded, the excess goes
    to disk in order and is replayed; nothing is dropped."""
    real_handler = fake_server.handler

    def slow(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/batches"):
            time.sleep(0.01)
        return real_handler(request)

    fake_server.handler = slow  # type: ignore[method-assign]
    settings = fast_settings.replace(queue_size=400, batch_points=50, fsync="none")
    run = _init(fake_server, settings)
    for step in range(3000):
        run.log({"x": float(step)}, step=step)
        if step % 10 == 0:
            time.sleep(0.001)  # the "training step" (which releases the GIL, as torch ops do)
    spooled = run.sender.spooled_batches
    assert run.flush(timeout=60)
    run.finish()
    assert run.dropped == 0 and spooled > 0
    assert fake_server.steps("x") == list(range(3000))


def test_tensor_values_of_any_dtype_and_grad_state_are_converted(
    fake_server: FakeServer, fast_settings: ClientConfig
) -> None:
    w = torch.ones(2, requires_grad=True)
    with _init(fake_server, fast_settings) as run:
        run.log({"loss": (w * 2).sum(), "bf16": torch.tensor(0.5, dtype=torch.bfloat16),
                 "int": torch.tensor(3), "flag": torch.tensor(True), "one": torch.tensor([7.0]),
                 "inf": torch.tensor(-math.inf)}, step=0)
        run.log_array("hist", torch.tensor([1, 2], dtype=torch.int64), step=0)
        run.log_array("bf", torch.tensor([0.25, math.nan], dtype=torch.bfloat16), step=0)
    got = {k: v for _, k, _, v in fake_server.points}
    assert got == {"loss": 4.0, "bf16": 0.5, "int": 3.0, "flag": 1.0, "one": 7.0, "inf": "-Infinity"}
    assert [a["values"] for a in fake_server.arrays] == [[1.0, 2.0], [0.25, "NaN"]]
    assert run.dropped == 0


def test_config_accepts_namespace_and_dataclass(fake_server: FakeServer, fast_settings: ClientConfig) -> None:
    import argparse
    import dataclasses

    @dataclasses.dataclass
    class Hyper:
        lr: float = 0.02
        betas: tuple = (0.9, 0.95)

    for config, expected in ((argparse.Namespace(lr=0.1, opt="muon"), {"lr": 0.1, "opt": "muon"}),
                             (Hyper(), {"lr": 0.02, "betas": [0.9, 0.95]})):
        with _init(fake_server, fast_settings, config=config) as run:
            pass
        assert fake_server.runs[run.id]["config"] == expected


def test_large_arrays_are_split_across_batches() -> None:
    from probe.client.batching import ARRAY, BatchBuilder

    records = [(ARRAY, "sv.weight", torch.ones(1000), 0, f"layer{i}", 0.0) for i in range(10)]
    batches = BatchBuilder("r", batch_points=2500).build(records)
    assert [len(b["arrays"]) for b in batches] == [3, 3, 3, 1]
    assert [a["layer"] for b in batches for a in b["arrays"]] == [f"layer{i}" for i in range(10)]
    assert len({b["batch_id"] for b in batches}) == 4


def test_sync_stops_at_an_unreachable_server_and_keeps_everything(
    fake_server: FakeServer, fast_settings: ClientConfig
) -> None:
    for _ in range(3):
        with probe.init("p", mode="offline", settings=fast_settings) as run:
            run.log({"x": 1.0}, step=0)
    fake_server.down = True
    transport = Transport(fast_settings.api, "tok", client=fake_server.client(), max_attempts=1)
    reports = sync_home(fast_settings.spool_dir, transport)
    assert [bool(r.error) for r in reports] == [True, False, False]
    assert [r.skipped for r in reports[1:]] == ["server unreachable, not tried"] * 2
    assert len(fake_server.requests) == 1
    fake_server.down = False
    assert all(r.ok and r.status == "finished" for r in sync_home(fast_settings.spool_dir, transport))
    assert len(fake_server.runs) == 3
