"""An ordinary optimizer step never waits for the GPU (issue #22): Muon, NorMuon, KFAC and FOP between
refreshes, under ``torch.cuda.set_sync_debug_mode("error")`` (any host sync raises)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from probe.optim import FOP, KFAC, Muon, NorMuon

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 10)).cuda()


def _hybrid(cls: type[Muon], model: nn.Module) -> Muon:
    mats = [p for p in model.parameters() if p.ndim == 2]
    rest = [p for p in model.parameters() if p.ndim != 2]
    return cls([{"params": mats, "use_muon": True}, {"params": rest, "use_muon": False}], lr=0.01)


def _step(model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
    x = torch.randn(16, 32, device="cuda", generator=gen)
    y = torch.randint(0, 10, (16,), device="cuda", generator=gen)
    opt.zero_grad(set_to_none=False)
    F.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("name", ["Muon", "NorMuon", "KFAC", "FOP"])
def test_ordinary_step_has_no_host_sync(name: str) -> None:
    model = _model()
    if name in ("Muon", "NorMuon"):
        opt = _hybrid(Muon if name == "Muon" else NorMuon, model)
    else:
        cls = KFAC if name == "KFAC" else FOP
        opt = cls(model, lr=0.01, factor_update_interval=1, inv_update_interval=100)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(2):  # warm-up: state allocation and the first eigendecomposition
        _step(model, opt, gen)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            _step(model, opt, gen)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert all(torch.isfinite(p).all() for p in model.parameters())
