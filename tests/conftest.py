"""Shared fixtures: a real PostgreSQL cluster and real ``optiscope serve`` subprocesses.

``pg_url`` is session-scoped (the cluster starts once, ~2 s). ``live_server`` is a factory:
``live_server(db_url=None, env=None)`` starts ``optiscope serve`` on a free loopback port with a
fresh ``OPTISCOPE_HOME`` and returns a :class:`LiveServer`; all of them are stopped at teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.pg_cluster import PgCluster, find_pg_bin, free_port, start_cluster

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _testclient_host_allowed() -> Iterator[None]:
    """Starlette's TestClient sends ``Host: testserver``; the server answers only its own names
    (DNS-rebinding defence, server/host_check.py), so in-process tests name it as allowed."""
    before = os.environ.get("OPTISCOPE_ALLOWED_HOSTS")
    os.environ["OPTISCOPE_ALLOWED_HOSTS"] = ",".join(filter(None, [before, "testserver"]))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OPTISCOPE_ALLOWED_HOSTS", None)
        else:
            os.environ["OPTISCOPE_ALLOWED_HOSTS"] = before


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """The running throwaway cluster (use ``.create_database(name)`` for an isolated database)."""
    if find_pg_bin() is None:
        pytest.skip("PostgreSQL binaries (initdb/pg_ctl) NOT FOUND: the PostgreSQL half of the suite is "
                    "SKIPPED. Install postgresql-15 (CI must) or set OPTISCOPE_PG_BIN.")
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def pg_url(pg_cluster: PgCluster) -> str:
    """``postgresql+psycopg://`` URL of an empty database ``optiscope`` on the session cluster."""
    return pg_cluster.url("optiscope")


@dataclass
class LiveServer:
    """A real ``optiscope serve`` subprocess; ``token`` can write to any project."""

    port: int
    home: Path
    db_url: str | None
    env: dict[str, str]
    token: str = ""
    process: subprocess.Popen | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.home / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return self.url + "/api/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, timeout: float = 60.0) -> LiveServer:
        """Start (or restart) on the same port and data; returns once /api/v1/health answers."""
        cmd = [sys.executable, "-m", "probe.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.db_url:
            cmd += ["--db", self.db_url]
        env = {**os.environ, "OPTISCOPE_HOME": str(self.home)}
        env.pop("OPTISCOPE_DATABASE_URL", None)  # the developer's own database must not leak in
        env.update(self.env)
        log = open(self.log_path, "ab")  # noqa: SIM115 (closed with the process)
        self.process = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"optiscope serve exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.api + "/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            self.stop(signal.SIGKILL)
            raise RuntimeError(f"optiscope serve did not become healthy in {timeout}s:\n{self.log_tail()}")
        if not self.token:
            self.token = self._obtain_token()
        return self

    def _obtain_token(self) -> str:
        local = self.home / "local-token"
        if local.exists():
            return local.read_text().strip()
        from server.auth import create_token  # only for non-default databases (no local token)
        from server.db import make_engine, make_sessionmaker

        engine = make_engine(self.db_url or "")
        try:
            session = make_sessionmaker(engine)()
            _row, plain = create_token(session=session, name="live-server-fixture")
            session.close()
        finally:
            engine.dispose()
        return plain

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Send ``sig`` and wait; escalates to SIGKILL after ``timeout``. Returns the exit code."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout=5)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@pytest.fixture
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def factory(db_url: str | None = None, env: Mapping[str, str] | None = None) -> LiveServer:
        home = Path(tempfile.mkdtemp(prefix="home-", dir=tmp_path_factory.mktemp("optiscope")))
        server = LiveServer(port=free_port(), home=home, db_url=db_url, env=dict(env or {}))
        servers.append(server)
        return server.start()

    yield factory
    for server in servers:
        server.stop()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def browser():  # noqa: ANN201 - playwright's Browser, imported lazily
    """One headless Chromium for the whole session (Debian's, never a downloaded one).

    Shared by every browser test: Playwright's sync API allows one instance per thread, so two
    session fixtures each calling ``sync_playwright()`` would collide.
    """
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()
