"""``probe.init(run_id=..., resume_from=step)`` against a real server (SQLite and PostgreSQL).

The check is the issue's: after a crash at step 34 and a resume from the step-21 checkpoint, the stored run
reads exactly as if it had never been interrupted — every step once, the re-logged values, nothing the
abandoned steps left behind (arrays, events), the summary and last step of the new timeline.
"""

from __future__ import annotations

import httpx
import pytest

import probe
from tests.integrations.stored import stored_series


def _env(monkeypatch, srv) -> None:  # noqa: ANN001
    monkeypatch.setenv("OPTISCOPE_URL", srv.url)
    monkeypatch.setenv("OPTISCOPE_TOKEN", srv.token)
    monkeypatch.setenv("OPTISCOPE_HOME", str(srv.home / "client"))


def _first_life(run_id: str) -> None:
    run = probe.init(project="resume", run_id=run_id, config={"lr": 0.1, "seed": 3})
    for step in range(35):
        run.log({"loss": float(step), "acc/train": step / 100}, step=step)
    run.log_array("sv.update", [3.0, 2.0, 1.0], step=30, layer="fc")
    run.log_array("sv.update", [3.0, 2.0, 1.0], step=10, layer="fc")
    run.log_event("nonfinite", "a NaN at step 32", step=32)
    run.log_event("nonfinite", "a NaN at step 5", step=5)
    run.finish("crashed")


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request, live_server, pg_cluster):  # noqa: ANN001, ANN201
    if request.param == "sqlite":
        return live_server()
    return live_server(db_url=pg_cluster.create_database("resume_" + probe.client.protocol.new_run_id()[:8]))


def test_resume_from_a_checkpoint_replaces_the_abandoned_steps(server, monkeypatch) -> None:  # noqa: ANN001
    _env(monkeypatch, server)
    run_id = "resumed-run"
    _first_life(run_id)

    run = probe.init(project="resume", run_id=run_id, resume_from=21, config={"lr": 0.2, "seed": 3})
    for step in range(21, 30):
        run.log({"loss": 1000.0 + step}, step=step)
    run.finish()

    series = stored_series(server.api, server.headers, run_id)
    steps, values = series["loss"]
    assert steps == list(range(30))
    assert values == [float(s) for s in range(21)] + [1000.0 + s for s in range(21, 30)]
    assert series["acc/train"][0] == list(range(21))  # not re-logged: cut at the checkpoint, not kept
    with httpx.Client(headers=server.headers, timeout=30) as http:
        stored = http.get(f"{server.api}/runs/{run_id}").raise_for_status().json()
        arrays = http.get(f"{server.api}/runs/{run_id}/arrays", params={"key": "sv.update"}).raise_for_status().json()
        events = http.get(f"{server.api}/runs/{run_id}/events").raise_for_status().json()["data"]
        keys = http.get(f"{server.api}/runs/{run_id}/keys").raise_for_status().json()["scalars"]
    assert stored["status"] == "finished"
    assert stored["last_step"] == 29
    assert stored["summary"]["loss"] == 1029.0
    assert stored["config"] == {"lr": 0.2, "seed": 3}
    assert {m["key"]: (m["count"], m["last_step"]) for m in keys} == {"loss": (30, 29), "acc/train": (21, 20)}
    assert sorted(a["step"] for a in arrays["records"]) == [10]
    alerts = [e for e in events if e["kind"] == "alert"]
    assert [e["step"] for e in alerts] == [5]
    assert stored["alerts_count"] == 1
    (resume,) = [e for e in events if e["kind"] == "resume"]
    assert resume["data"]["from_step"] == 21
    assert resume["data"]["config_changed"] == {"lr": {"was": 0.1, "now": 0.2}}
    assert resume["data"]["dropped"] == {"points": 14 + 14, "arrays": 1, "events": 1}

    # the same create request replayed later (a retry, `optiscope sync`) must not rewind again
    body = {"id": run_id, "project": "resume", "config": {}, "resume": {"id": resume["key"].split(".", 1)[1],
                                                                          "from_step": 21}}
    with httpx.Client(headers=server.headers, timeout=30) as http:
        assert http.post(f"{server.api}/runs", json=body).status_code == 200
    assert stored_series(server.api, server.headers, run_id)["loss"][0] == list(range(30))


def test_resume_without_a_step_appends_and_merges_config(live_server, monkeypatch) -> None:  # noqa: ANN001
    srv = live_server()
    _env(monkeypatch, srv)
    run = probe.init(project="resume", run_id="append-run", config={"lr": 0.1})
    run.log({"loss": 1.0}, step=0)
    run.finish("crashed")
    run = probe.init(project="resume", run_id="append-run", resume=True, config={"epochs": 3})
    run.log({"loss": 2.0}, step=1)
    run.finish()
    assert stored_series(srv.api, srv.headers, "append-run")["loss"] == ([0, 1], [1.0, 2.0])
    with httpx.Client(headers=srv.headers) as http:
        assert http.get(f"{srv.api}/runs/append-run").json()["config"] == {"lr": 0.1, "epochs": 3}


def test_resume_needs_a_run_id_and_a_valid_step() -> None:
    with pytest.raises(ValueError, match="resume: needs the run_id"):
        probe.init(resume=True, mode="disabled")
    with pytest.raises(ValueError, match="resume_from"):
        probe.init(run_id="x", resume_from=2**64, mode="disabled")
