"""``probe.attach`` on wrapped optimizers and models, and twice on one optimizer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import probe


def _step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    loss = model(torch.randn(4, 8)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_attach_twice_is_refused_until_detached(recording_run) -> None:  # noqa: ANN001
    model = nn.Linear(8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = probe.attach(model, opt, run=recording_run, log_every=1)
    with pytest.raises(RuntimeError, match="already attached"):
        probe.attach(model, opt, run=recording_run)
    first.detach()
    second = probe.attach(model, opt, run=recording_run, log_every=1)
    _step(model, opt)
    second.detach()
    assert list(recording_run.series("grad_norm/weight")) == [0]  # one point, not two


def test_compiled_model_keeps_the_users_layer_names(recording_run) -> None:  # noqa: ANN001
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(compiled.parameters(), lr=0.1)
    monitor = probe.attach(compiled, opt, run=recording_run, log_every=1)
    _step(compiled, opt)
    monitor.detach()
    names = {k.split("/", 1)[1] for k in recording_run.keys() if k.startswith("grad_norm/")}
    assert names == {"0.weight", "0.bias", "2.weight", "2.bias"}
