"""Fixtures for the client tests: a scriptable HTTP seam and fast client settings.

``FakeServer`` is an ``httpx.MockTransport`` handler that speaks just enough of the contract
(create, batches with batch-id dedup, heartbeat, finish) to script failures — 503s, 429s, 4xx,
refused connections — at exact moments. Everything that can run against the real server does so
in ``test_against_server.py``.
"""

from __future__ import annotations

import gzip
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from probe.client.config import ClientConfig


class FakeServer:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[str, dict] = {}
        self.batch_ids: list[str] = []
        self.points: list[tuple[str, str, int, object]] = []  # (run, key, step, value)
        self.arrays: list[dict] = []
        self.events: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.heartbeats = 0
        self.down = False
        self.hang: float | None = None
        """Seconds each request waits before timing out (a server that accepts but never answers)."""
        self.delay = 0.0
        """Seconds each request waits before its answer (a slow server)."""
        self.script: list[Callable[[httpx.Request], httpx.Response | None]] = []
        """Per-request overrides, consumed in order: return a Response, or None to answer normally."""

    def handler(self, request: httpx.Request) -> httpx.Response:
        hang = self.hang
        if hang is not None:
            time.sleep(hang)
            raise httpx.ReadTimeout("no answer", request=request)
        time.sleep(self.delay)
        with self.lock:
            self.requests.append((request.method, request.url.path))
            if self.down:
                raise httpx.ConnectError("connection refused", request=request)
            if self.script:
                answer = self.script.pop(0)(request)
                if answer is not None:
                    return answer
            return self._answer(request)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        body = request.content
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        data = json.loads(body) if body else None
        parts = request.url.path.split("/")  # ['', 'api', 'v1', 'runs', id, action]
        if parts[3:] == ["runs"]:
            existed = data["id"] in self.runs
            self.runs.setdefault(data["id"], dict(data, status="running"))
            return httpx.Response(200 if existed else 201, json=self.runs[data["id"]])
        run_id, action = parts[4], parts[5]
        if run_id not in self.runs:
            return httpx.Response(404, json={"detail": "run not found"})
        if action == "batches":
            if data["batch_id"] in self.batch_ids:
                return httpx.Response(200, json={"duplicate": True, "scalars": 0, "arrays": 0, "events": 0})
            self.batch_ids.append(data["batch_id"])
            n = 0
            for series in data["scalars"]:
                for step, value in zip(series["steps"], series["values"]):
                    self.points.append((run_id, series["key"], step, value))
                    n += 1
            self.arrays.extend(data["arrays"])
            self.events.extend(data["events"])
            return httpx.Response(200, json={"duplicate": False, "scalars": n, "arrays": len(data["arrays"]),
                                             "events": len(data["events"])})
        if action == "heartbeat":
            self.heartbeats += 1
            return httpx.Response(200, json=self.runs[run_id])
        if action == "finish":
            self.runs[run_id]["status"] = data["status"]
            return httpx.Response(200, json=self.runs[run_id])
        return httpx.Response(404, json={"detail": "unknown path"})

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handler), base_url="http://fake")

    def steps(self, key: str) -> list[int]:
        return [s for _, k, s, _ in self.points if k == key]


@pytest.fixture
def fake_server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def fast_settings(tmp_path: Path) -> ClientConfig:
    """Tiny intervals so the sender reacts within milliseconds; no network, temp home."""
    return ClientConfig(
        url="http://fake",
        token="t0ken",
        home=tmp_path / "home",
        flush_interval=0.01,
        backoff_base=0.01,
        backoff_max=0.05,
        max_attempts=2,
        finish_timeout=10.0,
        timeout=2.0,
    )


# -- the real server, in-process ------------------------------------------------------------------


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file migrated once; each test copies it (a migration per test would be slow)."""
    upgrade = pytest.importorskip("server.migrate").upgrade
    path = tmp_path_factory.mktemp("db") / "optiscope.db"
    upgrade(f"sqlite:///{path}")
    return path


class InProcess:
    """The real app behind ``TestClient`` (an ``httpx.Client``) plus a writer token."""

    def __init__(self, client: httpx.Client, token: str) -> None:
        self.client = client
        self.token = token

    def get(self, path: str, **params: object) -> dict:
        r = self.client.get("/api/v1" + path, params=params, headers={"Authorization": f"Bearer {self.token}"})
        assert r.status_code == 200, r.text
        return r.json()

    def counts(self, run_id: str) -> dict[str, int]:
        """Stored points per scalar key (``GET /runs/{id}/keys``)."""
        return {k["key"]: k["count"] for k in self.get(f"/runs/{run_id}/keys")["scalars"]}


@contextmanager
def _in_process(migrated_db: Path, home: Path, **settings: object) -> Iterator[InProcess]:
    from fastapi.testclient import TestClient

    from server.auth import create_token
    from server.config import Settings
    from server.main import create_app

    home.mkdir()
    shutil.copy(migrated_db, home / "optiscope.db")
    app = create_app(Settings(home=home, reaper_interval=0, **settings), mounts=False)
    with TestClient(app) as client:
        session = app.state.sessionmaker()
        try:
            token = create_token(session=session, name="client-tests")[1]
        finally:
            session.close()
        yield InProcess(client, token)


@pytest.fixture
def server(migrated_db: Path, tmp_path: Path) -> Iterator[InProcess]:
    with _in_process(migrated_db, tmp_path / "server-home") as srv:
        yield srv


@pytest.fixture
def small_body_server(migrated_db: Path, tmp_path: Path) -> Iterator[InProcess]:
    """The real server with a 16 kB request-body limit, as behind a strict proxy: batches get 413."""
    with _in_process(migrated_db, tmp_path / "server-home", max_body_bytes=16_000) as srv:
        yield srv
