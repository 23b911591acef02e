"""Alembic owns the schema: up, no drift from the models, down to base, up again — on both engines."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from server.db import Base, make_engine
from server.migrate import downgrade, upgrade
from tests.pg_cluster import PgCluster

TABLES = {"project", "run", "run_tag", "series", "series_chunk", "array_record", "event", "batch", "api_token"}


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.pg)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.create_database("migrations_" + request.node.name.replace("[", "_").replace("]", "")[-40:]
                                   .lower())


def _diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_matches_models_downgrade_and_upgrade_again(db_url: str) -> None:
    upgrade(db_url)
    assert _tables(db_url) == TABLES
    assert _diff(db_url) == []
    downgrade(db_url, "base")
    assert _tables(db_url) == set()
    upgrade(db_url)
    assert _tables(db_url) == TABLES
    assert _diff(db_url) == []


def test_upgrade_is_idempotent(db_url: str) -> None:
    upgrade(db_url)
    upgrade(db_url)
    assert _tables(db_url) == TABLES
