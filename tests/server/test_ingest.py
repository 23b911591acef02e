"""POST /runs/{id}/batches: happy path, idempotency, gzip, non-finite floats, every bad input.

Every rejection asserts the status, the field named in the error, and that no row was written.
"""

from __future__ import annotations

import gzip
import json
import math

import orjson
import pytest

from tests.server.conftest import Api, uid

EMPTY = {"series": 0, "chunks": 0, "points": 0, "arrays": 0, "events": 0, "batches": 0}


def batch(**kw):  # noqa: ANN001, ANN201
    body = {
        "batch_id": uid(),
        "scalars": [{"key": "loss", "steps": [1, 2, 3], "times": [10.0, 11.0, 12.0], "values": [0.5, 0.4, 0.3]}],
        "arrays": [{"key": "sv.weight", "layer": "fc1.weight", "step": 3, "time": 12.0, "shape": [4],
                    "values": [4.0, 3.0, 2.0, 1.0]}],
        "events": [{"kind": "alert", "level": "warning", "key": "nonfinite", "layer": "fc1.weight", "step": 3,
                    "time": 12.0, "message": "3 non-finite values", "data": {"n": 3}}],
    }
    body.update(kw)
    return body


def data_counts(api: Api, run_id: str) -> dict[str, int]:
    c = api.counts(run_id)
    c.pop("runs")
    return c


def test_post_batch_writes_scalars_arrays_events(api: Api) -> None:
    run = api.create_run()
    r = api.post(f"/runs/{run['id']}/batches", json=batch())
    assert r.status_code == 200, r.text
    assert r.json() == {"duplicate": False, "scalars": 3, "arrays": 1, "events": 1}
    assert data_counts(api, run["id"]) == {"series": 1, "chunks": 1, "points": 3, "arrays": 1, "events": 1,
                                           "batches": 1}
    stored = api.get(f"/runs/{run['id']}").json()
    assert stored["last_step"] == 3
    assert stored["alerts_count"] == 1
    assert stored["summary"] == {"loss": 0.3}


def test_post_batch_resent_is_duplicate_and_writes_nothing(api: Api) -> None:
    run = api.create_run()
    body = batch()
    assert api.post(f"/runs/{run['id']}/batches", json=body).json()["duplicate"] is False
    before = data_counts(api, run["id"])
    r = api.post(f"/runs/{run['id']}/batches", json=body)
    assert r.status_code == 200
    assert r.json() == {"duplicate": True, "scalars": 0, "arrays": 0, "events": 0}
    assert data_counts(api, run["id"]) == before


def test_post_batch_same_batch_id_other_run_is_not_duplicate(api: Api) -> None:
    a, b = api.create_run(), api.create_run()
    body = batch(batch_id="shared:1")
    assert api.post(f"/runs/{a['id']}/batches", json=body).json()["duplicate"] is False
    assert api.post(f"/runs/{b['id']}/batches", json=body).json()["duplicate"] is False


def test_post_batch_gzip_body(api: Api) -> None:
    run = api.create_run()
    raw = gzip.compress(orjson.dumps(batch()))
    r = api.post(f"/runs/{run['id']}/batches", content=raw,
                 headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert data_counts(api, run["id"])["points"] == 3


def test_nonfinite_values_round_trip_as_strings(api: Api) -> None:
    run = api.create_run()
    values = [1.0, "NaN", "Infinity", "-Infinity", 2.0]
    body = batch(scalars=[{"key": "g", "steps": [1, 2, 3, 4, 5], "times": [1, 2, 3, 4, 5], "values": values}],
                 arrays=[{"key": "sv.weight", "layer": "l", "step": 1, "values": ["NaN", "Infinity", 1.5]}])
    assert api.post(f"/runs/{run['id']}/batches", json=body).status_code == 200
    s = api.get("/series", params={"run_id": run["id"], "key": "g"}).json()["series"][0]
    assert s["y"] == [1.0, "NaN", "Infinity", "-Infinity", 2.0]
    assert s["steps"] == [1, 2, 3, 4, 5]
    a = api.get(f"/runs/{run['id']}/arrays", params={"key": "sv.weight"}).json()["records"][0]
    assert a["values"] == ["NaN", "Infinity", 1.5]
    latest = api.get(f"/runs/{run['id']}/latest").json()
    assert latest["g"]["value"] == 2.0


def test_nan_literal_json_is_accepted(api: Api) -> None:
    """Python's json.dumps writes bare NaN/Infinity; orjson refuses them, the fallback parses them."""
    run = api.create_run()
    raw = json.dumps(batch(scalars=[{"key": "x", "steps": [1, 2], "times": [1, 2],
                                     "values": [math.nan, -math.inf]}], arrays=[], events=[]))
    assert "NaN" in raw
    r = api.post(f"/runs/{run['id']}/batches", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    s = api.get("/series", params={"run_id": run["id"], "key": "x"}).json()["series"][0]
    assert s["y"] == ["NaN", "-Infinity"]
    summary = api.get(f"/runs/{run['id']}").json()["summary"]
    assert summary["x"] == "-Infinity"


def test_small_batches_merge_into_one_chunk(api: Api) -> None:
    run = api.create_run()
    for i in range(20):
        body = {"batch_id": f"b{i}", "scalars": [{"key": "loss", "steps": [2 * i, 2 * i + 1],
                                                  "times": [0.0, 0.0], "values": [float(i), float(i)]}]}
        assert api.post(f"/runs/{run['id']}/batches", json=body).status_code == 200
    c = data_counts(api, run["id"])
    assert c["chunks"] == 1 and c["points"] == 40 and c["batches"] == 20
    s = api.get("/series", params={"run_id": run["id"], "key": "loss"}).json()["series"][0]
    assert s["steps"] == list(range(40))


def test_large_batch_is_split_into_chunks_and_read_back_in_order(api: Api) -> None:
    run = api.create_run()
    n = 20000
    steps = list(range(n))[::-1]  # out of order on purpose: reads sort by step
    body = {"scalars": [{"key": "v", "steps": steps, "times": [0.0] * n, "values": [float(s) for s in steps]}]}
    assert api.post(f"/runs/{run['id']}/batches", json=body).json()["scalars"] == n
    assert data_counts(api, run["id"])["chunks"] == 3
    s = api.get("/series", params={"run_id": run["id"], "key": "v", "points": 20000}).json()["series"][0]
    assert s["steps"] == list(range(n)) and s["y"] == [float(i) for i in range(n)]


# ---- bad input: status, named field, nothing written -------------------------------------------------

@pytest.mark.parametrize(
    ("mutate", "loc"),
    [
        (lambda b: b["scalars"][0].update(values=[0.5, "oops", 0.3]), ["body", "scalars", 0, "values", 1]),
        (lambda b: b["scalars"][0].update(steps=[1, "two", 3]), ["body", "scalars", 0, "steps", 1]),
        (lambda b: b["scalars"][0].pop("key"), ["body", "scalars", 0, "key"]),
        (lambda b: b["scalars"][0].update(key=""), ["body", "scalars", 0, "key"]),
        (lambda b: b["scalars"][0].update(values=[1.0]), ["body", "scalars", 0]),
        (lambda b: b["arrays"][0].update(shape=[5]), ["body", "arrays", 0]),
        (lambda b: b["arrays"][0].update(step="x"), ["body", "arrays", 0, "step"]),
        (lambda b: b["events"][0].update(data="not an object"), ["body", "events", 0, "data"]),
        (lambda b: b.update(extra_field=1), ["body", "extra_field"]),
        (lambda b: b.update(scalars={"key": "loss"}), ["body", "scalars"]),
    ],
    ids=["bad-value", "bad-step", "missing-key", "empty-key", "length-mismatch", "shape-mismatch",
         "bad-array-step", "bad-event-data", "unknown-field", "scalars-not-list"],
)
def test_post_batch_malformed_is_422_naming_field_and_writes_nothing(api: Api, mutate, loc) -> None:  # noqa: ANN001
    run = api.create_run()
    body = batch()
    mutate(body)
    r = api.post(f"/runs/{run['id']}/batches", json=body)
    assert r.status_code == 422, r.text
    assert loc in [d["loc"] for d in r.json()["detail"]], r.json()
    assert data_counts(api, run["id"]) == EMPTY
    assert api.get(f"/runs/{run['id']}").json()["last_step"] is None


def test_post_batch_invalid_json_is_422(api: Api) -> None:
    run = api.create_run()
    r = api.post(f"/runs/{run['id']}/batches", content=b'{"scalars": [', headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body"]
    assert data_counts(api, run["id"]) == EMPTY


def test_post_batch_corrupt_gzip_is_422(api: Api) -> None:
    run = api.create_run()
    r = api.post(f"/runs/{run['id']}/batches", content=b"\x1f\x8bnot gzip at all",
                 headers={"Content-Encoding": "gzip"})
    assert r.status_code == 422
    assert data_counts(api, run["id"]) == EMPTY


def test_post_batch_unknown_run_is_404_and_creates_nothing(api: Api) -> None:
    run_id = uid()
    r = api.post(f"/runs/{run_id}/batches", json=batch())
    assert r.status_code == 404
    assert run_id in r.json()["detail"]
    assert api.counts(run_id) == {**EMPTY, "runs": 0}


def test_post_batch_over_limit_is_413(api: Api) -> None:
    run = api.create_run()
    n = 60000  # ~1.3 MB of JSON > the 1 MB limit of the test settings
    body = {"scalars": [{"key": "big", "steps": list(range(n)), "times": [1.5] * n, "values": [0.123456] * n}]}
    r = api.post(f"/runs/{run['id']}/batches", json=body)
    assert r.status_code == 413
    assert "limit" in r.json()["detail"]
    assert data_counts(api, run["id"]) == EMPTY


def test_post_batch_gzip_bomb_is_413(api: Api) -> None:
    run = api.create_run()
    bomb = gzip.compress(b"[" + b" " * 50_000_000 + b"]", compresslevel=9)  # 50 MB → ~50 kB
    assert len(bomb) < 200_000
    r = api.post(f"/runs/{run['id']}/batches", content=bomb, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413
    assert "decompressed" in r.json()["detail"]
    assert data_counts(api, run["id"]) == EMPTY


@pytest.mark.parametrize("header", [None, "Bearer not-a-token", "Basic abc", "Bearer "])
def test_post_batch_without_valid_token_is_401(api: Api, header: str | None) -> None:
    run = api.create_run()
    headers = {} if header is None else {"Authorization": header}
    r = api.client.post(f"/api/v1/runs/{run['id']}/batches", json=batch(), headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert data_counts(api, run["id"]) == EMPTY


def test_post_batch_revoked_token_is_401(api: Api) -> None:
    from server.auth import revoke_token, verify_token

    run = api.create_run()
    token = api.new_token()
    session = api.app.state.sessionmaker()
    try:
        revoke_token(session=session, token_id=verify_token(session=session, token=token).token_id)
    finally:
        session.close()
    r = api.client.post(f"/api/v1/runs/{run['id']}/batches", json=batch(),
                        headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    assert data_counts(api, run["id"]) == EMPTY


def test_post_batch_token_of_other_project_is_403(api: Api) -> None:
    run = api.create_run(project="alpha-" + uid())
    other = api.new_token(project="beta")
    r = api.client.post(f"/api/v1/runs/{run['id']}/batches", json=batch(),
                        headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 403
    assert data_counts(api, run["id"]) == EMPTY
    mine = api.new_token(project=run["project"])
    r = api.client.post(f"/api/v1/runs/{run['id']}/batches", json=batch(),
                        headers={"Authorization": f"Bearer {mine}"})
    assert r.status_code == 200


def test_post_batch_one_bad_record_rejects_the_whole_batch(api: Api) -> None:
    """One over-long key after a valid scalar: the batch is validated whole before any write, so
    the valid scalar is not stored either (all-or-nothing)."""
    run = api.create_run()
    body = batch(scalars=[{"key": "ok", "steps": [1], "times": [1.0], "values": [1.0]},
                          {"key": "k" * 600, "steps": [1], "times": [1.0], "values": [1.0]}])
    r = api.post(f"/runs/{run['id']}/batches", json=body)
    assert r.status_code == 422
    assert ["body", "scalars", 1, "key"] in [d["loc"] for d in r.json()["detail"]]
    assert data_counts(api, run["id"]) == EMPTY


def test_post_batch_db_error_mid_batch_rolls_back(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after scalars were inserted (here: in the event insert) leaves no trace."""
    from server.store import ingest as ingest_mod

    run = api.create_run()

    def boom(**_kw):  # noqa: ANN003, ANN202
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ingest_mod, "append_events", boom)
    from fastapi.testclient import TestClient

    client = TestClient(api.app, raise_server_exceptions=False)  # lifespan already ran for api.client
    r = client.post(f"/api/v1/runs/{run['id']}/batches", json=batch(), headers=api.auth)
    assert r.status_code == 500
    assert data_counts(api, run["id"]) == EMPTY
    monkeypatch.undo()
    body = batch()
    assert api.post(f"/runs/{run['id']}/batches", json=body).json()["duplicate"] is False


def test_nul_characters_are_422_not_500(api: Api) -> None:
    """PostgreSQL text cannot hold NUL: the schema refuses it with the field named, on both engines."""
    run = api.create_run()
    r = api.post(f"/runs/{run['id']}/batches", json=batch(scalars=[{"key": "a\x00b", "steps": [1], "values": [1.0]}]))
    assert r.status_code == 422 and ["body", "scalars", 0, "key"] in [d["loc"] for d in r.json()["detail"]]
    assert data_counts(api, run["id"]) == EMPTY
    r = api.get("/series", params={"run_id": run["id"], "key": "a\x00b"})
    assert r.status_code in (200, 422)
    r = api.get(f"/runs/{run['id']}/latest", params={"key": "a\x00b"})
    assert r.status_code in (200, 422)


@pytest.mark.parametrize("cut", [1, 4, 8, 9])
def test_gzip_body_missing_its_trailer_is_422(api: Api, cut: int) -> None:
    run = api.create_run()
    body = gzip.compress(orjson.dumps(batch()))[:-cut]
    r = api.post(f"/runs/{run['id']}/batches", content=body, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 422 and "truncated" in r.json()["detail"][0]["msg"]
    assert data_counts(api, run["id"]) == EMPTY


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("depth", [300, 5000])
def test_deeply_nested_json_is_422(api: Api, depth: int) -> None:
    r = api.post("/runs", content=b'{"project": "p", "config": ' + _nested(depth) + b"}",
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    run = api.create_run()
    r = api.post(f"/runs/{run['id']}/batches", content=b'{"events": [{"data": ' + _nested(depth) + b"}]}")
    assert r.status_code == 422
    assert data_counts(api, run["id"]) == EMPTY
    ok = api.post("/runs", content=b'{"project": "p", "config": ' + _nested(100) + b"}")
    assert ok.status_code == 201


@pytest.mark.parametrize(("path", "param"), [("arrays", "step_min"), ("arrays", "at_step"), ("events", "after_id"),
                                             ("runs", "offset")])
def test_int_query_parameters_outside_int64_are_422(api: Api, path: str, param: str) -> None:
    run = api.create_run()
    url = "/runs" if path == "runs" else f"/runs/{run['id']}/{path}"
    r = api.get(url, params={param: 2**70})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", param]


@pytest.mark.parametrize("where", ["scalars", "arrays", "events"])
def test_steps_outside_int64_are_422(api: Api, where: str) -> None:
    run = api.create_run()
    body = {"scalars": {"scalars": [{"key": "k", "steps": [2**63], "values": [1.0]}]},
            "arrays": {"arrays": [{"key": "k", "step": 2**63, "values": [1.0]}]},
            "events": {"events": [{"key": "k", "step": -(2**63) - 1}]}}[where]
    r = api.post(f"/runs/{run['id']}/batches", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert data_counts(api, run["id"]) == EMPTY
