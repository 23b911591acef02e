"""probe.optim.NorMuon against its formula (ALGORITHMS.md §2.2) and properties P7–P11."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from probe.optim import NorMuon
from probe.optim._orthogonalize import newton_schulz5

# float64 end to end (NS in float64 for float64 params): only reduction-order roundoff differs
# between the batched optimizer and the one-matrix-at-a-time reference.
FP64_REFERENCE_ATOL = 1e-12
# P7: rows of Ô have identical RMS up to the ε = 1e-10 in √v + ε: CV ≈ 1e-10 (ALGORITHMS.md).
P7_ROW_CV_MAX = 1e-8
# P8: exact identities in float64, up to the ε = 1e-10 in the denominators.
P8_REL = 1e-9
# P9: row-norm CV of NS5(Gaussian) 512×128 ≈ 0.057, 128×512 ≈ 0.024 (our numbers, one seed); ±35%.
P9_TALL_BAND = (0.037, 0.077)
P9_WIDE_BAND = (0.015, 0.033)
# P10: cond 1.66 → 1.72 (ratio 1.036) on a 512×128 NS5 output; the ratio must exceed 1, modestly.
P10_RATIO_BAND = (1.0, 1.1)


def _reference_step(W, M, v, G, *, lr, beta, beta2, eps, wd, nesterov, rule="original"):
    """One NorMuon step of the official code (§2.2) for one matrix, written out plainly."""
    M = beta * M + (1 - beta) * G
    U = (1 - beta) * G + beta * M if nesterov else M
    O = newton_schulz5(U.reshape(U.shape[0], -1))
    m, n = O.shape
    v = beta2 * v + (1 - beta2) * (O * O).mean(dim=1)
    On = O / (v.sqrt() + eps)[:, None]
    if rule == "original":
        On = On * (O.norm() / (On.norm() + eps)) * math.sqrt(max(1, m / n))
    else:
        On = On * (0.2 * math.sqrt(m * n) / (On.norm() + eps))
    W = W * (1 - lr * wd) - lr * On.reshape(W.shape)
    return W, M, v


def _gaussian(shape, seed, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _row_cv(X: torch.Tensor) -> float:
    r = X.pow(2).mean(dim=1).sqrt()
    return (r.std(unbiased=False) / r.mean()).item()


@pytest.mark.parametrize("rule", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_matches_reference_formula_float64(rule: str, nesterov: bool) -> None:
    shapes = [(24, 8), (24, 8), (8, 40), (6, 3, 3, 3)]
    params = [nn.Parameter(_gaussian(s, i)) for i, s in enumerate(shapes)]
    hp = dict(lr=0.03, beta=0.9, beta2=0.8, eps=1e-10, wd=0.05)
    opt = NorMuon(params, lr=hp["lr"], momentum=hp["beta"], beta2=hp["beta2"], eps=hp["eps"],
                  weight_decay=hp["wd"], nesterov=nesterov, adjust_lr_fn=rule)
    ref = [(p.detach().clone(), torch.zeros_like(p), torch.zeros(p.shape[0], dtype=p.dtype)) for p in params]
    for step in range(4):
        for i, p in enumerate(params):
            p.grad = _gaussian(p.shape, 100 * step + i)
            W, M, v = ref[i]
            ref[i] = _reference_step(W, M.reshape(p.shape), v, p.grad.clone(), nesterov=nesterov, rule=rule, **hp)
        opt.step()
    for p, (W, M, v) in zip(params, ref):
        torch.testing.assert_close(p.detach(), W, atol=FP64_REFERENCE_ATOL, rtol=0)
        torch.testing.assert_close(opt.state[p]["v"], v, atol=FP64_REFERENCE_ATOL, rtol=0)


@pytest.mark.parametrize("beta2", [0.0, 0.95])
def test_p7_rows_have_identical_rms_at_step_one(beta2: float) -> None:
    p = nn.Parameter(_gaussian((64, 16), 0))
    p.grad = _gaussian((64, 16), 1)
    opt = NorMuon([p], beta2=beta2, introspect=True)
    opt.step()
    normalized = opt.last_internals[p]["normalized"]
    assert _row_cv(opt.last_internals[p]["post_orth"]) > 1e-3  # the input rows were not uniform
    assert _row_cv(normalized) < P7_ROW_CV_MAX
    if beta2 == 0.0:  # with β₂ = 0 it holds at every step
        p.grad = _gaussian((64, 16), 2)
        opt.step()
        assert _row_cv(opt.last_internals[p]["normalized"]) < P7_ROW_CV_MAX


@pytest.mark.parametrize("shape", [(96, 24), (24, 96), (32, 32)])
def test_p8_code_form_preserves_frobenius_norm_times_shape_factor(shape: tuple[int, int]) -> None:
    p = nn.Parameter(_gaussian(shape, 0))
    p0 = p.detach().clone()
    opt = NorMuon([p], lr=0.1, introspect=True)
    for s in range(3):
        p0 = p.detach().clone()
        p.grad = _gaussian(shape, 10 + s)
        opt.step()
    d = opt.last_internals[p]
    m, n = shape
    assert d["normalized"].norm().item() == pytest.approx(d["post_orth"].norm().item(), rel=P8_REL)
    step_norm = (p.detach() - p0).norm().item() / 0.1
    assert step_norm == pytest.approx(d["post_orth"].norm().item() * math.sqrt(max(1, m / n)), rel=P8_REL)


@pytest.mark.parametrize("shape", [(96, 24), (24, 96), (7, 50)])
def test_p8_paper_form_update_rms_is_point_two(shape: tuple[int, int]) -> None:
    p = nn.Parameter(_gaussian(shape, 0))
    opt = NorMuon([p], lr=0.1, adjust_lr_fn="match_rms_adamw", nesterov=False)
    for s in range(3):
        p0 = p.detach().clone()
        p.grad = _gaussian(shape, 20 + s)
        opt.step()
    rms = ((p.detach() - p0) / 0.1).pow(2).mean().sqrt().item()
    assert rms == pytest.approx(0.2, rel=P8_REL)


def test_p9_p10_ns_rows_nonuniform_and_conditioning() -> None:
    tall = newton_schulz5(_gaussian((512, 128), 0), dtype=torch.float32).double()
    wide = newton_schulz5(_gaussian((128, 512), 0), dtype=torch.float32).double()
    assert P9_TALL_BAND[0] <= _row_cv(tall) <= P9_TALL_BAND[1]
    assert P9_WIDE_BAND[0] <= _row_cv(wide) <= P9_WIDE_BAND[1]
    p = nn.Parameter(_gaussian((512, 128), 1, torch.float32))
    p.grad = _gaussian((512, 128), 0, torch.float32)
    opt = NorMuon([p], introspect=True)
    opt.step()
    O, On = opt.last_internals[p]["post_orth"].double(), opt.last_internals[p]["normalized"].double()
    assert _row_cv(On) < 1e-4  # NorMuon removes P9's non-uniformity (float32 here)
    cond = lambda X: (lambda s: (s[0] / s[-1]).item())(torch.linalg.svdvals(X))  # noqa: E731
    ratio = cond(On) / cond(O)
    assert P10_RATIO_BAND[0] < ratio < P10_RATIO_BAND[1]


def test_p11_state_shapes_linear_and_conv() -> None:
    lin = nn.Parameter(torch.zeros(20, 7))
    conv = nn.Parameter(torch.zeros(8, 3, 3, 3))
    lin.grad, conv.grad = torch.ones(20, 7), torch.ones(8, 3, 3, 3)
    opt = NorMuon([lin, conv])
    opt.step()
    assert opt.state[lin]["v"].shape == (20,) and opt.state[lin]["momentum_buffer"].shape == (20, 7)
    assert opt.state[conv]["v"].shape == (8,) and opt.state[conv]["momentum_buffer"].shape == (8, 3, 3, 3)
    assert opt.state[lin]["v"].dtype == torch.float32


def test_conv_normalized_per_output_channel_like_its_flattened_matrix() -> None:
    conv = nn.Parameter(_gaussian((8, 4, 3, 3), 0))
    flat = nn.Parameter(conv.detach().reshape(8, 36).clone())
    oc, of = NorMuon([conv], introspect=True), NorMuon([flat])
    for s in range(3):
        G = _gaussian((8, 4, 3, 3), s + 1)
        conv.grad, flat.grad = G.clone(), G.reshape(8, 36).clone()
        oc.step(), of.step()
    torch.testing.assert_close(conv.detach().reshape(8, 36), flat.detach(), atol=0, rtol=0)
    assert _row_cv(oc.last_internals[conv]["normalized"]) < 0.5


def test_zero_update_stays_finite_and_zero() -> None:
    p = nn.Parameter(_gaussian((10, 4), 0, torch.float32))
    w = p.detach().clone()
    p.grad = torch.zeros(10, 4)
    opt = NorMuon([p])
    opt.step()
    assert torch.equal(p.detach(), w) and torch.isfinite(opt.state[p]["v"]).all()


def test_nonfinite_gradient_leaves_v_and_weights() -> None:
    p = nn.Parameter(_gaussian((10, 4), 0, torch.float32))
    opt = NorMuon([p], introspect=True)
    p.grad = _gaussian((10, 4), 1, torch.float32)
    opt.step()
    v, w = opt.state[p]["v"].clone(), p.detach().clone()
    p.grad = torch.full((10, 4), float("nan"))
    opt.step()
    assert torch.equal(opt.state[p]["v"], v) and torch.equal(p.detach(), w)
    assert opt.last_internals[p]["nonfinite_skips"].item() == 1


def test_introspection_keys_and_shapes() -> None:
    p = nn.Parameter(torch.zeros(12, 5))
    p.grad = _gaussian((12, 5), 0, torch.float32)
    opt = NorMuon([p], introspect=True)
    opt.step()
    d = opt.last_internals[p]
    assert {"pre_orth", "post_orth", "v", "normalized"} <= set(d)
    assert d["v"].shape == (12,) and d["normalized"].shape == (12, 5)
    assert NorMuon.orthogonalizer == "newton_schulz5"


def test_defaults_follow_official_code() -> None:
    opt = NorMuon([nn.Parameter(torch.zeros(3, 3))])
    g = opt.defaults
    assert (g["lr"], g["momentum"], g["beta2"], g["eps"], g["weight_decay"], g["nesterov"], g["ns_steps"]) == (
        0.02, 0.95, 0.95, 1e-10, 0.0, True, 5)
    assert g["adjust_lr_fn"] == "original"
    with pytest.raises(ValueError, match=r"Invalid eps: 0\.0"):
        NorMuon([nn.Parameter(torch.zeros(3, 3))], eps=0.0)
