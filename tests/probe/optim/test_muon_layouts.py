"""Muon/NorMuon on the weight layouts real models use: channels_last convs and (in, out) Conv1D weights,
and the fused AdamW half of the hybrid optimizer (issue #22 items 3 and 6, issue #17's GPT-2 row)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from probe.optim import Muon, NorMuon, hybrid_param_groups
from probe.optim.layouts import is_in_out_linear

# Same arithmetic in the same order on the same values; only the storage of the weight differs.
LAYOUT_ATOL = 0.0
# Our fused AdamW vs torch.optim.AdamW(fused=True): the same kernel on the same inputs.
FUSED_ATOL = 0.0
# ...and vs torch's default single-tensor AdamW: fp32 rounding of a different op order.
ADAMW_ATOL = 1e-6


class LocalConv1D(nn.Module):
    """transformers' Conv1D re-stated: weight (in, nf), y = x @ W + b (what GPT-2 uses)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight)
        return out.view(*x.shape[:-1], self.nf)


LocalConv1D.__name__ = "Conv1D"


@pytest.mark.parametrize("cls", [Muon, NorMuon])
def test_channels_last_conv_matches_contiguous_and_keeps_layout(cls: type) -> None:
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(8, 3, 3, 3, generator=g)
    a = nn.Parameter(w0.clone().to(memory_format=torch.channels_last))
    b = nn.Parameter(w0.clone())
    assert not a.is_contiguous()
    opt_a, opt_b = cls([a], lr=0.05, weight_decay=0.1), cls([b], lr=0.05, weight_decay=0.1)
    for _ in range(3):
        grad = torch.randn(w0.shape, generator=g)
        a.grad = grad.clone().to(memory_format=torch.channels_last)
        b.grad = grad.clone()
        opt_a.step(), opt_b.step()
    torch.testing.assert_close(a.detach(), b.detach(), atol=LAYOUT_ATOL, rtol=0)
    assert a.is_contiguous(memory_format=torch.channels_last)  # written back in the parameter's layout


def test_conv1d_like_module_is_detected_by_duck_typing() -> None:
    assert is_in_out_linear(LocalConv1D(4, 6))
    assert not is_in_out_linear(nn.Linear(6, 4))


def _twin_models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A Conv1D (in=16, out=64) and an nn.Linear holding the same map (weight transposed)."""
    torch.manual_seed(seed)  # noqa: only seeds module init; values are then copied explicitly
    conv = nn.Sequential(LocalConv1D(64, 16))
    lin = nn.Sequential(nn.Linear(16, 64))
    with torch.no_grad():
        lin[0].weight.copy_(conv[0].weight.T)
        lin[0].bias.copy_(conv[0].bias)
    return conv, lin


@pytest.mark.parametrize("cls", [Muon, NorMuon])
def test_conv1d_weight_steps_like_the_equivalent_linear(cls: type) -> None:
    conv, lin = _twin_models()
    groups = hybrid_param_groups(conv, exclude=())
    assert [gr.get("weight_layout") for gr in groups if gr["use_muon"]] == ["in_out"]
    opt_c = cls(groups, lr=0.05, introspect=True)
    opt_l = cls(hybrid_param_groups(lin, exclude=()), lr=0.05)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        for model, opt in ((conv, opt_c), (lin, opt_l)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    torch.testing.assert_close(conv[0].weight.detach().T, lin[0].weight.detach(), atol=1e-6, rtol=1e-5)
    w = conv[0].weight
    assert opt_c.last_internals[w]["pre_orth"].shape == (64, 16)  # (out, in), like the Linear
    if cls is NorMuon:
        assert opt_c.state[w]["v"].shape == (64,)  # per output neuron (GPT-2 bug: 16 = in-features)


def test_conv1d_shape_scale_uses_out_over_in() -> None:
    """One step from zero momentum, no NorMuon: ‖ΔW‖_F = lr·√max(1, out/in)·‖NS(G)‖_F, with out/in = 4."""
    conv, _ = _twin_models()
    w = conv[0].weight
    opt = Muon(hybrid_param_groups(conv, exclude=()), lr=0.1, nesterov=False, momentum=0.0, introspect=True)
    before = w.detach().clone()
    conv(torch.randn(8, 16)).sum().backward()
    opt.step()
    post = opt.last_internals[w]["post_orth"]
    torch.testing.assert_close((w.detach() - before).norm(), 0.1 * math.sqrt(4.0) * post.norm(), rtol=1e-5, atol=0)


def test_in_out_layout_refuses_non_matrices() -> None:
    with pytest.raises(ValueError, match="weight_layout"):
        Muon([{"params": [nn.Parameter(torch.zeros(2, 3, 4))], "weight_layout": "in_out"}])
    with pytest.raises(ValueError, match="weight_layout"):
        Muon([{"params": [nn.Parameter(torch.zeros(2, 3))], "weight_layout": "sideways"}])


def test_gpt2_conv1d_from_transformers() -> None:
    pytest.importorskip("transformers")
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16))
    groups = hybrid_param_groups(model)
    in_out = next(gr for gr in groups if gr.get("weight_layout") == "in_out")
    assert "transformer.h.0.mlp.c_fc.weight" in in_out["param_names"]
    opt = NorMuon(groups, lr=0.02)
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    model(ids, labels=ids).loss.backward()
    opt.step()
    c_fc = model.transformer.h[0].mlp.c_fc.weight  # stored (32, 128): in, out
    assert opt.state[c_fc]["v"].shape == (128,)


# ---------------------------------------------------------------------------------------------- AdamW half
def _adamw_params(seed: int = 0) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=g)) for s in [(7,), (3, 5), (1,), (64,)]]


@pytest.mark.parametrize("fused_ref", [True, False])
def test_adamw_half_equals_torch_adamw(fused_ref: bool) -> None:
    ours = _adamw_params()
    theirs = [nn.Parameter(p.detach().clone()) for p in ours]
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    opt = NorMuon([{"params": ours, "use_muon": False, **kw}])
    ref = torch.optim.AdamW(theirs, fused=fused_ref, foreach=None if fused_ref else False, **kw)
    g = torch.Generator().manual_seed(3)
    for _ in range(6):
        for p, q in zip(ours, theirs):
            grad = torch.randn(p.shape, generator=g)
            p.grad, q.grad = grad.clone(), grad.clone()
        opt.step(), ref.step()
    for x, y in zip(ours, theirs):
        torch.testing.assert_close(x, y, atol=FUSED_ATOL if fused_ref else ADAMW_ATOL, rtol=0)


def test_adamw_half_nonfinite_skips_its_bucket_and_names_the_parameter() -> None:
    ps = _adamw_params()
    opt = Muon([{"params": ps, "use_muon": False, "lr": 0.1}])
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    before = [p.detach().clone() for p in ps]
    ps[1].grad = torch.full_like(ps[1], float("inf"))
    opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(ps, before))  # the whole bucket skipped
    assert [opt.state[p]["nonfinite_skips"].item() for p in ps] == [0, 1, 0, 0]
    assert all(opt.state[p]["step"].item() == 1 for p in ps)
    ps[1].grad = torch.ones_like(ps[1])
    opt.step()
    assert all(not torch.equal(p.detach(), b) for p, b in zip(ps, before))  # steps again once finite
