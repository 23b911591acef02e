"""Spectra and derived measures against matrices whose singular values are known."""

from __future__ import annotations

import math

import pytest
import torch

from probe.diagnostics.spectra import singular_values, spectrum_stats


def _with_singular_values(s: torch.Tensor, m: int, n: int, seed: int = 0) -> torch.Tensor:
    """U diag(s) Vᵀ with random orthonormal U (m×k), V (n×k)."""
    gen = torch.Generator().manual_seed(seed)
    k = s.numel()
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    return (u * s.double()) @ v.T


def test_diag_matrix_gives_its_singular_values_and_derived_measures() -> None:
    spec = singular_values(torch.diag(torch.tensor([1.0, 5.0, 3.0])))
    assert not spec.truncated
    torch.testing.assert_close(spec.values, torch.tensor([5.0, 3.0, 1.0]))
    stats = spectrum_stats(spec)
    assert stats["spectral_norm"].item() == pytest.approx(5.0)
    assert stats["cond"].item() == pytest.approx(5.0)
    assert stats["stable_rank"].item() == pytest.approx((25 + 9 + 1) / 25)
    p = torch.tensor([5.0, 3.0, 1.0]) / 9
    assert stats["eff_rank"].item() == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-5)


def test_rank_one_has_stable_and_effective_rank_one_and_infinite_cond() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.outer(torch.randn(20, generator=gen), torch.randn(7, generator=gen))
    stats = spectrum_stats(singular_values(a))
    assert stats["stable_rank"].item() == pytest.approx(1.0, rel=1e-5)
    assert stats["eff_rank"].item() == pytest.approx(1.0, rel=1e-4)
    assert stats["cond"].item() > 1e5  # σ_min is round-off


def test_orthonormal_columns_have_cond_one_and_full_effective_rank() -> None:
    q = _with_singular_values(torch.ones(6), 30, 6).float()
    stats = spectrum_stats(singular_values(q))
    assert stats["cond"].item() == pytest.approx(1.0, abs=1e-5)
    assert stats["eff_rank"].item() == pytest.approx(6.0, rel=1e-5)
    assert stats["stable_rank"].item() == pytest.approx(6.0, rel=1e-5)


def test_zero_matrix_gives_zeros_not_nan() -> None:
    stats = spectrum_stats(singular_values(torch.zeros(4, 3)))
    assert stats["spectral_norm"].item() == 0
    assert stats["stable_rank"].item() == 0
    assert stats["eff_rank"].item() == 0


def test_large_matrix_uses_randomized_top_k_that_matches_exact_values() -> None:
    s = 2.0 ** -torch.arange(40, dtype=torch.float64)  # decaying spectrum, like trained weights
    a = _with_singular_values(s, 300, 200).float()
    spec = singular_values(a, full_max_dim=100, top_k=8, generator=torch.Generator().manual_seed(0))
    assert spec.truncated and spec.values.shape == (8,)
    torch.testing.assert_close(spec.values, s[:8].float(), rtol=1e-3, atol=1e-6)
    stats = spectrum_stats(spec)
    assert "cond" not in stats  # σ_min of a top-k estimate is not σ_min
    # the stable rank uses the exact Frobenius norm, so it is exact even though truncated
    assert stats["stable_rank"].item() == pytest.approx((s**2).sum().item(), rel=1e-4)


def test_randomized_estimate_leaves_the_global_rng_alone() -> None:
    a = torch.randn(64, 64, generator=torch.Generator().manual_seed(3))
    state = torch.random.get_rng_state()
    singular_values(a, full_max_dim=10, top_k=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.random.get_rng_state())


def test_non_finite_matrix_gives_nan_spectrum_without_raising() -> None:
    a = torch.eye(5)
    a[2, 3] = float("nan")
    for full_max_dim in (5, 2):  # exact, and the randomized top-k
        spec = singular_values(a, full_max_dim=full_max_dim, top_k=2)
        assert torch.isnan(spec.values).all()
        stats = spectrum_stats(spec)
        # every measure NaN: a diverged layer must not read as a rank collapse (stable/effective rank 0)
        assert stats and all(math.isnan(v.item()) for v in stats.values()), stats


def test_bf16_input_is_measured_in_float32() -> None:
    spec = singular_values(torch.diag(torch.tensor([4.0, 2.0])).bfloat16())
    assert spec.values.dtype == torch.float32
    torch.testing.assert_close(spec.values, torch.tensor([4.0, 2.0]))


def test_rejects_non_matrix() -> None:
    with pytest.raises(ValueError, match="2-D"):
        singular_values(torch.ones(3))


@pytest.mark.parametrize("shape", [(96, 40), (40, 96), (64, 64)])
def test_exact_singular_values_match_float64_svd_down_to_cond_1e6(shape: tuple[int, int]) -> None:
    """The CPU route (float64 Gram eigenvalues of the tall orientation) must be at least as accurate
    as a float32 SVD, including the smallest singular value that the condition number rests on."""
    gen = torch.Generator().manual_seed(3)
    m, n = shape
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, k, dtype=torch.float64, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(n, k, dtype=torch.float64, generator=gen))
    sigma = torch.logspace(0, -6, k, dtype=torch.float64)
    a = ((u * sigma) @ v.T).float()
    reference = torch.linalg.svdvals(a.double())
    got = singular_values(a).values  # the exact route: min(shape) is under full_max_dim
    assert got.dtype == torch.float32 and got.shape == (k,)
    assert torch.all(got[:-1] >= got[1:]), "descending order"
    float32_svd_err = (torch.linalg.svdvals(a).double() - reference).abs().max()
    assert (got.double() - reference).abs().max() <= float32_svd_err
    assert abs(got[-1].double() / reference[-1] - 1) < 1e-3  # σ_min (≈1e-6·σ_max) resolved


def _mixed_shapes() -> list[torch.Tensor]:
    """Tall, wide and differently long matrices that share their smaller side (12); one holds an inf."""
    gen = torch.Generator().manual_seed(5)
    mats = [torch.randn(*shape, generator=gen) for shape in [(30, 12), (12, 40), (20, 12), (30, 12), (12, 12)]]
    mats[3][0, 0] = float("inf")
    return mats


@pytest.mark.parametrize("route", ["exact_spectra", "accelerator route"])
def test_spectra_of_mixed_shapes_match_each_matrix_and_isolate_a_non_finite_one(route: str) -> None:
    from probe.diagnostics import spectra

    mats = _mixed_shapes()
    if route == "exact_spectra":
        spec = spectra.exact_spectra(mats)
    else:  # the grouping by tall shape that GPUs take, run here on the CPU
        spec = spectra._masked(*spectra._exact_accelerated(mats), truncated=False)
    assert spec.values.shape == (5, 12) and spec.frob_sq.shape == (5,) and not spec.truncated
    for b in (0, 1, 2, 4):
        reference = torch.linalg.svdvals(mats[b].double())
        torch.testing.assert_close(spec.values[b].double(), reference, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(spec.frob_sq[b].double(), mats[b].double().square().sum(), rtol=1e-6, atol=0)
    assert torch.isnan(spec.values[3]).all() and torch.isnan(spec.frob_sq[3])
    stats = spectrum_stats(spec)  # one value per matrix, equal to the single-matrix measures
    for q, v in spectrum_stats(singular_values(mats[1])).items():
        torch.testing.assert_close(stats[q][1], v, rtol=1e-5, atol=1e-6)


def test_exact_spectra_rejects_what_it_cannot_batch() -> None:
    from probe.diagnostics.spectra import exact_spectra

    with pytest.raises(ValueError, match="one smaller side"):
        exact_spectra([torch.ones(30, 12), torch.ones(30, 13)])
    with pytest.raises(ValueError, match="2-D"):
        exact_spectra([torch.ones(4, 30, 12)])
    with pytest.raises(ValueError, match="2-D"):
        exact_spectra([])


def test_not_lifted_fraction_counts_singular_values_below_a_thousandth_of_the_frobenius_norm() -> None:
    from probe.diagnostics.spectra import not_lifted_fraction

    spec = singular_values(torch.diag(torch.tensor([1.0, 1e-5, 0.5, 1e-6])))
    assert not_lifted_fraction(spec).item() == pytest.approx(0.5)
    assert not_lifted_fraction(singular_values(torch.eye(4))).item() == 0.0
    broken = torch.eye(4)
    broken[0, 1] = float("inf")
    assert math.isnan(not_lifted_fraction(singular_values(broken)).item())
    with pytest.raises(ValueError, match="full spectrum"):
        not_lifted_fraction(singular_values(torch.eye(40), full_max_dim=10, top_k=4))
