"""Load: 16 concurrent probe processes stream scalars and spectra into one server while a
dashboard reads; nothing may be lost or stored twice, and reads stay responsive.

The suite runs a short bounded window (``LOAD_SECONDS``) so CI stays fast; the 60 s figures come
from ``benchmarks/bench_reliability.py``, which calls the same :func:`run_load`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import LiveServer
from tests.pg_cluster import PgCluster
from tests.reliability.harness import LoadReport, WorkerServer, check_database, make_token, run_load

CLIENTS = 16
LOAD_SECONDS = 8.0
STEPS_PER_S = 50.0  # x 8 keys x 16 clients = 6,400 points/s offered, plus one spectrum per 10 steps
KEYS = 8

pytestmark = pytest.mark.slow


def _assert_held(report: LoadReport) -> None:
    print("\n" + report.line("load"))
    assert report.lost == 0, report.line("load")
    assert report.duplicated == 0, report.line("load")
    assert report.dropped_client_side == 0
    assert report.points_stored == report.points_sent > CLIENTS * KEYS * STEPS_PER_S * LOAD_SECONDS * 0.5
    assert report.arrays_stored == report.arrays_expected > 0
    # Responsive: a failed read counts as infinitely slow, so this also asserts every read was a 200.
    assert report.queries > 10 and report.query_p95_ms < 5_000


def test_sixteen_probes_against_sqlite_lose_and_duplicate_nothing(
        live_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    srv = live_server()
    report = run_load(srv.api, srv.token, clients=CLIENTS, seconds=LOAD_SECONDS, steps_per_s=STEPS_PER_S,
                      keys=KEYS, array_every=10, workdir=tmp_path)
    _assert_held(report)
    assert check_database(f"sqlite:///{srv.home / 'optiscope.db'}").problems == []


@pytest.mark.pg
def test_sixteen_probes_against_postgresql_with_two_workers(pg_cluster: PgCluster, tmp_path: Path) -> None:
    db_url = pg_cluster.create_database("load_" + uuid.uuid4().hex[:8])
    token = make_token(db_url)
    srv = WorkerServer(db_url=db_url, workers=2, home=tmp_path).start()
    try:
        report = run_load(srv.api, token, clients=CLIENTS, seconds=LOAD_SECONDS, steps_per_s=STEPS_PER_S,
                          keys=KEYS, array_every=10, workdir=tmp_path)
    finally:
        srv.stop()
    _assert_held(report)
    assert check_database(db_url).problems == []
