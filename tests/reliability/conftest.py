"""Fixtures of the reliability suites: an in-process API on SQLite and on PostgreSQL whose
TestClient turns server exceptions into 500 responses (as a real server would), so a crash is
an assertion failure about a status code, not a Python traceback escaping the client."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.auth import create_token
from server.config import Settings
from server.main import create_app
from server.migrate import upgrade
from tests.pg_cluster import PgCluster

BODY_LIMIT = 2_000_000


@dataclass
class InProc:
    """The real app behind a TestClient, a writer token, and the database URL for direct checks."""

    client: TestClient
    app: FastAPI
    token: str
    db_url: str
    engine: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def new_token(self, project: str | None = None) -> tuple[int, str]:
        session = self.app.state.sessionmaker()
        try:
            row, plain = create_token(session=session, name="reliability", project=project)
            return row.id, plain
        finally:
            session.close()

    def create_run(self, project: str = "p", **fields: Any) -> dict[str, Any]:
        r = self.client.post("/api/v1/runs", headers=self.auth, json={"id": uuid.uuid4().hex, "project": project,
                                                                      **fields})
        assert r.status_code == 201, r.text
        return r.json()


@pytest.fixture(scope="session")
def reliability_pg_url(pg_cluster: PgCluster) -> str:
    url = pg_cluster.create_database("reliability_" + uuid.uuid4().hex[:8])
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.pg)])
def inproc(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[InProc]:
    """The API on a fresh SQLite file, or on the session's PostgreSQL database (tests isolate
    themselves by unique run ids and projects)."""
    home = tmp_path / "home"
    home.mkdir()
    if request.param == "sqlite":
        db_url = f"sqlite:///{home / 'optiscope.db'}"
        upgrade(db_url)
        settings = Settings(home=home, reaper_interval=0, max_body_bytes=BODY_LIMIT)
    else:
        db_url = request.getfixturevalue("reliability_pg_url")
        settings = Settings(home=home, database_url=db_url, reaper_interval=0, max_body_bytes=BODY_LIMIT)
    app = create_app(settings, mounts=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        session = app.state.sessionmaker()
        try:
            token = create_token(session=session, name="writer")[1]
        finally:
            session.close()
        yield InProc(client=client, app=app, token=token, db_url=db_url, engine=request.param)
