"""Arbitrary JSON at the write endpoints: a 200 or a 4xx that names the problem, never a 500,
and a rejected body writes nothing."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.conftest import Api

json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                        st.sampled_from(["NaN", "Infinity", "-Infinity", "", "x" * 600]), st.text(max_size=8))
json_value = st.recursive(json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=12)
scalar_like = st.fixed_dictionaries(
    {"key": st.one_of(st.text(max_size=5), json_scalar)},
    optional={"steps": st.lists(json_scalar, max_size=4), "times": st.lists(json_scalar, max_size=4),
              "values": st.lists(json_scalar, max_size=4)})
batch_like = st.one_of(json_value, st.fixed_dictionaries({}, optional={
    "batch_id": json_scalar, "scalars": st.lists(st.one_of(scalar_like, json_value), max_size=3),
    "arrays": st.lists(json_value, max_size=2), "events": st.lists(json_value, max_size=2)}))


@pytest.mark.parametrize("engine_name", ["sqlite"], indirect=True)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=batch_like)
def test_batch_fuzz_never_500(api: Api, body: object) -> None:
    run_id = api.app.state.__dict__.setdefault("fuzz_run", None) or api.create_run()["id"]
    api.app.state.fuzz_run = run_id
    before = api.counts(run_id)
    r = api.post(f"/runs/{run_id}/batches", content=json.dumps(body),
                 headers={"Content-Type": "application/json"})
    assert r.status_code in (200, 422), (r.status_code, r.text)
    if r.status_code == 422:
        assert all("loc" in d and "msg" in d for d in r.json()["detail"])
        assert api.counts(run_id) == before


@pytest.mark.parametrize("engine_name", ["sqlite"], indirect=True)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_value)
def test_run_create_fuzz_never_500(api: Api, body: object) -> None:
    r = api.post("/runs", content=json.dumps(body))
    assert r.status_code in (200, 201, 422), (r.status_code, r.text)
