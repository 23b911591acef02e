"""The client against the real server: in-process (``TestClient`` injected as the transport's
``httpx.Client``) and over a real socket (``live_server``), including a server outage mid-run,
crash marking of a killed process, and ``optiscope sync``."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

import probe
from probe.cli import main as optiscope_main
from probe.client.config import ClientConfig
from probe.client.sync import sync_home
from probe.client.transport import Transport

from .conftest import InProcess

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def settings(tmp_path: Path) -> ClientConfig:
    return ClientConfig(url="http://testserver", home=tmp_path / "client-home", flush_interval=0.01,
                        backoff_base=0.01, backoff_max=0.1, finish_timeout=20.0)


def test_everything_logged_is_stored_faithfully(server: InProcess, settings: ClientConfig) -> None:
    with probe.init("contract", config={"lr": 0.02, "eps": math.inf}, tags=["t"], optimizer="NorMuon",
                    settings=settings, token=server.token, client=server.client) as run:
        for step in range(300):
            run.log({"loss": torch.tensor(2.0 / (step + 1)), "acc": step / 300,
                     "grad_norm/fc1.weight": math.nan if step == 7 else 1.0}, step=step)
        run.log_array("sv.weight", torch.linspace(3, 1, 8).reshape(2, 4), step=10, layer="fc1.weight")
        run.log_event("nonfinite", "1 non-finite value in grad", step=7, layer="fc1.weight", data={"n": 1})
    assert run.dropped == 0
    assert server.counts(run.id) == {"loss": 300, "acc": 300, "grad_norm/fc1.weight": 300}
    (series,) = server.get("/series", run_id=run.id, key="grad_norm/fc1.weight", points=20000)["series"]
    assert series["y"][7] == "NaN" and series["steps"] == list(range(300))
    (loss,) = server.get("/series", run_id=run.id, key="loss", points=20000)["series"]
    assert loss["y"][1] == pytest.approx(1.0)
    (record,) = server.get(f"/runs/{run.id}/arrays", key="sv.weight")["records"]
    assert record["shape"] == [2, 4] and record["layer"] == "fc1.weight"
    assert np.allclose([float(v) for v in record["values"]], np.linspace(3, 1, 8))
    (event,) = server.get(f"/runs/{run.id}/events")["data"]
    assert (event["key"], event["step"], event["data"]) == ("nonfinite", 7, {"n": 1})
    stored = server.get(f"/runs/{run.id}")
    assert stored["status"] == "finished" and stored["optimizer"] == "NorMuon" and stored["project"] == "contract"
    assert stored["config"] == {"lr": 0.02, "eps": "Infinity"} and stored["heartbeat_at"] is not None


def test_exception_marks_the_run_crashed(server: InProcess, settings: ClientConfig) -> None:
    with pytest.raises(FloatingPointError):
        with probe.init("p", settings=settings, token=server.token, client=server.client) as run:
            run.log({"loss": 1.0}, step=0)
            raise FloatingPointError("loss is NaN")
    assert server.get(f"/runs/{run.id}")["status"] == "crashed"
    assert server.counts(run.id) == {"loss": 1}


def test_replaying_a_spool_twice_stores_nothing_twice(
    server: InProcess, settings: ClientConfig, tmp_path: Path
) -> None:
    run = probe.init("p", mode="offline", settings=settings)
    for step in range(1000):
        run.log({"loss": float(step)}, step=step)
        if step % 100 == 0:
            run.log_array("neuron.update_norm", [1.0, 2.0, 3.0], step=step, layer="fc1.weight")
    run.finish()
    spool = Path(run.spool_dir)
    backup = tmp_path / "backup"
    shutil.copytree(spool, backup)
    transport = Transport(settings.api, server.token, client=server.client)
    (first,) = sync_home(settings.spool_dir, transport)
    assert first.ok and first.duplicates == 0 and first.status == "finished" and first.records == 1010
    shutil.move(backup, spool)  # as if sync had crashed before deleting the spool
    (second,) = sync_home(settings.spool_dir, transport)
    assert second.ok and second.duplicates == second.batches > 0
    assert server.counts(run.id) == {"loss": 1000}
    assert server.get(f"/runs/{run.id}/arrays", key="neuron.update_norm")["total"] == 10


def test_batches_too_large_for_the_server_are_sent_in_halves(
    small_body_server: InProcess, settings: ClientConfig
) -> None:
    srv = small_body_server
    big = torch.arange(6000, dtype=torch.float32)  # one array over the 16 kB limit: cannot be split
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with probe.init("p", settings=settings, token=srv.token, client=srv.client) as run:
            for step in range(2000):
                run.log({"loss": 1.0 / (step + 1), "acc": step / 2000, "lr": 0.02}, step=step)
                if step % 50 == 0:
                    run.log_array("sv.weight", torch.linspace(3, 1, 64), step=step, layer="fc1.weight")
            run.log_array("neuron.update_norm", big, step=0, layer="fc1.weight")
            assert run.flush(timeout=20)
            sender = run.sender
    assert sender is not None and sender.split_batches > 0
    assert srv.counts(run.id) == {"loss": 2000, "acc": 2000, "lr": 2000}
    assert _series_in_process(srv, run.id, "loss") == list(range(2000))
    assert srv.get(f"/runs/{run.id}/arrays", key="sv.weight")["total"] == 40
    # only the one record that is too large on its own is lost, counted and reported once
    assert run.dropped == 1 and run.problems == {"http_413": 1}
    assert sum("413" in str(w.message) for w in record) == 1
    assert srv.get(f"/runs/{run.id}")["status"] == "finished"


def test_sync_splits_spooled_batches_too_large_for_the_server(
    small_body_server: InProcess, settings: ClientConfig
) -> None:
    srv = small_body_server
    run = probe.init("p", mode="offline", settings=settings)
    for step in range(3000):
        run.log({"loss": float(step), "acc": 0.5}, step=step)
    run.finish()
    transport = Transport(settings.api, srv.token, client=srv.client)
    (report,) = sync_home(settings.spool_dir, transport)
    assert report.ok and report.rejected == 0 and report.records == 6000 and report.status == "finished"
    assert srv.counts(run.id) == {"loss": 3000, "acc": 3000}


def _series_in_process(srv: InProcess, run_id: str, key: str) -> list[int]:
    (series,) = srv.get("/series", run_id=run_id, key=key, points=20000)["series"]
    return series["steps"]


# -- over a real socket -----------------------------------------------------------------------------


def _series_steps(srv, run_id: str, key: str) -> list[int]:
    r = httpx.get(srv.api + "/series", params={"run_id": run_id, "key": key, "points": 20000},
                  headers=srv.headers, timeout=10)
    r.raise_for_status()
    (series,) = r.json()["series"]
    assert not series["downsampled"]
    return series["steps"]


def test_outage_mid_run_loses_nothing_and_duplicates_nothing(live_server: Callable) -> None:
    srv = live_server()
    # No url/token given: they come from the server.json and local-token that `optiscope serve`
    # wrote into OPTISCOPE_HOME, as on a single machine with no configuration.
    settings = ClientConfig.from_env(home=srv.home, env={}, flush_interval=0.02, backoff_base=0.05,
                                     backoff_max=0.5, timeout=2.0, finish_timeout=30.0)
    assert (settings.url, settings.token) == (srv.url, srv.token)
    run = probe.init("outage", settings=settings)
    total, latencies = 6000, []

    def train(start: int, stop: int) -> None:
        for step in range(start, stop):
            t0 = time.perf_counter()
            run.log({"loss": 1.0 / (step + 1), "step_time": 0.01}, step=step)
            latencies.append(time.perf_counter() - t0)
            if step % 200 == 0:
                time.sleep(0.005)  # a little "training" between bursts

    train(0, 2000)
    assert run.flush(timeout=20)
    srv.stop()  # the server goes away mid-run...
    train(2000, 4000)
    assert run.flush(timeout=0.3) is False
    assert run.sender.state == "outage" and run.sender.spool.pending_batches > 0
    srv.start()  # ...and comes back on the same port and data
    train(4000, total)
    assert run.flush(timeout=30)
    run.finish()
    assert run.dropped == 0
    for key in ("loss", "step_time"):
        assert _series_steps(srv, run.id, key) == list(range(total))  # every point, exactly once
    status = httpx.get(f"{srv.api}/runs/{run.id}", headers=srv.headers).json()["status"]
    assert status == "finished"
    assert float(np.percentile(np.array(latencies) * 1e6, 50)) < 20  # run.log stayed fast during the outage


KILLED_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import probe
    from probe.client.config import ClientConfig
    settings = ClientConfig.from_env(flush_interval=0.02, heartbeat_interval=0.3)
    run = probe.init("killed", settings=settings)
    for step in range(500):
        run.log({"loss": float(step)}, step=step)
    assert run.flush(timeout=20)
    print(run.id, run.spool_dir, flush=True)
    time.sleep(120)
    """
)


@pytest.mark.slow
def test_killed_process_ends_up_crashed_and_sync_marks_it(
    live_server: Callable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    srv = live_server(env={"OPTISCOPE_HEARTBEAT_TIMEOUT": "1.5", "OPTISCOPE_REAPER_INTERVAL": "0.3"})
    client_home = tmp_path / "client"
    env = {**os.environ, "OPTISCOPE_URL": srv.url, "OPTISCOPE_TOKEN": srv.token, "OPTISCOPE_HOME": str(client_home)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SCRIPT], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        run_id, spool_dir = proc.stdout.readline().split()
        time.sleep(2.5)  # longer than the heartbeat timeout: heartbeats keep it alive
        run_url = f"{srv.api}/runs/{run_id}"
        assert httpx.get(run_url, headers=srv.headers).json()["status"] == "running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 10
    while httpx.get(run_url, headers=srv.headers).json()["status"] != "crashed":
        assert time.monotonic() < deadline, "the reaper did not mark the killed run crashed"
        time.sleep(0.2)
    assert Path(spool_dir).exists()  # the dead process could not finish: sync completes the story
    sync = ["sync", "--url", srv.url, "--token", srv.token, "--home", str(client_home)]
    assert optiscope_main(sync) == 0 and not Path(spool_dir).exists()
    assert f"{run_id}: 0 batches (0 records) sent, 0 already on the server, marked crashed" in capsys.readouterr().out
    assert optiscope_main(sync) == 0 and "nothing to send" in capsys.readouterr().out
    assert httpx.get(run_url, headers=srv.headers).json()["status"] == "crashed"
    assert _series_steps(srv, run_id, "loss") == list(range(500))


TERMINATED_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    import probe
    from probe.client.config import ClientConfig
    if os.environ.get("USER_HANDLER"):
        def mine(signum, frame):
            print("user handler", flush=True)
            sys.exit(3)
        signal.signal(signal.SIGTERM, mine)
    # a long flush interval: the points are still queued in memory when the signal comes
    settings = ClientConfig.from_env(flush_interval=60, heartbeat_interval=60)
    run = probe.init("terminated", settings=settings)
    for step in range(500):
        run.log({"loss": float(step)}, step=step)
    print(run.id, run.spool_dir, flush=True)
    time.sleep(120)
    """
)


TERM_EXIT_S = 10.0
"""A terminated child exits within this: ``term_timeout`` (5 s) plus the interpreter's exit, with room for
a loaded CI machine; ``docker stop`` sends SIGKILL at 10 s."""


def _terminated(env: dict[str, str]) -> tuple[str, str, float, int, str]:
    """Run ``TERMINATED_SCRIPT`` and SIGTERM it once it has logged: (run id, spool dir, seconds from the
    signal to its exit, exit code, what it printed after the first line)."""
    proc = subprocess.Popen([sys.executable, "-c", TERMINATED_SCRIPT], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        run_id, spool_dir = proc.stdout.readline().split()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        took = time.monotonic() - t0
        rest = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    return run_id, spool_dir, took, proc.returncode, rest


@pytest.mark.parametrize("user_handler", [False, True], ids=["default", "chained"])
def test_sigterm_delivers_what_is_queued_marks_crashed_and_keeps_the_exit(
    live_server: Callable, tmp_path: Path, user_handler: bool
) -> None:
    srv = live_server(env={"OPTISCOPE_HEARTBEAT_TIMEOUT": "600"})  # the reaper cannot be what marks it
    env = {**os.environ, "OPTISCOPE_URL": srv.url, "OPTISCOPE_TOKEN": srv.token,
           "OPTISCOPE_HOME": str(tmp_path / "client"), "USER_HANDLER": "1" if user_handler else ""}
    run_id, spool_dir, took, code, rest = _terminated(env)
    assert took < TERM_EXIT_S
    if user_handler:
        assert code == 3 and "user handler" in rest  # the user's handler still ran, after ours
    else:
        assert code == -signal.SIGTERM  # the default action, as without the probe
    run_url = f"{srv.api}/runs/{run_id}"
    assert httpx.get(run_url, headers=srv.headers).json()["status"] == "crashed"
    assert _series_steps(srv, run_id, "loss") == list(range(500))
    assert not Path(spool_dir).exists()  # everything was delivered: nothing left to sync


@pytest.mark.slow
def test_sigterm_against_a_frozen_server_exits_in_its_time_and_keeps_everything_for_sync(
    live_server: Callable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The server stops answering (SIGSTOP: it accepts connections, never replies) before the child's
    # first POST /runs: that request is in flight, with the full 10 s timeout, when SIGTERM comes.
    srv = live_server(env={"OPTISCOPE_HEARTBEAT_TIMEOUT": "600"})
    client_home = tmp_path / "client"
    env = {**os.environ, "OPTISCOPE_URL": srv.url, "OPTISCOPE_TOKEN": srv.token,
           "OPTISCOPE_HOME": str(client_home), "USER_HANDLER": ""}
    srv.process.send_signal(signal.SIGSTOP)
    try:
        run_id, spool_dir, took, code, _ = _terminated(env)
    finally:
        srv.process.send_signal(signal.SIGCONT)
    assert took < TERM_EXIT_S and code == -signal.SIGTERM
    assert Path(spool_dir).exists()  # the queued points went to disk, not down with the process
    sync = ["sync", "--url", srv.url, "--token", srv.token, "--home", str(client_home)]
    assert optiscope_main(sync) == 0 and not Path(spool_dir).exists()
    assert f"{run_id}: " in capsys.readouterr().out
    assert httpx.get(f"{srv.api}/runs/{run_id}", headers=srv.headers).json()["status"] == "crashed"
    assert _series_steps(srv, run_id, "loss") == list(range(500))


def test_resuming_a_run_id_adds_points_instead_of_being_deduplicated(
    server: InProcess, settings: ClientConfig
) -> None:
    run_id = "resumed-run-1"
    for start in (0, 100):  # e.g. a job restarted from a checkpoint, logging into the same run
        with probe.init("p", run_id=run_id, settings=settings, token=server.token, client=server.client) as run:
            for step in range(start, start + 100):
                run.log({"loss": float(step)}, step=step)
    assert server.counts(run_id) == {"loss": 200}
