"""Pure measures: update/param ratio, per-neuron norms and their spread, non-finite counts, orth error."""

from __future__ import annotations

import math

import pytest
import torch

from probe.diagnostics.measures import (
    as_matrix,
    global_norm,
    nonfinite_count,
    nonfinite_counts,
    orthogonality_error,
    row_norms,
    spread_stats,
    stack_f32,
    update_ratio,
)


def test_as_matrix_flattens_conv_and_moves_the_neuron_axis_first() -> None:
    conv = torch.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
    assert as_matrix(conv).shape == (2, 60)
    w_in_out = torch.arange(6.0).reshape(2, 3)  # stored (in, out): 3 neurons
    torch.testing.assert_close(as_matrix(w_in_out, neuron_axis=1), w_in_out.T)
    torch.testing.assert_close(as_matrix(w_in_out, neuron_axis=-1), w_in_out.T)
    with pytest.raises(ValueError):
        as_matrix(torch.ones(3))


def test_update_ratio_is_frobenius_ratio() -> None:
    w = torch.full((2, 2), 2.0)  # ‖W‖ = 4
    assert update_ratio(torch.full((2, 2), 0.01), w).item() == pytest.approx(0.02 / 4)


def test_row_norms_and_spread_with_a_frozen_neuron() -> None:
    delta = torch.tensor([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0], [0.0, 5.0]])
    norms = row_norms(delta)
    torch.testing.assert_close(norms, torch.tensor([5.0, 0.0, 10.0, 5.0]))
    stats = spread_stats(norms)
    assert stats["frozen_frac"].item() == pytest.approx(0.25)
    assert stats["min"].item() == 0 and stats["max"].item() == 10
    assert stats["q50"].item() == pytest.approx(5.0)
    assert stats["cv"].item() == pytest.approx(norms.std(correction=0).item() / 5.0)


def test_spread_of_all_zero_updates_is_all_frozen_with_zero_cv() -> None:
    stats = spread_stats(torch.zeros(7))
    assert stats["frozen_frac"].item() == 1.0
    assert stats["cv"].item() == 0.0


def test_nonfinite_count_counts_nan_and_both_infinities() -> None:
    t = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0])
    assert nonfinite_count(t).item() == 3
    assert nonfinite_count(torch.ones(4)).item() == 0


@pytest.mark.parametrize("shape", [(40, 10), (10, 40), (16, 16)])
def test_orthogonality_error_is_zero_for_semi_orthogonal(shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(max(shape), min(shape), generator=gen))
    o = q if shape[0] >= shape[1] else q.T
    assert orthogonality_error(o).item() < 1e-5
    # 2·Q: OOᵀ = 4I, so ‖3I‖_F/√k = 3
    assert orthogonality_error(2 * o).item() == pytest.approx(3.0, rel=1e-5)


def test_global_norm_combines_per_tensor_norms() -> None:
    assert global_norm([torch.tensor(3.0), torch.tensor(4.0)]).item() == pytest.approx(5.0)
    assert math.isnan(global_norm([torch.tensor(3.0), torch.tensor(float("nan"))]).item())


def test_batched_nonfinite_counts_match_the_single_tensor_count() -> None:
    tensors = [
        torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0]),
        torch.zeros(3, 2),
        torch.tensor([[float("nan")] * 4]).bfloat16(),
    ]
    assert nonfinite_counts(tensors).tolist() == [nonfinite_count(t).item() for t in tensors] == [3, 0, 4]
    assert nonfinite_counts([]).numel() == 0


def test_nonfinite_counts_use_known_norms_only_as_a_shortcut() -> None:
    tensors = [torch.ones(3), torch.tensor([1.0, float("nan")]), torch.tensor([float("inf"), 2.0])]
    norms = torch.stack([t.norm() for t in tensors])
    assert nonfinite_counts(tensors, norms).tolist() == [0, 1, 1]  # a non-finite norm: counted
    finite = [torch.ones(3), torch.full((2,), 1e30)]  # the second norm overflows: counted, and 0
    assert nonfinite_counts(finite, torch.stack([t.norm() for t in finite])).tolist() == [0, 0]
    assert nonfinite_counts(finite[:1], torch.ones(1)).tolist() == [0]


def test_spread_of_a_stack_equals_the_spread_of_each_vector() -> None:
    gen = torch.Generator().manual_seed(2)
    norms = torch.rand(3, 9, generator=gen)
    norms[1, :4] = 0.0  # frozen neurons in one layer only
    batched = spread_stats(norms)
    for b in range(3):
        for q, v in spread_stats(norms[b]).items():
            torch.testing.assert_close(batched[q][b], v)
    assert batched["frozen_frac"].tolist() == pytest.approx([0.0, 4 / 9, 0.0])


def test_stack_f32_promotes_mixed_dtypes_and_takes_one_element_tensors() -> None:
    values = [torch.tensor(3), torch.tensor(0.5, dtype=torch.bfloat16), torch.tensor(2.25)]
    out = stack_f32(values)
    assert out.dtype == torch.float32 and out.shape == (3,)
    assert out.tolist() == [3.0, 0.5, 2.25]
    # a 1-element tensor among 0-d ones takes the slower per-value path, same result
    mixed = stack_f32([torch.tensor([1.5]), torch.tensor(7, dtype=torch.int32)])
    assert mixed.dtype == torch.float32 and mixed.tolist() == [1.5, 7.0]
