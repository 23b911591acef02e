"""Concurrent writers and an unreachable database."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from server.config import Settings
from server.main import create_app
from tests.pg_cluster import free_port
from tests.server.conftest import Api


def test_concurrent_batches_to_one_run_lose_nothing(api: Api) -> None:
    """The threadpool runs sync routes in parallel; SQLite writers are serialised by the app,
    PostgreSQL takes row locks on the series: every point arrives exactly once."""
    run = api.create_run()

    def send(i: int) -> int:
        body = {"batch_id": f"b{i % 20}",  # each batch sent twice, concurrently
                "scalars": [{"key": "loss", "steps": list(range(i % 20 * 100, i % 20 * 100 + 100)),
                             "times": [0.0] * 100, "values": [float(i % 20)] * 100},
                            {"key": f"k{i % 3}", "steps": [i % 20], "times": [0.0], "values": [1.0]}],
                "events": [{"kind": "alert", "key": "nonfinite", "step": i % 20, "message": "m"}]}
        r = api.post(f"/runs/{run['id']}/batches", json=body)
        assert r.status_code == 200, r.text
        return 0 if r.json()["duplicate"] else 1

    with ThreadPoolExecutor(8) as pool:
        written = sum(pool.map(send, range(40)))
    assert written == 20
    counts = api.counts(run["id"])
    assert counts["batches"] == 20 and counts["points"] == 20 * 100 + 20 and counts["events"] == 20
    stored = api.get(f"/runs/{run['id']}").json()
    assert stored["alerts_count"] == 20 and stored["last_step"] == 1999
    assert set(stored["summary"]) == {"loss", "k0", "k1", "k2"}
    s = api.get("/series", params={"run_id": run["id"], "key": "loss", "points": 5000}).json()["series"][0]
    assert s["steps"] == list(range(2000))


def test_database_unreachable_is_503(tmp_path) -> None:  # noqa: ANN001
    settings = Settings(home=tmp_path, database_url=f"postgresql+psycopg://u@127.0.0.1:{free_port()}/none",
                        reaper_interval=0)
    with TestClient(create_app(settings, mounts=False)) as client:
        r = client.get("/api/v1/runs")
        assert r.status_code == 503
        assert "database unavailable" in r.json()["detail"]
