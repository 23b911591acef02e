"""KFAC/FOP inverse refresh: one batched ``eigh`` per factor size, not one per factor (issue #22).

On CUDA every ``eigh`` call synchronises with the host to check convergence, so the refresh costs one
wait per distinct factor size (GPT-2 small: 4) instead of one per factor (96). The decomposition itself
is checked against per-matrix ``eigh`` in ``test_kfac_gpu_ready.py``; here the call count and the
optimizer's result against factors decomposed one at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from probe.optim import FOP, KFAC


def _model() -> nn.Module:
    torch.manual_seed(0)
    # A factors (in + bias): 7, 7, 7; G factors (out): 6, 6, 3 -> three sizes, six factors
    return nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _train(opt: KFAC, model: nn.Module, steps: int) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 3, (16,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def _counting(real: Callable[..., Any], shapes: list[tuple[int, ...]]) -> Callable[..., Any]:
    def eigh(mat: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        shapes.append(tuple(mat.shape))
        return real(mat, *args, **kwargs)

    return eigh


@pytest.mark.parametrize("cls", [KFAC, FOP])
def test_refresh_makes_one_batched_eigh_per_factor_size(
    cls: type[KFAC], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model()
    opt = cls(model, lr=0.05, factor_update_interval=1, inv_update_interval=2)
    shapes: list[tuple[int, ...]] = []
    monkeypatch.setattr(torch.linalg, "eigh", _counting(torch.linalg.eigh, shapes))
    _train(opt, model, 4)  # refreshes at two of the four steps
    per_refresh = sorted(shapes[: len(shapes) // 2])
    assert len(shapes) == 6, shapes  # 3 sizes x 2 refreshes (one per factor would be 12)
    assert per_refresh == [(1, 3, 3), (2, 6, 6), (3, 7, 7)]
    assert sorted(shapes[3:]) == per_refresh


@pytest.mark.parametrize("cls", [KFAC, FOP])
def test_batched_refresh_equals_factor_by_factor(cls: type[KFAC], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same training run with every factor decomposed alone (the unbatched refresh) gives the
    same weights to 1e-10 in float64: batching changes the number of calls, not the numerics."""
    results = []
    for batched in (True, False):
        model = _model()
        opt = cls(model, lr=0.05, factor_update_interval=1, inv_update_interval=2)
        if not batched:
            real = torch.linalg.eigh

            def one_by_one(mat: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
                if mat.dim() == 2:
                    return real(mat, *args, **kwargs)
                pairs = [real(m, *args, **kwargs) for m in mat]
                return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

            monkeypatch.setattr(torch.linalg, "eigh", one_by_one)
        _train(opt, model, 4)
        monkeypatch.undo()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
