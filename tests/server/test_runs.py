"""Run lifecycle, filters, the heartbeat reaper and read authentication."""

from __future__ import annotations

import datetime as dt

import pytest

from server import store
from tests.server.conftest import Api, uid


def test_create_run_returns_201_then_200_for_same_id(api: Api) -> None:
    body = {"id": uid(), "project": uid(), "name": "n", "config": {"lr": 0.1}, "tags": ["x", "x", "y"],
            "optimizer": "Muon", "host": "h", "world_size": 4, "rank": 0}
    r = api.post("/runs", json=body)
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["status"] == "running" and run["tags"] == ["x", "y"] and run["world_size"] == 4
    assert run["created_at"].endswith("+00:00") and run["finished_at"] is None
    again = api.post("/runs", json={**body, "name": "other"})
    assert again.status_code == 200 and again.json()["name"] == "n"
    assert api.counts(body["id"])["runs"] == 1


def test_create_run_generates_id_and_name(api: Api) -> None:
    r = api.post("/runs", json={"project": "p" + uid()})
    assert r.status_code == 201
    assert len(r.json()["id"]) == 32 and r.json()["name"].startswith("run-")


@pytest.mark.parametrize(("body", "loc"), [
    ({"id": "bad id!", "project": "p"}, ["body", "id"]),
    ({"project": "p", "world_size": 0}, ["body", "world_size"]),
    ({"project": "p", "tags": "x"}, ["body", "tags"]),
    ({"project": ""}, ["body", "project"]),
])
def test_create_run_invalid_is_422(api: Api, body: dict, loc: list) -> None:
    r = api.post("/runs", json=body)
    assert r.status_code == 422 and loc in [d["loc"] for d in r.json()["detail"]]


def test_create_run_needs_token_and_scope(api: Api) -> None:
    run_id = uid()
    assert api.client.post("/api/v1/runs", json={"id": run_id, "project": "p"}).status_code == 401
    scoped = api.new_token(project="mine")
    r = api.client.post("/api/v1/runs", json={"id": run_id, "project": "theirs"},
                        headers={"Authorization": f"Bearer {scoped}"})
    assert r.status_code == 403
    assert api.counts(run_id)["runs"] == 0


def test_list_runs_filters(api: Api) -> None:
    project = uid()
    a = api.create_run(project=project, name="muon-lr0.02", tags=["cifar", "best"],
                       config={"lr": 0.02, "opt": {"name": "muon"}})
    b = api.create_run(project=project, name="adamw-lr0.001", tags=["cifar"], config={"lr": 0.001})
    api.client.post(f"/api/v1/runs/{b['id']}/finish", json={"status": "finished"}, headers=api.auth)

    def ids(**params) -> list[str]:  # noqa: ANN003
        r = api.get("/runs", params={"project": project, **params})
        assert r.status_code == 200, r.text
        return [x["id"] for x in r.json()["data"]]

    assert ids() == [b["id"], a["id"]]  # newest first
    assert ids(order="created_at", descending=False) == [a["id"], b["id"]]
    assert ids(status="finished") == [b["id"]]
    assert ids(tag=["cifar", "best"]) == [a["id"]]
    assert ids(q="MUON") == [a["id"]]
    assert ids(config="lr=0.02") == [a["id"]]
    assert ids(config="opt.name=muon") == [a["id"]]
    assert ids(config=["lr=0.001", "opt.name=muon"]) == []
    page = api.get("/runs", params={"project": project, "limit": 1, "offset": 1}).json()
    assert page["count"] == 2 and [x["id"] for x in page["data"]] == [a["id"]]
    assert api.get("/runs", params={"config": "novalue"}).status_code == 422
    assert api.get("/runs", params={"limit": 5000}).status_code == 422


def test_update_heartbeat_finish_delete(api: Api) -> None:
    run = api.create_run()
    rid = run["id"]
    r = api.client.patch(f"/api/v1/runs/{rid}", json={"name": "renamed", "tags": ["t"], "summary": {"best": 0.9}},
                         headers=api.auth)
    assert r.status_code == 200 and r.json()["name"] == "renamed" and r.json()["tags"] == ["t"]
    assert r.json()["summary"] == {"best": 0.9}
    assert api.client.patch(f"/api/v1/runs/{rid}", json={"status": "paused"}, headers=api.auth).status_code == 422
    hb = api.post(f"/runs/{rid}/heartbeat")
    assert hb.status_code == 200 and hb.json()["heartbeat_at"] >= run["heartbeat_at"]
    fin = api.post(f"/runs/{rid}/finish", json={"status": "crashed"})
    assert fin.json()["status"] == "crashed" and fin.json()["finished_at"] is not None
    assert api.post(f"/runs/{rid}/finish", json={"status": "done"}).status_code == 422
    api.post(f"/runs/{rid}/batches", json={"scalars": [{"key": "a", "steps": [1], "values": [1.0]}]})
    assert api.client.delete(f"/api/v1/runs/{rid}").status_code == 401
    assert api.client.delete(f"/api/v1/runs/{rid}", headers=api.auth).status_code == 204
    assert api.counts(rid) == {"series": 0, "chunks": 0, "points": 0, "arrays": 0, "events": 0, "batches": 0,
                               "runs": 0}
    assert api.client.delete(f"/api/v1/runs/{rid}", headers=api.auth).status_code == 404


def test_reaper_marks_stale_runs_crashed_and_heartbeat_revives(api: Api) -> None:
    run = api.create_run()
    session = api.app.state.sessionmaker()
    try:
        future = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=500)
        store.reap_stale_runs(session=session, timeout_s=120, now=future)
    finally:
        session.close()
    assert api.get(f"/runs/{run['id']}").json()["status"] == "crashed"
    assert api.post(f"/runs/{run['id']}/heartbeat").json()["status"] == "running"


def test_reaper_thread_runs_in_lifespan(make_api) -> None:  # noqa: ANN001
    import time

    api = make_api(heartbeat_timeout=0.2, reaper_interval=0.1)
    run = api.create_run()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and api.get(f"/runs/{run['id']}").json()["status"] != "crashed":
        time.sleep(0.1)
    assert api.get(f"/runs/{run['id']}").json()["status"] == "crashed"


def test_reads_need_token_when_not_loopback(make_api) -> None:  # noqa: ANN001
    api = make_api(host="0.0.0.0")
    run = api.create_run()
    for path in ("/runs", f"/runs/{run['id']}", f"/runs/{run['id']}/keys"):
        assert api.get(path).status_code == 401
        assert api.get(path, headers=api.auth).status_code == 200
    assert api.get("/series", params={"run_id": run["id"], "key": "x"}).status_code == 401
    assert api.get("/health").status_code == 200


def test_reads_open_on_loopback(api: Api) -> None:
    run = api.create_run()
    assert api.get(f"/runs/{run['id']}").status_code == 200


def test_health_names_engine(api: Api, engine_name: str) -> None:
    body = api.get("/health").json()
    assert body["status"] == "ok" and body["database"] == {"sqlite": "sqlite", "pg": "postgresql"}[engine_name]
