"""KFAC/FOP on GPU-size models (issue #22): the factor-size cap and ``exclude``, fp32 factors for bf16
weights, eigh failures that keep the previous eigenbasis, batched eigh, and the TF32 option."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from probe.demo.models import CharGPT
from probe.optim import FOP, KFAC
from probe.optim._batched_eigh import batched_eigh
from probe.optim.kfac import DEFAULT_MAX_FACTOR_DIM

GPT2_VOCAB = 50_257


def _gpt_step(opt: torch.optim.Optimizer, model: CharGPT, vocab: int, *, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (2, 8), generator=gen)
    opt.zero_grad()
    logits = model(idx)
    F.cross_entropy(logits.reshape(-1, vocab), idx.reshape(-1)).backward()
    opt.step()


@pytest.mark.parametrize("cls", [KFAC, FOP])
def test_gpt2_vocab_head_is_not_preconditioned_and_is_named_once(cls: type[KFAC]) -> None:
    torch.manual_seed(0)
    model = CharGPT(vocab_size=GPT2_VOCAB, block_size=8, d_model=16, n_layer=1, n_head=2)
    opt = cls(model, lr=0.01, inv_update_interval=1, factor_update_interval=1)
    assert "lm_head" not in opt.layers
    assert set(opt.layers) == {"blocks.0.qkv", "blocks.0.proj", "blocks.0.fc", "blocks.0.out"}
    assert opt.skipped_layers == {"lm_head": f"factor dimension {GPT2_VOCAB} > max_factor_dim {DEFAULT_MAX_FACTOR_DIM}"}
    head = model.lm_head.weight
    before = head.detach().clone()
    for seed in range(2):
        _gpt_step(opt, model, GPT2_VOCAB, seed=seed)
    # The head took the SGD-momentum step without ever allocating a 50,257-wide factor.
    assert "A" not in opt.state[head] and "G" not in opt.state[head]
    assert "momentum_buffer" in opt.state[head]
    assert not torch.equal(head.detach(), before)
    assert all(st["G"].shape[0] <= DEFAULT_MAX_FACTOR_DIM for st in opt.state.values() if "G" in st)
    skipped = [e for e in opt.events if e["key"] == "kfac_layer_skipped"]
    assert [e["layer"] for e in skipped] == ["lm_head"]  # once, not per step
    assert "50257" in skipped[0]["message"]


def test_max_factor_dim_none_and_exclude_patterns() -> None:
    model = CharGPT(vocab_size=32, block_size=8, d_model=16, n_layer=2, n_head=2)
    opt = KFAC(model, max_factor_dim=None, exclude=["blocks.1.*", "lm_head"])
    assert opt.layers == ["blocks.0.qkv", "blocks.0.proj", "blocks.0.fc", "blocks.0.out"]
    assert opt.skipped_layers == {n: "excluded" for n in
                                  ["blocks.1.qkv", "blocks.1.proj", "blocks.1.fc", "blocks.1.out", "lm_head"]}
    # A cap of 48 (= qkv's 3·16 outputs, kept) below the MLP's 64/65-wide factors skips exactly the MLPs.
    capped = KFAC(model, max_factor_dim=48)
    assert set(capped.skipped_layers) == {"blocks.0.fc", "blocks.0.out", "blocks.1.fc", "blocks.1.out"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"max_factor_dim": 0}, "max_factor_dim"), ({"max_factor_dim": True}, "max_factor_dim"),
     ({"exclude": ["nosuch"]}, "exclude"), ({"exclude": [3]}, "exclude"),
     ({"factor_dtype": torch.bfloat16}, "factor_dtype"), ({"factor_dtype": "float32"}, "factor_dtype"),
     ({"tf32": 1}, "tf32")],
)
def test_bad_gpu_options_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"Invalid {field}"):
        KFAC(nn.Sequential(nn.Linear(4, 4)), **kwargs)


@pytest.mark.parametrize("cls", [KFAC, FOP])
def test_bf16_weights_step_with_fp32_factors(cls: type[KFAC]) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).to(torch.bfloat16)
    opt = cls(model, lr=0.05, inv_update_interval=1, factor_update_interval=1, damping=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(16, 8, generator=gen).to(torch.bfloat16)
        y = torch.randint(0, 4, (16,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x).float(), y).backward()
        opt.step()
    for p, b in zip(model.parameters(), before):
        assert p.dtype == torch.bfloat16 and torch.isfinite(p).all()
        assert not torch.equal(p, b)
    for lay in (model[0], model[2]):
        st = opt.state[lay.weight]
        assert {st[k].dtype for k in ("A", "G", "QA", "QG", "dA", "dG")} == {torch.float32}
    assert int(opt.nonfinite_skips) == 0


def test_factor_dtype_float64_for_fp32_weights() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    opt = KFAC(model, factor_dtype=torch.float64, inv_update_interval=1, factor_update_interval=1)
    opt.zero_grad()
    model(torch.randn(5, 4)).square().mean().backward()
    opt.step()
    assert opt.state[model[0].weight]["QA"].dtype == torch.float64
    assert model[0].weight.dtype == torch.float32


def _toy_run(opt: KFAC, model: nn.Module, steps: int, *, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=gen)
        y = torch.randint(0, 3, (16,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("cls", [KFAC, FOP])
def test_eigh_failure_keeps_previous_eigenbasis_and_records_event(cls: type[KFAC],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    opt = cls(model, lr=0.05, inv_update_interval=1, factor_update_interval=1)
    _toy_run(opt, model, 2)
    st = opt.state[model[0].weight]
    kept = {k: st[k].clone() for k in ("QA", "dA", "QG", "dG")}
    real_eigh = torch.linalg.eigh
    calls = {"n": 0}

    def flaky(mat: torch.Tensor, *args, **kwargs):  # the seam: the solver fails to converge
        calls["n"] += 1
        if mat.shape[-1] == 7:  # layer 0's A factor (6 inputs + bias), batched and then alone
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return real_eigh(mat, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", flaky)
    before = model[0].weight.detach().clone()
    _toy_run(opt, model, 1, seed=5)  # must not raise
    monkeypatch.setattr(torch.linalg, "eigh", real_eigh)
    assert calls["n"] >= 2
    assert torch.equal(st["QA"], kept["QA"]) and torch.equal(st["dA"], kept["dA"])
    assert not torch.equal(st["QG"], kept["QG"])  # the G factor was refreshed as usual
    assert not torch.equal(model[0].weight, before) and torch.isfinite(model[0].weight).all()
    failed = [e for e in opt.events if e["key"] == "kfac_eigh_failed"]
    assert [(e["layer"], e["step"]) for e in failed] == [("0", 2)]
    _toy_run(opt, model, 1, seed=6)  # the next refresh works again
    assert not torch.equal(st["QA"], kept["QA"])
    assert len([e for e in opt.events if e["key"] == "kfac_eigh_failed"]) == 1


def test_batched_eigh_matches_per_matrix_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(0)
    mats = []
    for n in (3, 5, 3, 5, 4):
        x = torch.randn(n, n, generator=gen, dtype=torch.float64)
        mats.append(x @ x.T)
    results = batched_eigh(mats, [None] * len(mats))
    for m, r in zip(mats, results):
        e, v = torch.linalg.eigh(m)
        torch.testing.assert_close(r.evals, e.clamp(min=0), atol=1e-10, rtol=0)
        torch.testing.assert_close(r.evecs @ torch.diag(r.evals) @ r.evecs.T, m, atol=1e-10, rtol=0)
    # A non-finite factor (first refresh, nothing to keep) gets the identity, whether eigh raises on it
    # (CPU LAPACK does) or returns NaN (selected away on the device).
    bad = torch.full((3, 3), float("nan"), dtype=torch.float64)
    (r,) = batched_eigh([bad], [None])
    assert torch.equal(r.evecs, torch.eye(3, dtype=torch.float64))
    assert torch.equal(r.evals, torch.ones(3, dtype=torch.float64))
    prev = (torch.ones(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64).flip(0))
    (r,) = batched_eigh([bad], [prev])
    assert torch.equal(r.evecs, prev[1]) and torch.equal(r.evals, prev[0])
    with pytest.raises(ValueError, match="Invalid previous"):
        batched_eigh(mats, [None])


def test_tf32_option_is_scoped_and_equal_on_cpu() -> None:
    flag = torch.backends.cuda.matmul.allow_tf32
    outs = []
    for tf32 in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
        opt = KFAC(model, lr=0.05, inv_update_interval=1, factor_update_interval=1, tf32=tf32)
        _toy_run(opt, model, 3)
        outs.append([p.detach().clone() for p in model.parameters()])
        assert torch.backends.cuda.matmul.allow_tf32 == flag  # restored after every step
    for a, b in zip(*outs):
        assert torch.equal(a, b)  # TF32 only affects CUDA matmuls


class LocalConv1D(nn.Module):
    """transformers' Conv1D re-stated (weight (in, nf), y = x @ W + b), as GPT-2 uses it."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.3)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight)
        return out.view(*x.shape[:-1], self.nf)


LocalConv1D.__name__ = "Conv1D"


@pytest.mark.parametrize("cls", [KFAC, FOP])
def test_conv1d_in_out_weights_are_preconditioned_like_the_transposed_linear(cls: type[KFAC]) -> None:
    torch.manual_seed(0)
    conv = nn.Sequential(LocalConv1D(5, 6), nn.Tanh(), LocalConv1D(3, 5)).double()
    lin = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        for c, l in ((conv[0], lin[0]), (conv[2], lin[2])):
            l.weight.copy_(c.weight.T)
            l.bias.copy_(c.bias)
    opts = [cls(m, lr=0.1, inv_update_interval=1, factor_update_interval=1) for m in (conv, lin)]
    assert opts[0].layers == ["0", "2"] and not opts[0].skipped_layers
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        x = torch.randn(8, 4, 6, generator=gen, dtype=torch.float64)  # (batch, seq, in): GPT-2's input
        y = torch.randint(0, 3, (32,), generator=gen)
        for m, o in zip((conv, lin), opts):
            o.zero_grad()
            F.cross_entropy(m(x).reshape(-1, 3), y).backward()
            o.step()
    for c, l in ((conv[0], lin[0]), (conv[2], lin[2])):
        torch.testing.assert_close(c.weight.T, l.weight, atol=1e-12, rtol=0)
        torch.testing.assert_close(c.bias, l.bias, atol=1e-12, rtol=0)
    assert opts[0].state[conv[0].weight]["G"].shape == (5, 5)  # out-features side


def test_unsupported_matrix_layers_are_named_once_never_silently_sgd() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv1d(2, 3, 3)
            self.c3 = nn.Conv3d(2, 2, 1)
            self.dw = nn.Conv2d(4, 4, 3, groups=4)
            self.attn = nn.MultiheadAttention(8, 2)
            self.fc = nn.Linear(8, 2)
            self.norm = nn.LayerNorm(8)

    opt = KFAC(Net())
    assert opt.layers == ["fc"]
    assert set(opt.skipped_layers) == {"c1", "c3", "dw", "attn", "attn.out_proj"}
    assert "Conv1d is not supported" in opt.skipped_layers["c1"]
    assert "out_proj" in opt.skipped_layers["attn.out_proj"]
    assert sorted(e["layer"] for e in opt.events) == sorted(opt.skipped_layers)  # once each; norms are not matrices


@pytest.mark.parametrize("cls", [KFAC, FOP])
def test_gpt2_from_transformers_preconditions_its_conv1d_and_skips_the_tied_head(cls: type[KFAC]) -> None:
    pytest.importorskip("transformers")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=5000, n_positions=16))
    model.config.use_cache = False
    opt = cls(model, lr=0.01, inv_update_interval=1, factor_update_interval=1)
    assert set(opt.layers) == {"transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                               "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"}
    assert "lm_head" in opt.skipped_layers  # 5000 > 4096 (its weight is tied to wte)
    c_fc = model.transformer.h[0].mlp.c_fc
    before = c_fc.weight.detach().clone()
    ids = torch.randint(0, 5000, (2, 8), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        opt.zero_grad()
        model(ids, labels=ids).loss.backward()
        opt.step()
    st = opt.state[c_fc.weight]
    assert st["A"].shape == (33, 33) and st["G"].shape == (128, 128)  # in + bias, out
    assert not torch.equal(c_fc.weight, before) and torch.isfinite(c_fc.weight).all()
