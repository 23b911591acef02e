"""KFAC/FOP ``tf32=True`` on CUDA: the flag is scoped to the optimizer and the step stays close to the
exact-fp32 one (the docstring's ~1e-3 relative error per product). Needs CUDA; the CPU test that the
option has no effect there is in ``test_kfac_gpu_ready.py``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from probe.optim import FOP, KFAC

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _run(cls: type[KFAC], tf32: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256)).cuda()
    start = [p.detach().clone() for p in model.parameters()]
    opt = cls(model, lr=0.05, factor_update_interval=1, inv_update_interval=1, tf32=tf32)
    gen = torch.Generator(device="cuda").manual_seed(1)
    for _ in range(3):
        x = torch.randn(64, 256, device="cuda", generator=gen)
        opt.zero_grad()
        F.mse_loss(model(x), x).backward()
        opt.step()
    return start, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("cls", [KFAC, FOP])
def test_tf32_step_is_close_to_fp32_and_the_flag_is_restored(cls: type[KFAC]) -> None:
    before = torch.backends.cuda.matmul.allow_tf32
    start, exact = _run(cls, tf32=False)
    _, fast = _run(cls, tf32=True)
    assert torch.backends.cuda.matmul.allow_tf32 == before
    for p0, a, b in zip(start, exact, fast):
        moved = (a - p0).norm()
        assert moved > 0
        # the difference of the two runs, relative to how far the weights moved
        assert float((a - b).norm() / moved) < 5e-2
