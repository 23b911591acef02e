"""Query API: series (downsampling, ranges, live appends), keys, latest, arrays, events,
time-to-target, export/import."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from tests.server.conftest import Api, uid


def put(api: Api, run_id: str, **kw) -> None:  # noqa: ANN003
    r = api.post(f"/runs/{run_id}/batches", json=kw)
    assert r.status_code == 200, r.text


def series(api: Api, **params):  # noqa: ANN003, ANN201
    r = api.get("/series", params=params)
    assert r.status_code == 200, r.text
    return r.json()["series"]


def test_series_downsampling_keeps_single_spike_and_nonfinite(api: Api) -> None:
    run = api.create_run()
    n = 20_000
    rng = np.random.default_rng(0)
    values = rng.normal(size=n)
    values[13_337] = 1e6
    values[17_000] = np.nan
    wire = [("NaN" if np.isnan(v) else float(v)) for v in values]
    put(api, run["id"], scalars=[{"key": "loss", "steps": list(range(n)), "times": [1.0] * n, "values": wire}])
    s = series(api, run_id=run["id"], key="loss", points=500)[0]
    assert s["downsampled"] is True and s["total"] == n
    assert len(s["y"]) <= 520
    assert 13_337 in s["steps"] and s["y"][s["steps"].index(13_337)] == 1e6
    assert 17_000 in s["steps"] and s["y"][s["steps"].index(17_000)] == "NaN"
    assert s["steps"][0] == 0 and s["steps"][-1] == n - 1
    assert s["steps"] == sorted(s["steps"])
    assert s["x"] == s["steps"]


def test_series_x_time_and_range(api: Api) -> None:
    run = api.create_run()
    put(api, run["id"], scalars=[{"key": "acc", "steps": [0, 10, 20, 30], "times": [100.0, 101.0, 102.5, 104.0],
                                   "values": [0.1, 0.2, 0.3, 0.4]}])
    s = series(api, run_id=run["id"], key="acc", x="time", x_min=101.0, x_max=103.0)[0]
    assert s["x"] == [101.0, 102.5] and s["steps"] == [10, 20] and s["y"] == [0.2, 0.3]
    s = series(api, run_id=run["id"], key="acc", x_min=15)[0]
    assert s["steps"] == [20, 30] and s["total"] == 2


def test_series_after_step_returns_only_new_raw_points(api: Api) -> None:
    run = api.create_run()
    put(api, run["id"], scalars=[{"key": "loss", "steps": [1, 2, 3], "times": [0, 0, 0], "values": [3, 2, 1]}])
    put(api, run["id"], scalars=[{"key": "loss", "steps": [4, 5], "times": [0, 0], "values": [0.5, 0.25]}])
    s = series(api, run_id=run["id"], key="loss", after_step=3)[0]
    assert s["steps"] == [4, 5] and s["y"] == [0.5, 0.25] and s["downsampled"] is False


def test_series_many_runs_and_keys_in_request_order(api: Api) -> None:
    a, b = api.create_run(), api.create_run()
    for r in (a, b):
        put(api, r["id"], scalars=[{"key": "loss", "steps": [1], "times": [0], "values": [1.0]},
                                   {"key": "acc", "steps": [1], "times": [0], "values": [0.5]}])
    out = series(api, run_id=[a["id"], b["id"]], key=["loss", "acc", "missing"])
    assert [(s["run_id"], s["key"]) for s in out] == [
        (a["id"], "loss"), (a["id"], "acc"), (a["id"], "missing"),
        (b["id"], "loss"), (b["id"], "acc"), (b["id"], "missing")]
    assert out[2] == {"run_id": a["id"], "key": "missing", "x": [], "y": [], "steps": [], "total": 0,
                      "downsampled": False}


def test_series_unknown_run_is_404_and_bad_params_422(api: Api) -> None:
    assert api.get("/series", params={"run_id": uid(), "key": "loss"}).status_code == 404
    run = api.create_run()
    r = api.get("/series", params={"run_id": run["id"], "key": "loss", "points": 10**9})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "points"]
    r = api.get("/series", params={"run_id": run["id"]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "key"]


def test_keys_and_latest(api: Api) -> None:
    run = api.create_run()
    put(api, run["id"],
        scalars=[{"key": "loss", "steps": [1, 5, 3], "times": [1.0, 5.0, 3.0], "values": [0.9, 0.5, 0.7]},
                 {"key": "grad_norm/fc.weight", "steps": [5], "times": [5.0], "values": ["Infinity"]}],
        arrays=[{"key": "sv.weight", "layer": "fc.weight", "step": s, "values": [1.0, 0.5]} for s in (1, 5)])
    keys = api.get(f"/runs/{run['id']}/keys").json()
    assert keys["scalars"] == [
        {"key": "grad_norm/fc.weight", "count": 1, "first_step": 5, "last_step": 5, "last_value": "Infinity",
         "last_time": 5.0},
        {"key": "loss", "count": 3, "first_step": 1, "last_step": 5, "last_value": 0.5, "last_time": 5.0}]
    assert keys["arrays"] == [{"key": "sv.weight", "layer": "fc.weight", "count": 2, "first_step": 1,
                               "last_step": 5}]
    latest = api.get(f"/runs/{run['id']}/latest", params={"key": "loss"}).json()
    assert latest == {"loss": {"step": 5, "value": 0.5, "time": 5.0}}
    assert api.get(f"/runs/{run['id']}").json()["summary"] == {"loss": 0.5}  # keys with "/" excluded


def test_arrays_subsampling_and_at_step(api: Api) -> None:
    run = api.create_run()
    arrays = [{"key": "sv.weight", "layer": layer, "step": s, "time": float(s), "shape": [2, 2],
               "values": [s, 1, 2, 3]} for s in range(0, 100, 10) for layer in ("a", "b")]
    put(api, run["id"], arrays=arrays)
    r = api.get(f"/runs/{run['id']}/arrays", params={"key": "sv.weight", "layer": "a", "max_steps": 4}).json()
    assert r["total"] == 10
    steps = [rec["step"] for rec in r["records"]]
    assert steps[0] == 0 and steps[-1] == 90 and len(steps) == 4
    assert r["records"][0]["shape"] == [2, 2]
    r = api.get(f"/runs/{run['id']}/arrays", params={"key": "sv.weight", "at_step": 45}).json()
    assert [(x["layer"], x["step"]) for x in r["records"]] == [("a", 40), ("b", 40)]
    r = api.get(f"/runs/{run['id']}/arrays", params={"key": "sv.weight", "layer": "a", "at_step": -5}).json()
    assert [x["step"] for x in r["records"]] == [0]
    r = api.get(f"/runs/{run['id']}/arrays", params={"key": "sv.weight", "step_min": 20, "step_max": 30}).json()
    assert r["total"] == 4 and {x["step"] for x in r["records"]} == {20, 30}


def test_array_resent_for_same_step_replaces(api: Api) -> None:
    run = api.create_run()
    put(api, run["id"], arrays=[{"key": "k", "layer": "l", "step": 1, "values": [1.0]}])
    put(api, run["id"], arrays=[{"key": "k", "layer": "l", "step": 1, "values": [2.0]}])
    r = api.get(f"/runs/{run['id']}/arrays", params={"key": "k"}).json()
    assert r["total"] == 1 and r["records"][0]["values"] == [2.0]


def test_events_filter_and_cursor(api: Api) -> None:
    run = api.create_run()
    put(api, run["id"], events=[{"kind": "alert", "key": "nonfinite", "step": 1, "message": "a"},
                                {"kind": "note", "message": "b"},
                                {"kind": "alert", "key": "cond_explode", "step": 2, "message": "c",
                                 "data": {"cond": "Infinity"}}])
    data = api.get(f"/runs/{run['id']}/events").json()
    assert data["count"] == 3
    alerts = api.get(f"/runs/{run['id']}/events", params={"kind": "alert"}).json()["data"]
    assert [e["message"] for e in alerts] == ["a", "c"] and alerts[1]["data"] == {"cond": "Infinity"}
    after = api.get(f"/runs/{run['id']}/events", params={"after_id": alerts[0]["id"]}).json()["data"]
    assert [e["message"] for e in after] == ["b", "c"]
    assert api.get(f"/runs/{run['id']}").json()["alerts_count"] == 2


def test_time_to_target_first_crossing_and_speedups(api: Api) -> None:
    base, fast, never = api.create_run(name="sgd"), api.create_run(name="muon"), api.create_run(name="bad")
    put(api, base["id"], scalars=[
        {"key": "loss", "steps": [0, 100, 200, 300], "times": [1000, 1010, 1020, 1030], "values": [2, 1.5, 0.9, 0.5]},
        {"key": "samples_seen", "steps": [0, 100, 200, 300], "times": [1000] * 4, "values": [0, 6400, 12800, 19200]}])
    put(api, fast["id"], scalars=[
        {"key": "loss", "steps": [0, 50, 100], "times": [500, 502, 505], "values": [2, "NaN", 0.8]},
        {"key": "samples_seen", "steps": [0, 50, 100], "times": [500] * 3, "values": [0, 3200, 6400]}])
    put(api, never["id"], scalars=[{"key": "loss", "steps": [0, 1], "times": [0, 1], "values": [3, 2]}])
    r = api.get("/time-to-target", params={"run_id": [base["id"], fast["id"], never["id"]], "key": "loss",
                                          "target": 1.0})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["baseline"] == base["id"] and out["direction"] == "below"
    rows = {row["run_id"]: row for row in out["rows"]}
    assert rows[base["id"]]["step"] == 200 and rows[base["id"]]["time_s"] == 20.0
    assert rows[base["id"]]["samples_seen"] == 12800
    assert rows[fast["id"]] | {} == {**rows[fast["id"]], "reached": True, "step": 100, "time_s": 5.0,
                                     "samples_seen": 6400, "name": "muon"}
    assert rows[fast["id"]]["speedup_steps"] == 2.0 and rows[fast["id"]]["speedup_time"] == 4.0
    assert rows[fast["id"]]["speedup_samples"] == 2.0
    assert rows[never["id"]]["reached"] is False and rows[never["id"]]["speedup_steps"] is None
    up = api.get("/time-to-target", params={"run_id": base["id"], "key": "loss", "target": 1.9,
                                           "direction": "above"}).json()
    assert up["rows"][0]["step"] == 0
    assert api.get("/time-to-target", params={"run_id": uid(), "key": "loss", "target": 1}).status_code == 404


def test_export_import_round_trip_is_byte_identical(api: Api) -> None:
    run = api.create_run(config={"lr": 0.02, "nested": {"wd": 0.1}}, tags=["a", "b"], optimizer="Muon")
    n = 9000
    put(api, run["id"], scalars=[{"key": "loss", "steps": list(range(n)), "times": [1.5 + i for i in range(n)],
                                   "values": [1.0 / (i + 1) for i in range(n - 1)] + ["NaN"]}],
        arrays=[{"key": "sv.weight", "layer": "l", "step": 1, "shape": [3], "values": [3.0, "Infinity", 1e-300]}],
        events=[{"kind": "alert", "key": "nonfinite", "step": 8999, "message": "nan", "data": {"x": 1}}])
    exported = api.get(f"/runs/{run['id']}/export")
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    lines = exported.content.splitlines()
    assert orjson.loads(lines[0])["type"] == "run"
    conflict = api.post("/runs/import", content=exported.content)
    assert conflict.status_code == 409
    assert api.client.delete(f"/api/v1/runs/{run['id']}", headers=api.auth).status_code == 204
    assert api.get(f"/runs/{run['id']}").status_code == 404
    imported = api.post("/runs/import", content=exported.content)
    assert imported.status_code == 201, imported.text
    assert imported.json()["config"] == run["config"] and imported.json()["tags"] == ["a", "b"]
    again = api.get(f"/runs/{run['id']}/export").content
    assert again == exported.content


def test_import_malformed_is_422_and_writes_nothing(api: Api) -> None:
    run_id = uid()
    header = {"type": "run", "format": "optiscope-run/1", "run": {"id": run_id, "project": "p", "name": "x"}}
    r = api.post("/runs/import", content=orjson.dumps(header))
    assert r.status_code == 422
    assert api.counts(run_id)["runs"] == 0
    r = api.post("/runs/import", content=b"not json\n")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "line 1"]  # names the line


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v2/runs", "/api/v1/runs/x/nonsense"])
def test_unknown_api_path_is_json_404(api: Api, path: str) -> None:
    r = api.client.get(path)
    assert r.status_code == 404 and "detail" in r.json()


def test_series_cache_sees_appends_and_ranges(api: Api) -> None:
    """Long series are served from the in-process cache; an append changes the version."""
    run = api.create_run()
    n = 25_000
    put(api, run["id"], scalars=[{"key": "loss", "steps": list(range(n)), "times": [float(i) for i in range(n)],
                                   "values": [1.0] * n}])
    first = series(api, run_id=run["id"], key="loss", points=100)[0]
    assert first["total"] == n
    cache = api.app.state.series_cache
    assert cache is not None and len(cache._entries) == 1
    put(api, run["id"], scalars=[{"key": "loss", "steps": [n], "times": [float(n)], "values": [99.0]}])
    again = series(api, run_id=run["id"], key="loss", points=100)[0]
    assert again["total"] == n + 1 and again["steps"][-1] == n and again["y"][-1] == 99.0
    window = series(api, run_id=run["id"], key="loss", x_min=100, x_max=199.5, points=1000)[0]
    assert window["steps"] == list(range(100, 200))
    by_time = series(api, run_id=run["id"], key="loss", x="time", x_min=24_999.5, points=1000)[0]
    assert by_time["x"] == [25_000.0] and by_time["y"] == [99.0]
