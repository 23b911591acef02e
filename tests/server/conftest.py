"""API fixtures: the same suite runs on SQLite (fresh file per test) and on the real PostgreSQL.

SQLite: the schema is migrated once into a template file that each test copies (a migration per
test would dominate the runtime). PostgreSQL: one migrated database per session; tests isolate
themselves with unique run ids and projects (``uid``).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from server.auth import create_token
from server.config import Settings
from server.main import create_app
from server.migrate import upgrade
from server.models import ArrayRecord, Batch, Event, Run, Series, SeriesChunk
from tests.pg_cluster import PgCluster


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "optiscope.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_api_url(pg_cluster: PgCluster) -> str:
    url = pg_cluster.create_database("server_api")
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.pg)])
def engine_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def settings(engine_name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    home = tmp_path / "home"
    home.mkdir()
    if engine_name == "sqlite":
        shutil.copy(request.getfixturevalue("sqlite_template"), home / "optiscope.db")
        return Settings(home=home, reaper_interval=0, max_body_bytes=1_000_000)
    return Settings(home=home, database_url=request.getfixturevalue("pg_api_url"), reaper_interval=0,
                    max_body_bytes=1_000_000)


@dataclass
class Api:
    """A TestClient with a writer token and direct DB access for "nothing was written" checks."""

    client: TestClient
    app: FastAPI
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def post(self, path: str, **kw: Any):  # noqa: ANN201
        headers = {**self.auth, **kw.pop("headers", {})}
        return self.client.post("/api/v1" + path, headers=headers, **kw)

    def get(self, path: str, **kw: Any):  # noqa: ANN201
        return self.client.get("/api/v1" + path, **kw)

    def new_token(self, project: str | None = None) -> str:
        session = self.app.state.sessionmaker()
        try:
            return create_token(session=session, name="test", project=project)[1]
        finally:
            session.close()

    def create_run(self, project: str | None = None, **fields: Any) -> dict[str, Any]:
        body = {"id": uid(), "project": project or uid(), **fields}
        r = self.post("/runs", json=body)
        assert r.status_code == 201, r.text
        return r.json()

    def counts(self, run_id: str) -> dict[str, int]:
        """Rows stored for ``run_id`` in every data table (the "nothing written" oracle)."""
        session = self.app.state.sessionmaker()
        try:
            def n(stmt: Any) -> int:
                return int(session.scalar(stmt) or 0)
            return {
                "series": n(select(func.count()).select_from(Series).where(Series.run_id == run_id)),
                "chunks": n(select(func.count()).select_from(SeriesChunk).join(Series)
                            .where(Series.run_id == run_id)),
                "points": n(select(func.coalesce(func.sum(Series.count), 0)).where(Series.run_id == run_id)),
                "arrays": n(select(func.count()).select_from(ArrayRecord).where(ArrayRecord.run_id == run_id)),
                "events": n(select(func.count()).select_from(Event).where(Event.run_id == run_id)),
                "batches": n(select(func.count()).select_from(Batch).where(Batch.run_id == run_id)),
                "runs": n(select(func.count()).select_from(Run).where(Run.id == run_id)),
            }
        finally:
            session.close()


def uid() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def make_api(settings: Settings) -> Iterator[Callable[..., Api]]:
    clients: list[TestClient] = []

    def factory(**overrides: Any) -> Api:
        app = create_app(settings.model_copy(update=overrides), mounts=False)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        session = app.state.sessionmaker()
        try:
            token = create_token(session=session, name="test")[1]
        finally:
            session.close()
        return Api(client=client, app=app, token=token)

    yield factory
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()
