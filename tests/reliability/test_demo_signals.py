"""``kill -TERM|-INT|-HUP <optiscope demo pid>``: the demo's ``optiscope serve`` child and its
training workers die with it and the port is free again (issue 16, section 5b).

A real ``optiscope demo --quick`` is started on a free port, killed as soon as its server answers
(the trainings are running or starting then), and every process it spawned is checked to be gone.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import REPO_ROOT
from tests.pg_cluster import free_port


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _kill_all(procs: list[psutil.Process]) -> None:
    """Kill what one demo spawned, and nothing else: the session's Chromium driver and PostgreSQL
    clusters are also children of this pytest process and must outlive the test."""
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _listener(port: int) -> psutil.Process | None:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return psutil.Process(conn.pid)
    return None


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["TERM", "INT", "HUP"])
def test_stopping_the_demo_stops_its_server_and_workers(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    env = {**os.environ, "OPTISCOPE_HOME": str(tmp_path / "home")}
    env.pop("OPTISCOPE_DATABASE_URL", None)
    log = open(tmp_path / "demo.log", "wb")  # noqa: SIM115 - closed below
    demo = subprocess.Popen([sys.executable, "-m", "probe.cli", "demo", "--quick", "--workers", "1", "--cpu",
                             "--port", str(port), "--home", str(tmp_path / "home")],
                            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    spawned: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert demo.poll() is None, (tmp_path / "demo.log").read_text()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("the demo's server never answered")
        server = _listener(port)
        assert server is not None and server.pid != demo.pid
        spawned = _descendants(demo.pid)
        assert server.pid in {p.pid for p in spawned}
        demo.send_signal(sig)
        code = demo.wait(timeout=60)
        assert code == 128 + sig, (code, (tmp_path / "demo.log").read_text()[-2000:])
        _gone, alive = psutil.wait_procs(spawned, timeout=20)
        assert not alive, f"left running after SIG{sig.name}: {[(p.pid, p.cmdline()[:4]) for p in alive]}"
        assert _port_free(port), f"port {port} still taken after the demo got SIG{sig.name}"
    finally:
        spawned += _descendants(demo.pid)
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        _kill_all(spawned)
        log.close()


@pytest.mark.slow
def test_a_sigkilled_demo_still_takes_its_server_down(tmp_path: Path) -> None:
    """SIGKILL cannot be caught: the server, in its own session, dies by PR_SET_PDEATHSIG."""
    port = free_port()
    env = {**os.environ, "OPTISCOPE_HOME": str(tmp_path / "home")}
    env.pop("OPTISCOPE_DATABASE_URL", None)
    demo = subprocess.Popen([sys.executable, "-m", "probe.cli", "demo", "--quick", "--workers", "1", "--cpu",
                             "--port", str(port), "--home", str(tmp_path / "home")],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    spawned: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        server = None
        while time.monotonic() < deadline and server is None:
            assert demo.poll() is None
            server = _listener(port)
            time.sleep(0.2)
        assert server is not None, "the demo's server never listened"
        spawned = _descendants(demo.pid)
        demo.kill()
        demo.wait(timeout=10)
        server.wait(timeout=20)
        assert _port_free(port)
    finally:
        spawned += _descendants(demo.pid)
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        _kill_all(spawned)
