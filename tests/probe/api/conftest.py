"""One real ``optiscope serve`` for the read-API tests, with runs the tests logged through the probe."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LiveServer
from tests.pg_cluster import free_port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real server subprocess on SQLite, shared by a module's tests (each start costs seconds).

    Reads need a token here as on a non-loopback deployment, so a refused token is tested too."""
    home = Path(tempfile.mkdtemp(prefix="home-", dir=tmp_path_factory.mktemp("api")))
    server = LiveServer(port=free_port(), home=home, db_url=None, env={"OPTISCOPE_READ_AUTH": "true"}).start()
    try:
        yield server
    finally:
        server.stop()
