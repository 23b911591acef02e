"""probe.optim.Muon: equality with torch.optim.Muon, P5, non-finite guard, conv, AdamW groups, introspection."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from probe.optim import Muon
from probe.optim._orthogonalize import newton_schulz5

# Same bf16 arithmetic as torch.optim.Muon (NS in bf16, same addmm grouping, scale folded into the
# fp32 step, same fused add): measured bit-identical here; 1e-6 leaves room for bmm-vs-mm blocking
# differences of other BLAS builds.
TORCH_EQUAL_BF16_ATOL = 1e-6
# Our CPU default NS runs in fp32 while torch.optim.Muon always uses bf16: the update differs by bf16
# rounding of O (2^-8 relative per entry); relative to the accumulated ΔW this measured ≈1e-2.
TORCH_FP32_VS_BF16_REL = 3e-2
# fp32 formula checks: one NS call recomputed on the same input.
FORMULA_ATOL = 1e-6
# Introspected post_orth came from a batched NS; recomputing one matrix alone uses mm, not bmm.
BATCHED_VS_SINGLE_ATOL = 1e-5
# AdamW groups vs torch.optim.AdamW: identical formula, fp32 rounding only.
ADAMW_ATOL = 1e-6

SHAPES = [(32, 16), (32, 16), (16, 48), (24, 24), (24, 24), (24, 24)]


def _params(shapes: list[tuple[int, ...]], seed: int = 0, dtype: torch.dtype = torch.float32) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]


def _clone(ps: list[nn.Parameter]) -> list[nn.Parameter]:
    return [nn.Parameter(p.detach().clone()) for p in ps]


def _set_grads(groups: list[list[nn.Parameter]], g: torch.Generator) -> None:
    for ps in zip(*groups):
        grad = torch.randn(ps[0].shape, generator=g, dtype=ps[0].dtype)
        for p in ps:
            p.grad = grad.clone()


@pytest.mark.parametrize("adjust_lr_fn", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_equals_torch_muon_at_matching_settings(adjust_lr_fn: str, nesterov: bool) -> None:
    base = _params(SHAPES)
    ours, theirs, fp32 = _clone(base), _clone(base), _clone(base)
    kw = dict(lr=0.02, weight_decay=0.01, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    opt_ours = Muon(ours, ns_dtype=torch.bfloat16, **kw)  # torch.optim.Muon runs NS in bf16
    opt_fp32 = Muon(fp32, **kw)
    opt_torch = torch.optim.Muon(theirs, **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        _set_grads([ours, theirs, fp32], g)
        opt_ours.step(), opt_torch.step(), opt_fp32.step()
    for a, b, c, p0 in zip(ours, theirs, fp32, base):
        torch.testing.assert_close(a, b, atol=TORCH_EQUAL_BF16_ATOL, rtol=0)
        assert torch.equal(a.grad, b.grad)  # the Nesterov blend is not written into .grad
        delta_c, delta_b = (c - p0).detach(), (b - p0).detach()
        assert (delta_c - delta_b).norm() / delta_b.norm() < TORCH_FP32_VS_BF16_REL


@pytest.mark.parametrize(("shape", "adjust_lr_fn"), [((64, 16), "original"), ((16, 64), "original"), ((64, 16), "match_rms_adamw"), ((16, 64), "match_rms_adamw")])
def test_p5_update_rms_rule(shape: tuple[int, int], adjust_lr_fn: str) -> None:
    """One step with momentum 0: ΔW = −η·s·NS5(G). Normalised by NS5's own ‖O‖_F/√k (NS is not exactly
    orthogonal), RMS(ΔW)/η is 1/√n (Keller) or 0.2 (Moonlight), as P5 states for exact O."""
    (p,) = _params([shape])
    p0 = p.detach().clone()
    G = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    p.grad = G.clone()
    lr = 0.1
    Muon([p], lr=lr, momentum=0.0, nesterov=False, adjust_lr_fn=adjust_lr_fn).step()
    O = newton_schulz5(G)
    m, n = shape
    s = math.sqrt(max(1, m / n)) if adjust_lr_fn == "original" else 0.2 * math.sqrt(max(m, n))
    torch.testing.assert_close(p.detach() - p0, -lr * s * O, atol=FORMULA_ATOL, rtol=0)
    rms = (p.detach() - p0).pow(2).mean().sqrt() / lr
    o_rms_factor = O.norm() / math.sqrt(min(m, n))
    expected = 1 / math.sqrt(n) if adjust_lr_fn == "original" else 0.2
    assert (rms / o_rms_factor).item() == pytest.approx(expected, rel=1e-5)


def test_conv_weight_is_flattened_and_scaled_like_its_matrix() -> None:
    conv = nn.Parameter(torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0)))
    flat = nn.Parameter(conv.detach().reshape(8, 36).clone())
    G = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    conv.grad, flat.grad = G.clone(), G.reshape(8, 36).clone()
    oc, of = Muon([conv], lr=0.05), Muon([flat], lr=0.05)
    for _ in range(2):
        oc.step(), of.step()
    torch.testing.assert_close(conv.detach().reshape(8, 36), flat.detach(), atol=0, rtol=0)
    assert oc.state[conv]["momentum_buffer"].shape == conv.shape


def test_one_dim_parameter_refused_with_routing_hint() -> None:
    with pytest.raises(ValueError, match=r"1-D parameter of shape \(5,\).*AdamW.*hybrid_param_groups"):
        Muon([nn.Parameter(torch.zeros(5))])
    opt = Muon([nn.Parameter(torch.zeros(3, 3))])
    with pytest.raises(ValueError, match="hybrid_param_groups"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(3))]})
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(3))], "use_muon": False})  # AdamW group is fine


def test_nonfinite_gradient_skips_that_parameter_only() -> None:
    base = _params([(12, 20), (12, 20), (20, 12)])
    a, b = _clone(base), _clone(base)
    opt_a, opt_b = Muon(a, lr=0.05, weight_decay=0.1), Muon(b[1:], lr=0.05, weight_decay=0.1)
    g = torch.Generator().manual_seed(2)
    _set_grads([a, b], g)
    opt_a.step(), opt_b.step()
    mom0 = opt_a.state[a[0]]["momentum_buffer"].clone()
    w0 = a[0].detach().clone()
    _set_grads([a, b], g)
    a[0].grad[3, 4] = float("inf")
    opt_a.step(), opt_b.step()
    assert torch.equal(a[0].detach(), w0)  # no update, no weight decay
    assert torch.equal(opt_a.state[a[0]]["momentum_buffer"], mom0)
    assert opt_a.state[a[0]]["nonfinite_skips"].item() == 1
    assert opt_a.state[a[1]]["nonfinite_skips"].item() == 0
    # Its bucket-mate is unaffected (per-matrix norms in the batched NS).
    for x, y in zip(a[1:], b[1:]):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0)
    assert torch.isfinite(a[0]).all()
    # The next finite gradient resumes normally.
    _set_grads([a], g)
    opt_a.step()
    assert not torch.equal(a[0].detach(), w0)


def test_grad_none_parameter_is_left_alone() -> None:
    a, b = _params([(6, 6), (6, 6)])
    a.grad = torch.ones(6, 6)
    before = b.detach().clone()
    opt = Muon([a, b], weight_decay=0.5)
    opt.step()
    assert torch.equal(b.detach(), before) and b not in opt.state


def test_adamw_group_equals_torch_adamw() -> None:
    base = _params([(7,), (3, 5), (1,)])
    ours, theirs = _clone(base), _clone(base)
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    opt = Muon([{"params": ours, "use_muon": False, **kw}])
    ref = torch.optim.AdamW(theirs, **kw)
    g = torch.Generator().manual_seed(3)
    for _ in range(6):
        _set_grads([ours, theirs], g)
        opt.step(), ref.step()
    for x, y in zip(ours, theirs):
        torch.testing.assert_close(x, y, atol=ADAMW_ATOL, rtol=0)
    assert opt.state[ours[0]]["step"].item() == 6


def test_adamw_group_nonfinite_is_skipped() -> None:
    (p,) = _params([(4,)])
    opt = Muon([{"params": [p], "use_muon": False, "lr": 0.1}])
    p.grad = torch.ones(4)
    opt.step()
    w = p.detach().clone()
    p.grad = torch.tensor([1.0, float("nan"), 0.0, 0.0])
    opt.step()
    assert torch.equal(p.detach(), w) and opt.state[p]["step"].item() == 1
    assert opt.state[p]["nonfinite_skips"].item() == 1


def test_introspection_contract() -> None:
    a, b, c = _params([(10, 6), (10, 6), (6, 10)])
    opt = Muon([a, b, c])
    assert opt.introspect is False and opt.orthogonalizer == "newton_schulz5"
    for p in (a, b, c):
        p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(0))
    opt.step()
    assert opt.last_internals == {} and opt.last_global_internals == {}
    opt.introspect = True
    opt.step()
    assert set(opt.last_internals) == {a, b, c}
    for p in (a, b, c):
        d = opt.last_internals[p]
        assert {"pre_orth", "post_orth"} <= set(d)
        assert d["pre_orth"].shape == p.shape and d["post_orth"].shape == p.shape
        assert not d["pre_orth"].requires_grad
        torch.testing.assert_close(d["post_orth"], newton_schulz5(d["pre_orth"]), atol=BATCHED_VS_SINGLE_ATOL, rtol=0)
        assert d["nonfinite_skips"].ndim == 0


def test_hyperparameters_read_from_groups_each_step() -> None:
    (p,) = _params([(8, 8)])
    opt = Muon([p], lr=0.1)
    p.grad = torch.ones(8, 8) + torch.eye(8)
    opt.param_groups[0]["lr"] = 0.0
    w = p.detach().clone()
    opt.step()
    assert torch.equal(p.detach(), w)


def test_bfloat16_parameters_step_in_their_dtype() -> None:
    (p,) = _params([(16, 8)], dtype=torch.bfloat16)
    p.grad = torch.randn(16, 8, generator=torch.Generator().manual_seed(0)).bfloat16()
    w = p.detach().clone()
    opt = Muon([p], lr=0.1, ns_dtype=torch.bfloat16)
    opt.step()
    assert p.dtype == torch.bfloat16 and torch.isfinite(p).all() and not torch.equal(p.detach(), w)
    assert opt.state[p]["momentum_buffer"].dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_default_bf16_matches_torch_muon() -> None:
    base = [p.cuda() for p in _params(SHAPES)]
    ours, theirs = _clone(base), _clone(base)
    opt, ref = Muon(ours, weight_decay=0.01), torch.optim.Muon(theirs, lr=0.02, weight_decay=0.01)
    g = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(3):
        for x, y in zip(ours, theirs):
            x.grad = torch.randn(x.shape, generator=g, device="cuda")
            y.grad = x.grad.clone()
        opt.step(), ref.step()
    for x, y in zip(ours, theirs):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=0)  # bf16 bmm vs mm kernels may round differently


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_has_no_host_synchronisation() -> None:
    from probe.optim import NorMuon

    for cls in (Muon, NorMuon):
        params = [p.cuda() for p in _params(SHAPES + [(7,)])]
        params = [nn.Parameter(p.detach()) for p in params]
        opt = cls([{"params": params[:-1]}, {"params": params[-1:], "use_muon": False}], introspect=True)
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()  # lazy state creation may allocate; the steady-state step must not sync
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_checkpoint_without_newer_hyperparameters_loads_with_defaults() -> None:
    """``__setstate__`` fills hyperparameters added after a checkpoint was written (STYLE.md §6 probe 5)."""
    from probe.optim import NorMuon

    for cls, added in ((Muon, ("use_muon", "ns_dtype", "adjust_lr_fn")), (NorMuon, ("use_muon", "beta2"))):
        (p,) = _params([(6, 4)])
        p.grad = torch.ones(6, 4)
        opt = cls([p])
        opt.step()
        sd = opt.state_dict()
        for key in added:
            del sd["param_groups"][0][key]
        fresh = cls([p])
        fresh.load_state_dict(sd)
        assert all(key in fresh.param_groups[0] for key in added)
        fresh.step()
        assert torch.isfinite(p).all()


def test_misspelled_argument_raises() -> None:
    with pytest.raises(TypeError):
        Muon([nn.Parameter(torch.zeros(3, 3))], lrr=0.1)  # type: ignore[call-arg]
