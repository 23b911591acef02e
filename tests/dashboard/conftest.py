"""Fixtures of the dashboard tests: one real ``optiscope serve`` (which mounts the dashboard) seeded
once per session through the HTTP ingest API, a Dash app reading it, and one headless Chromium."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LiveServer
from tests.pg_cluster import free_port

from .seed import Seeder, seed_suite



@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real server on a free loopback port with its own OPTISCOPE_HOME (SQLite).

    The seeded "live" run sends no heartbeats: a session-long heartbeat timeout keeps it live
    whatever order the dashboard tests run in (the default 120 s would mark it crashed).
    """
    home = Path(tempfile.mkdtemp(prefix="home-", dir=tmp_path_factory.mktemp("dash")))
    srv = LiveServer(port=free_port(), home=home, db_url=None,
                     env={"OPTISCOPE_HEARTBEAT_TIMEOUT": "86400"}).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def seeded(server: LiveServer) -> dict[str, str]:
    """Role -> run id of the seeded runs (see seed.seed_suite)."""
    seeder = Seeder(server.api, server.token)
    try:
        return seed_suite(seeder)
    finally:
        seeder.close()


@pytest.fixture(scope="session")
def dash_app(server: LiveServer):
    """A Dash app (separate from the one the server mounts) reading the live server over HTTP; it
    holds no token (as in production), callbacks act for whoever the request context signs in."""
    from dashboard.app import create_app

    return create_app(server.url)


@pytest.fixture
def request_ctx(dash_app):
    """A Flask request context, so callbacks can be called as plain functions."""
    with dash_app.server.test_request_context("/"):
        yield


@pytest.fixture
def page(browser):
    """A fresh page; fails the test on any uncaught page error or dialog (alert() would be XSS)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.errors = []  # type: ignore[attr-defined]
    pg.dialogs = []  # type: ignore[attr-defined]
    pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    try:
        yield pg
    finally:
        context.close()
