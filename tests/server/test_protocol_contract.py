"""Contract: batches built by the real probe client are accepted by the server schemas and come
back value for value (non-finite floats included)."""

from __future__ import annotations

import math

import numpy as np

from probe.client import protocol
from probe.client.batching import ARRAY, EVENT, SCALARS, BatchBuilder
from server.schemas import BatchIn, RunCreate
from tests.server.conftest import Api


def test_probe_batches_validate_and_round_trip(api: Api) -> None:
    run_id = protocol.new_run_id()
    body = {"id": run_id, "project": "contract", "name": "c", "config": {"lr": 0.1}, "tags": [], "world_size": 1}
    RunCreate.model_validate(body)
    assert api.post("/runs", content=protocol.dumps(body)).status_code == 201
    records = [(SCALARS, {"loss": 1.0 / (s + 1), "grad_norm/fc.weight": math.nan if s == 3 else float(s)}, s,
                1.7e9 + s) for s in range(10)]
    records.append((ARRAY, "sv.weight", np.array([3.0, math.inf, 1.0]), 9, "fc.weight", 1.7e9 + 9))
    records.append((EVENT, "nonfinite", "1 NaN in grad", 3, "fc.weight", "warning", "alert", {"n": 1}, 1.7e9))
    batches = BatchBuilder(run_id, batch_points=8).build(records)
    assert len(batches) >= 2
    for batch in batches:
        BatchIn.model_validate(protocol.loads(protocol.dumps(batch)))
        r = api.post(f"/runs/{run_id}/batches", content=protocol.dumps(batch),
                     headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        assert r.json()["duplicate"] is False
    s = api.get("/series", params={"run_id": run_id, "key": "grad_norm/fc.weight"}).json()["series"][0]
    assert s["steps"] == list(range(10))
    assert s["y"][3] == "NaN" and s["y"][4] == 4.0
    a = api.get(f"/runs/{run_id}/arrays", params={"key": "sv.weight"}).json()["records"]
    assert a[0]["values"] == [3.0, "Infinity", 1.0] and a[0]["layer"] == "fc.weight"
    assert api.get(f"/runs/{run_id}").json()["alerts_count"] == 1
