"""KFAC/FOP on a ``torch.compile``d model: the capture hooks do not recompile the model every step (they hit
dynamo's recompile limit before, and the model then ran uncompiled), and the factors and the weights are
those of the same training run without compile."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from probe.optim import FOP, KFAC

STEPS = 12


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _train(cls: type, compiled: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    # 10 hooked layers: more than dynamo's recompile limit (8) of cache entries for one hook's code
    model = nn.Sequential(nn.Linear(8, 16), *[m for _ in range(8) for m in (nn.Tanh(), nn.Linear(16, 16))],
                          nn.Tanh(), nn.Linear(16, 4))
    opt = cls(model, lr=0.05, factor_update_interval=3, inv_update_interval=4)
    run = torch.compile(model, backend="eager") if compiled else model
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        x, y = torch.randn(8, 8, generator=g), torch.randn(8, 4, generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(run(x), y).backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("cls", [KFAC, FOP], ids=["kfac", "fop"])
def test_compiled_model_keeps_its_graphs_and_kfac_its_factors(cls: type) -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    records = _Records()
    dynamo_log = logging.getLogger("torch._dynamo")
    dynamo_log.addHandler(records)
    try:
        model, opt = _train(cls, compiled=True)
    finally:
        dynamo_log.removeHandler(records)
    graphs = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    limits = [m for m in records.messages if "recompile_limit" in m or "cache_size_limit" in m]
    assert not limits, limits
    assert graphs <= 12, graphs  # one graph between two hooked layers (11 regions), not more per step
    eager_model, eager_opt = _train(cls, compiled=False)
    linears = [(a, b) for a, b in zip(model, eager_model) if isinstance(a, nn.Linear)]
    assert len(linears) == 10
    for layer, eager_layer in linears:
        A, G = opt.state[layer.weight]["A"], opt.state[layer.weight]["G"]
        assert not torch.equal(A, torch.eye(A.shape[0], dtype=A.dtype))  # the factors moved
        torch.testing.assert_close(A, eager_opt.state[eager_layer.weight]["A"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(G, eager_opt.state[eager_layer.weight]["G"], rtol=1e-5, atol=1e-6)
    for p, q in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
