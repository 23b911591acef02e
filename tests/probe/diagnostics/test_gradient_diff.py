"""Two-half-batch gradient-difference measures, Euclidean and Fisher metric, and the Monitor hook-up."""

from __future__ import annotations

import math

import pytest
import torch

from probe.diagnostics.gradient_diff import fisher_inner, gradient_difference
from probe.diagnostics.monitor import attach
from tests.probe.diagnostics.conftest import RecordingRun, TinyMLP


def test_identical_halves_have_no_difference() -> None:
    g = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    out = gradient_difference(g, g.clone())
    assert out["gdiff_norm"].item() == 0 and out["orthogonal"].item() == 0
    assert out["cos_g1_g2"].item() == pytest.approx(1.0)


def test_known_vectors_split_into_parallel_and_orthogonal_parts() -> None:
    g1 = torch.tensor([3.0, 1.0])
    g2 = torch.tensor([1.0, -1.0])  # g_avg = (2, 0), g_diff = (2, 2)
    out = gradient_difference(g1, g2)
    assert out["gavg_norm"].item() == pytest.approx(2.0)
    assert out["s_proj"].item() == pytest.approx(1.0)  # ⟨(2,2),(2,0)⟩ / 4
    assert out["parallel"].item() == pytest.approx(2.0)
    assert out["orthogonal"].item() == pytest.approx(2.0)
    assert out["cos_g1_g2"].item() == pytest.approx(2 / (10**0.5 * 2**0.5))


def test_fisher_metric_with_identity_factors_equals_euclidean_and_is_orthogonal() -> None:
    gen = torch.Generator().manual_seed(1)
    g1, g2 = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    out = gradient_difference(g1, g2, factors=(torch.eye(7), torch.eye(4)))  # A with a bias row/column
    for q in ("gavg_norm", "gdiff_norm", "parallel", "orthogonal", "s_proj"):
        assert out[f"{q}_fisher"].item() == pytest.approx(out[q].item(), rel=1e-5)


def test_fisher_orthogonal_part_is_fisher_orthogonal_to_the_average() -> None:
    gen = torch.Generator().manual_seed(2)
    ma, mg = torch.randn(6, 6, generator=gen), torch.randn(5, 5, generator=gen)
    a, g = ma @ ma.T + 0.1 * torch.eye(6), mg @ mg.T + 0.1 * torch.eye(5)
    g1, g2 = torch.randn(5, 6, generator=gen), torch.randn(5, 6, generator=gen)
    out = gradient_difference(g1, g2, factors=(a, g))
    avg, diff = (g1 + g2) / 2, g1 - g2
    orth = diff - out["s_proj_fisher"] * avg
    assert fisher_inner(avg, orth, a, g).abs().item() < 1e-3 * out["gavg_norm_fisher"].item() ** 2
    assert out["orthogonal_fisher"].item() ** 2 == pytest.approx(fisher_inner(orth, orth, a, g).item(), rel=1e-4)


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        gradient_difference(torch.ones(2), torch.ones(3))


def test_monitor_measures_half_batches_for_any_optimizer(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mon = attach(model, opt, run=recording_run, log_every=2, gdiff_every=2)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 8, generator=gen), torch.randn(16, 4, generator=gen)

    def half(i: int):
        return lambda: torch.nn.functional.mse_loss(model(x[i::2]), y[i::2])

    for step in range(2):
        opt.zero_grad()
        if mon.wants_gradient_diff:
            mon.measure_gradient_diff((half(0), half(1)), set_grad=True)
        else:
            torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    logged = recording_run.series("gdiff.cos_g1_g2/fc1.weight")
    assert list(logged) == [0]
    assert -1 <= logged[0] <= 1
    assert recording_run.series("gdiff.gdiff_norm/fc2.bias")[0] > 0
    # set_grad wrote g_avg, which the optimizer then used
    assert recording_run.series("grad_norm/fc1.weight")[0] == pytest.approx(
        recording_run.series("gdiff.gavg_norm/fc1.weight")[0], rel=1e-5
    )


def test_set_grad_covers_a_parameter_only_one_half_reaches(recording_run: RecordingRun) -> None:
    # two branches (experts, say): the second half of the batch never routes through `b`
    a, b, idle = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    model = torch.nn.ModuleList([a, b, idle])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = attach(model, opt, run=recording_run)
    b.weight.grad = torch.full_like(b.weight, 123.0)  # left over: no zero_grad() before
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    mon.measure_gradient_diff((lambda: a(x).mean() + b(x).mean(), lambda: a(x).mean()), set_grad=True)
    (g1_b,) = torch.autograd.grad(b(x).mean(), b.weight)
    torch.testing.assert_close(b.weight.grad, g1_b / 2)  # half of the one half's gradient, nothing stale
    (g_a,) = torch.autograd.grad(a(x).mean(), a.weight)
    torch.testing.assert_close(a.weight.grad, g_a)  # both halves: their mean
    assert idle.weight.grad is None  # neither half: untouched


@pytest.mark.parametrize("true_scale", [6.25, 100.0, 625.0])  # below, above and far above B = 16
def test_noise_scale_recovers_tr_sigma_over_g_squared_of_known_per_example_gradients(true_scale: float) -> None:
    from probe.diagnostics.gradient_diff import NoiseScale

    # per-example gradients G + ε in d dimensions, ε ~ N(0, σ²I): tr(Σ)/‖G‖² = dσ²/‖G‖²
    gen = torch.Generator().manual_seed(0)
    dim, batch, steps = 2000, 16, 1500
    mean = torch.full((dim,), 0.02)
    sigma = (true_scale * mean.square().sum() / dim).sqrt()
    noise = NoiseScale(decay=0.995)
    for _ in range(steps):
        examples = mean + sigma * torch.randn(batch, dim, generator=gen)
        a, b = examples[: batch // 2].mean(0), examples[batch // 2:].mean(0)
        estimate = noise.update([((a + b) / 2).norm()], [(a - b).norm()], batch_size=batch)
    assert estimate.item() == pytest.approx(true_scale, rel=0.15)


def test_noise_scale_running_means_and_the_noise_dominated_case() -> None:
    from probe.diagnostics.gradient_diff import NoiseScale

    noise = NoiseScale(decay=0.5)
    t = torch.tensor
    # step 1: tr(Σ) = 8·1²/4 = 2, ‖G‖² = 2² − 1²/4 = 3.75
    assert noise.update([t(2.0)], [t(1.0)], batch_size=8).item() == pytest.approx(2 / 3.75)  # one step: its ratio
    # step 2 (two layers, summed): tr(Σ) = 8·(2² + 0²)/4 = 8, ‖G‖² = (1² + 1²) − (2² + 0²)/4 = 1;
    # running means from zero with decay 0.5 weigh the steps 1/4 and 1/2
    ratio = (0.25 * 2 + 0.5 * 8) / (0.25 * 3.75 + 0.5 * 1)
    assert noise.update([t(1.0), t(1.0)], [t(2.0), t(0.0)], batch_size=8).item() == pytest.approx(ratio)
    # a non-finite step (an overflow) is left out of the running means instead of poisoning them
    assert noise.update([t(float("nan"))], [t(1.0)], batch_size=8).item() == pytest.approx(ratio)
    assert noise.update([t(1.0)], [t(float("inf"))], batch_size=8).item() == pytest.approx(ratio)
    flooded = NoiseScale()
    assert math.isnan(flooded.update([t(float("nan"))], [t(1.0)], batch_size=8).item())  # nothing measured yet
    assert flooded.update([t(0.5)], [t(4.0)], batch_size=8).item() == float("inf")  # ‖G‖² estimate ≤ 0
    with pytest.raises(ValueError, match="decay"):
        NoiseScale(decay=1.0)


def test_monitor_logs_the_noise_scale_of_its_half_batch_measurement(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = attach(model, opt, run=recording_run, log_every=1, batch_size=16)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 8, generator=gen), 10 + torch.randn(16, 4, generator=gen)  # a shared signal
    mon.measure_gradient_diff((lambda: torch.nn.functional.mse_loss(model(x[:8]), y[:8]),
                               lambda: torch.nn.functional.mse_loss(model(x[8:]), y[8:])), set_grad=True)
    opt.step()
    mon.detach()
    names = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
    avg = sum(recording_run.series(f"gdiff.gavg_norm/{n}")[0] ** 2 for n in names)
    diff = sum(recording_run.series(f"gdiff.gdiff_norm/{n}")[0] ** 2 for n in names)
    grad_sq = avg - diff / 4
    assert grad_sq > 0  # the halves agree on the offset: a finite noise scale
    assert recording_run.series("gdiff.noise_scale")[0] == pytest.approx((16 * diff / 4) / grad_sq, rel=1e-4)
