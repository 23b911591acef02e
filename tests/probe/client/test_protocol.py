"""Wire encoding: non-finite floats survive as the contract's strings, nothing else changes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from probe.client import protocol


@pytest.mark.parametrize(
    ("value", "wire"),
    [(math.nan, "NaN"), (math.inf, "Infinity"), (-math.inf, "-Infinity"), (1.5, 1.5), (-0.0, -0.0)],
)
def test_encode_float_uses_contract_spelling(value: float, wire: object) -> None:
    assert protocol.encode_float(value) == wire or (isinstance(wire, float) and protocol.encode_float(value) == wire)


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=50))
def test_encode_floats_round_trips_through_json(values: list[float]) -> None:
    wire = protocol.encode_floats(list(values))
    back = [protocol.decode_float(v) for v in json.loads(protocol.dumps(wire))]
    assert len(back) == len(values)
    for a, b in zip(values, back):
        assert (math.isnan(a) and math.isnan(b)) or a == b


def test_encode_array_flattens_and_encodes_non_finite() -> None:
    arr = np.array([[1.0, np.nan], [np.inf, -np.inf]], dtype=np.float32)
    assert protocol.encode_array(arr) == [1.0, "NaN", "Infinity", "-Infinity"]


def test_encode_json_value_makes_config_serialisable() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd"

    config = {"lr": 0.1, "betas": (0.9, 0.99), "bad": math.nan, "n": np.int64(3), "obj": Odd(), 1: "k"}
    encoded = protocol.encode_json_value(config)
    assert json.loads(protocol.dumps(encoded)) == {
        "lr": 0.1, "betas": [0.9, 0.99], "bad": "NaN", "n": 3, "obj": "odd", "1": "k",
    }


def test_dumps_refuses_unencoded_nan() -> None:
    with pytest.raises(ValueError):
        protocol.dumps({"values": [math.nan]})


def test_decode_float_rejects_unknown_strings() -> None:
    with pytest.raises(ValueError, match="not a wire float"):
        protocol.decode_float("nan")


def test_batch_ids_are_unique_per_rank() -> None:
    assert protocol.batch_id("abc", 3) == "abc:3"
    assert protocol.batch_id("abc", 3, rank=0) == "abc:3"
    assert protocol.batch_id("abc", 3, rank=1) != protocol.batch_id("abc", 3)


def test_new_run_id_matches_contract_pattern() -> None:
    assert protocol.RUN_ID_PATTERN.match(protocol.new_run_id())


def _batch(n_series: int = 3, points: int = 4, arrays: int = 2, events: int = 1) -> protocol.Batch:
    return protocol.Batch(
        batch_id="run:7",
        scalars=[protocol.ScalarSeries(key=f"k{i}", steps=list(range(points)), times=[0.0] * points,
                                       values=[float(i)] * points) for i in range(n_series)],
        arrays=[protocol.ArrayRecord(key="sv.weight", layer=f"l{i}", step=0, time=0.0, shape=[3],
                                     values=[1.0, 2.0, 3.0]) for i in range(arrays)],
        events=[protocol.EventRecord(kind="alert", level="warning", key="nonfinite", layer=None, step=i,
                                     time=0.0, message="m", data={}) for i in range(events)],
    )


def test_split_batch_halves_records_with_derived_ids_and_loses_nothing() -> None:
    batch = _batch()
    halves = protocol.split_batch(batch)
    assert halves is not None
    first, second = halves
    assert (first["batch_id"], second["batch_id"]) == ("run:7.0", "run:7.1")
    assert protocol.batch_size(first) > 0 and protocol.batch_size(second) > 0
    assert protocol.batch_size(first) + protocol.batch_size(second) == protocol.batch_size(batch)
    for field in ("scalars", "arrays", "events"):
        assert first[field] + second[field] == batch[field]  # type: ignore[literal-required]
    assert protocol.split_batch(batch) == halves  # deterministic: a replay makes the same ids


def test_split_batch_splits_a_single_series_between_its_points() -> None:
    batch = _batch(n_series=1, points=5, arrays=0, events=0)
    first, second = protocol.split_batch(batch)  # type: ignore[misc]
    assert first["scalars"][0]["steps"] == [0, 1] and second["scalars"][0]["steps"] == [2, 3, 4]
    assert first["scalars"][0]["key"] == second["scalars"][0]["key"] == "k0"
    assert len(second["scalars"][0]["values"]) == len(second["scalars"][0]["times"]) == 3


def test_split_batch_cannot_split_a_single_record() -> None:
    assert protocol.split_batch(_batch(n_series=0, arrays=1, events=0)) is None
    assert protocol.split_batch(_batch(n_series=1, points=1, arrays=0, events=0)) is None
