"""The runs list over 10,000 runs, filtered, sorted and paged by the database (SQLite and
PostgreSQL): true count, paging reaches the oldest run, sort by a summary metric finds the best."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from sqlalchemy import insert
from sqlalchemy.orm import Session

from server.models import Project, Run, RunTag
from tests.server.conftest import Api, uid

N = 10_000
OPTIMIZERS = ("adamw", "muon", "normuon", "sgd")
BEST = 4321  # the run index given the lowest final loss


def seed_sweep(sessionmaker: Callable[[], Session], n: int = N) -> tuple[str, dt.datetime]:
    """``n`` runs in a fresh project, inserted in bulk (one POST each would time the HTTP layer).
    Run i: created i seconds after t0, lr = 1e-4 * (1 + i % 200), optimizer cycles, loss falls with
    i except for BEST; every 10th run is tagged ``ten``, every 3rd finished. One run has a string lr."""
    project = "sweep-" + uid()
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    session = sessionmaker()
    try:
        proj = Project(name=project)
        session.add(proj)
        session.flush()
        rows, tags = [], []
        for i in range(n):
            rid = f"{project[-12:]}-{i:05d}"
            lr: object = 1e-4 * (1 + i % 200)
            rows.append({
                "id": rid, "project_id": proj.id, "name": f"run {i}", "status": "finished" if i % 3 == 0 else "running",
                "config": {"lr": lr if i != 7 else "0.5", "optimizer": OPTIMIZERS[i % 4], "model": {"width": 64}},
                "tags": ["ten"] if i % 10 == 0 else [], "optimizer": None, "world_size": 1,
                "summary": {"loss": (0.001 if i == BEST else 2.0 - i / n), "acc": i / n} if i != 11 else {},
                "created_at": t0 + dt.timedelta(seconds=i), "updated_at": t0 + dt.timedelta(seconds=i),
                "alerts_count": 0,
            })
            if i % 10 == 0:
                tags.append({"run_id": rid, "tag": "ten"})
        session.execute(insert(Run), rows)
        session.execute(insert(RunTag), tags)
        session.commit()
    finally:
        session.close()
    return project, t0


@pytest.fixture
def sweep(api: Api) -> tuple[Api, str, dt.datetime]:
    project, t0 = seed_sweep(api.app.state.sessionmaker)
    return api, project, t0


def _list(api: Api, **params):
    r = api.get("/runs", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_count_paging_and_sort_over_ten_thousand_runs(sweep) -> None:
    api, project, _ = sweep
    first = _list(api, project=project, limit=50)
    assert first["count"] == N and len(first["data"]) == 50
    assert first["data"][0]["name"] == f"run {N - 1}"  # newest first
    last = _list(api, project=project, limit=50, offset=N - 1)
    assert [r["name"] for r in last["data"]] == ["run 0"]  # the pager reaches the oldest run
    best = _list(api, project=project, sort="summary.loss", limit=3)["data"]
    assert best[0]["name"] == f"run {BEST}" and best[1]["name"] == f"run {N - 1}"
    worst = _list(api, project=project, sort="-summary.loss", limit=1)["data"]
    assert worst[0]["name"] == "run 0"  # run 11 has no loss: it sorts last either way
    no_loss = _list(api, project=project, sort="-summary.loss", limit=1, offset=N - 1)["data"]
    assert no_loss[0]["name"] == "run 11"
    by_lr = _list(api, project=project, sort="-config.lr", limit=1)["data"]
    assert by_lr[0]["config"]["lr"] == pytest.approx(0.02)


def test_filters_are_evaluated_by_the_database(sweep) -> None:
    api, project, _ = sweep
    assert _list(api, project=project, filter="optimizer = normuon", limit=1)["count"] == N // 4
    # lr >= 0.01: i % 200 >= 99 -> 101 of every 200; run 7's string lr is not a number and is skipped
    assert _list(api, project=project, filter="lr >= 0.01", limit=1)["count"] == N // 200 * 101
    assert _list(api, project=project, filter=["lr >= 0.01", "optimizer=muon"], limit=1)["count"] == sum(
        1 for i in range(N) if i % 200 >= 99 and i % 4 == 1)
    assert _list(api, project=project, filter="model.width = 64", limit=1)["count"] == N
    assert _list(api, project=project, filter="lr = 0.5", limit=1)["count"] == 1  # the string "0.5"
    assert _list(api, project=project, filter="tag = ten", limit=1)["count"] == N // 10
    assert _list(api, project=project, tag="ten", status="finished", limit=1)["count"] == N // 30 + 1
    assert _list(api, project=project, filter="status = finished", limit=1)["count"] == (N + 2) // 3
    assert _list(api, project=project, filter="name ~ RUN 999", limit=1)["count"] == 11  # 999, 9990..9999
    assert _list(api, project=project, filter="summary.acc < 0.001", limit=1)["count"] == 10  # runs 0..9
    assert _list(api, project=project, config="optimizer=sgd", limit=1)["count"] == N // 4


def test_updated_since_returns_only_changed_runs_and_facets_come_from_the_server(sweep) -> None:
    api, project, t0 = sweep
    since = (t0 + dt.timedelta(seconds=N - 4)).isoformat()
    body = _list(api, project=project, updated_since=since, limit=100)
    assert body["count"] == N and body["changed"] == 3 and len(body["data"]) == 3
    facets = _list(api, project=project, facets="true", limit=1)["facets"]
    assert project in facets["projects"] and facets["tags"] == ["ten"]
    assert {"lr", "optimizer", "model"} <= set(facets["config_keys"]) and facets["summary_keys"] == ["acc", "loss"]


@pytest.mark.parametrize(("params", "loc"), [
    ({"filter": "lr >> 1"}, ["query", "filter"]),
    ({"filter": "a..b = 1"}, ["query", "filter"]),
    ({"sort": "-tag"}, ["query", "sort"]),
    ({"filter": "last_step > x"}, ["query", "filter"]),
])
def test_bad_filter_or_sort_is_422_naming_the_field(api: Api, params: dict, loc: list) -> None:
    r = api.get("/runs", params=params)
    assert r.status_code == 422 and loc in [d["loc"] for d in r.json()["detail"]], r.text


def test_id_filter_returns_exactly_the_named_runs_with_the_other_filters(sweep) -> None:
    api, project, _ = sweep
    rid = f"{project[-12:]}-{{:05d}}".format
    wanted = [rid(3), rid(0), rid(N - 1), "no-such-run"]  # the compare page's URL: old runs, and a typo
    body = _list(api, id=wanted, limit=10)
    assert body["count"] == 3 and sorted(r["id"] for r in body["data"]) == sorted(wanted[:3])
    assert {r["name"] for r in body["data"]} == {"run 3", "run 0", f"run {N - 1}"}
    # it narrows, it does not widen: with a filter only the named runs that pass it
    assert [r["id"] for r in _list(api, id=wanted, filter="summary.acc < 0.001", limit=10)["data"]] == [rid(3), rid(0)]
    assert _list(api, id=wanted, project="another-project", limit=10)["count"] == 0
    r = api.get("/runs", params={"id": [rid(i) for i in range(201)]})
    assert r.status_code == 422 and ["query", "id"] in [d["loc"] for d in r.json()["detail"]], r.text
