"""``optimizer.step(closure)``: gradients are computed inside the step, after the pre-step hook.

The probe must report the gradients of *this* step (the closure's backward), not the previous step's.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import probe


def test_step_with_a_closure_reports_the_closures_gradients(recording_run) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = probe.attach(model, opt, run=recording_run, log_every=1, update_every=1, budget=None)
    seen: list[float] = []
    for _ in range(4):
        x = torch.randn(16, 6)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            loss.backward()
            seen.append(float(model[0].weight.grad.norm()))
            return loss

        opt.step(closure)
    monitor.detach()
    norms = recording_run.series("grad_norm/0.weight")
    assert list(norms) == [0, 1, 2, 3]
    assert [float(v) for v in norms.values()] == pytest.approx(seen, rel=1e-6)
    assert set(recording_run.series("update_ratio/0.weight")) == {0, 1, 2, 3}


def test_lbfgs_calls_the_closure_many_times_and_is_measured_once_per_step(recording_run) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    monitor = probe.attach(model, opt, run=recording_run, log_every=1, budget=None)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    first: list[float] = []
    for _ in range(3):
        calls = []

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = (model(x) - y).pow(2).mean()
            loss.backward()
            calls.append(float(model.weight.grad.norm()))
            return loss

        opt.step(closure)
        first.append(calls[0])
        assert len(calls) > 1
    monitor.detach()
    norms = recording_run.series("grad_norm/weight")
    assert [float(v) for v in norms.values()] == pytest.approx(first, rel=1e-6)  # the gradient the step started from
