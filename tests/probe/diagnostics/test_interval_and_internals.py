"""The interval buffer (one host copy) and the translation of optimizer internals to contract keys."""

from __future__ import annotations

import pytest
import torch

from probe.diagnostics.internals import global_internals, layer_internals
from probe.diagnostics.interval import IntervalBuffer


def test_drain_returns_floats_per_step_and_cpu_arrays_with_one_copy(monkeypatch) -> None:
    buf = IntervalBuffer()
    buf.add_scalars(3, ["a/x", "b/x"], [torch.tensor(1.5), torch.tensor(2, dtype=torch.int64)])
    buf.add_scalars(4, ["a/x"], torch.tensor([0.25]))
    buf.add_array("sv.weight", "x", 3, torch.tensor([3.0, 2.0, 1.0]))
    buf.add_host(4, "step_time", 0.1)
    copies = []
    original = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: copies.append(1) or original(self, *a, **k))
    per_step, arrays = buf.drain()
    assert copies == [1]
    assert per_step == {3: {"a/x": 1.5, "b/x": 2.0}, 4: {"a/x": 0.25, "step_time": 0.1}}
    (arr,) = arrays
    assert (arr.key, arr.layer, arr.step) == ("sv.weight", "x", 3)
    assert arr.values.tolist() == [3.0, 2.0, 1.0]
    assert len(buf) == 0 and buf.drain() == ({}, [])


def test_drain_converts_arrays_of_other_dtypes_and_shapes_and_keeps_their_order() -> None:
    buf = IntervalBuffer()
    buf.add_array("neuron.update_norm", "x", 1, torch.tensor([1, 2], dtype=torch.int64))
    buf.add_scalars(1, ["a/x"], [torch.tensor(0.5)])
    buf.add_array("sv.weight", "y", 1, torch.tensor([[4.0, 3.0], [2.0, 1.0]], dtype=torch.float64))
    per_step, arrays = buf.drain()
    assert per_step == {1: {"a/x": 0.5}}
    assert [(a.key, a.layer, a.values.dtype, a.values.tolist()) for a in arrays] == [
        ("neuron.update_norm", "x", torch.float32, [1.0, 2.0]),
        ("sv.weight", "y", torch.float32, [4.0, 3.0, 2.0, 1.0]),
    ]


def test_keys_and_values_must_match() -> None:
    with pytest.raises(ValueError, match="2 keys"):
        IntervalBuffer().add_scalars(0, ["a", "b"], torch.ones(3))


def test_fop_kfac_and_normuon_internals_map_to_contract_keys() -> None:
    t = torch.tensor
    fop = layer_internals("fc.weight", {
        "s_proj": t(0.5), "beta": t(-0.1), "eta": t(0.9), "A_eig_max": t(4.0), "G_eig_max": t(2.0),
        "A_eig_min": t(0.1), "G_eig_min": t(0.2), "damping": t(1e-3), "pi": t(1.0), "A_eigs": t([4.0, 0.1]),
        "A_eig_mean": t(2.0), "G_eig_mean": t(0.5),
    })
    got = dict(zip(fop.keys, (v.item() for v in fop.values)))
    assert got["fop.s_proj/fc.weight"] == 0.5 and got["fop.beta/fc.weight"] == pytest.approx(-0.1)
    assert got["kfac.A_eig_max/fc.weight"] == 4.0
    assert got["kfac.damping_rel/fc.weight"] == pytest.approx(1e-3 / 8.0)  # vs the largest eigenvalue
    assert got["kfac.damping_rel_mean/fc.weight"] == pytest.approx(1e-3 / 1.0)  # vs the mean ones
    assert "kfac.pi/fc.weight" not in got  # not a contract key
    assert set(fop.arrays) == {"kfac.A_eigs"}
    normuon = layer_internals("h", {"v": t([[1.0], [3.0]]), "pre_orth": torch.ones(2, 2)})
    got = dict(zip(normuon.keys, (v.item() for v in normuon.values)))
    assert got == {"normuon.v_cv/h": pytest.approx(0.5), "normuon.v_min/h": 1.0, "normuon.v_max/h": 3.0}
    assert normuon.arrays["normuon.v"].tolist() == [1.0, 3.0]
    assert global_internals({"kl_nu": t(0.7)}).keys == ["kfac.kl_nu"]
    assert global_internals({}).keys == []


def test_normuon_row_spread_compares_the_same_rows() -> None:
    o = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 0.0], [0.0, 2.0]])
    full = layer_internals("h", {"post_orth": o, "normalized": o / o.norm(dim=1, keepdim=True)})
    got = dict(zip(full.keys, (v.item() for v in full.values)))
    assert got["normuon.row_rms_cv_before/h"] > 0.2
    assert got["normuon.row_rms_cv_after/h"] == pytest.approx(0.0)
    # a sharded NorMuon normalizes its own 2 rows of the 4: only Ô's spread is logged
    shard = layer_internals("h", {"post_orth": o, "normalized": o[:2] / o[:2].norm(dim=1, keepdim=True)})
    assert shard.keys == ["normuon.row_rms_cv_after/h"]


def test_rows_of_a_batch_become_arrays_of_their_own_keys_in_order() -> None:
    buf = IntervalBuffer()
    buf.add_array("sv.weight", "a", 2, torch.tensor([9.0]))
    buf.add_arrays([("sv.weight", "b"), ("sv.update", "b")], 2, torch.tensor([[3.0, 2.0], [1.0, 0.5]]))
    buf.add_array("neuron.update_norm", "c", 2, torch.empty(0))  # an empty array survives the drain
    _, arrays = buf.drain()
    assert [(a.key, a.layer, a.step, a.values.tolist()) for a in arrays] == [
        ("sv.weight", "a", 2, [9.0]),
        ("sv.weight", "b", 2, [3.0, 2.0]),
        ("sv.update", "b", 2, [1.0, 0.5]),
        ("neuron.update_norm", "c", 2, []),
    ]
    with pytest.raises(ValueError, match="2 rows"):
        buf.add_arrays([("k", "x"), ("k", "y")], 0, torch.ones(3, 2))
