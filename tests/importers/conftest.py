"""A real ``optiscope serve`` that the importer tests import into and read back from."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LiveServer
from tests.pg_cluster import free_port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = Path(tempfile.mkdtemp(prefix="home-", dir=tmp_path_factory.mktemp("importers")))
    server = LiveServer(port=free_port(), home=home, db_url=None, env={}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cli_env(served: LiveServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LiveServer:
    monkeypatch.setenv("OPTISCOPE_TOKEN", served.token)
    monkeypatch.setenv("OPTISCOPE_URL", served.url)
    monkeypatch.setenv("OPTISCOPE_HOME", str(tmp_path / "client-home"))
    return served
