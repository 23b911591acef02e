"""The shared optimizer contract, one table (``cases.all_cases()``) for every probe.optim optimizer.

Checks (STYLE.md §6 tests 2): bad kwargs raise; state_dict round-trips; two identical runs are bitwise
equal; loss falls on a small least-squares problem; schedulers (hyperparameters read from
``param_groups`` in ``step()``); a group's lr override; a grad=None parameter is left alone; float32
and float64; the introspection attributes of docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from tests.probe.optim.cases import OptimizerCase, all_cases

CASES = all_cases()
IDS = [c.name for c in CASES]


def _default_model(g: torch.Generator) -> nn.Module:
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.4 if p.ndim > 1 else 0.1))
    return model


def _model(case: OptimizerCase, dtype: torch.dtype = torch.float32) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    model = (case.make_model or _default_model)(g)
    return model.to(dtype)


def _data(dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g, dtype=dtype)
    A = torch.randn(8, 4, generator=g, dtype=dtype)
    return x, torch.tanh(x @ A) + 0.01 * torch.randn(64, 4, generator=g, dtype=dtype)


def _step(case: OptimizerCase, model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> Tensor:
    if case.train_step is not None:
        return case.train_step(model, opt, x, y)
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss.detach()


def _snapshot(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.fixture(params=CASES, ids=IDS)
def case(request: pytest.FixtureRequest) -> OptimizerCase:
    return request.param


def test_invalid_arguments_raise(case: OptimizerCase) -> None:
    for err in case.error_cases:
        with pytest.raises(err.exc, match=err.match):
            case.make(_model(case), **err.kwargs)


def test_state_dict_round_trip(case: OptimizerCase) -> None:
    x, y = _data()
    model_a = _model(case)
    opt_a = case.make(model_a)
    for _ in range(3):
        _step(case, model_a, opt_a, x, y)
    model_b = copy.deepcopy(model_a)
    opt_b = case.make(model_b)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for _ in range(2):
        _step(case, model_a, opt_a, x, y)
        _step(case, model_b, opt_b, x, y)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)


def test_two_identical_runs_are_bitwise_equal(case: OptimizerCase) -> None:
    x, y = _data()
    runs = []
    for _ in range(2):
        model = _model(case)
        opt = case.make(model)
        for _ in range(4):
            _step(case, model, opt, x, y)
        runs.append(_snapshot(model))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_loss_decreases(case: OptimizerCase, dtype: torch.dtype) -> None:
    if dtype == torch.float64 and not case.supports_float64:
        pytest.skip(f"{case.name} does not support float64")
    x, y = _data(dtype)
    model = _model(case, dtype)
    opt = case.make(model)
    losses = [_step(case, model, opt, x, y) for _ in range(case.steps)]
    final = nn.functional.mse_loss(model(x), y).detach()
    assert torch.isfinite(final) and final < case.decrease_factor * losses[0], (losses[0], final)
    assert all(p.dtype == dtype for p in model.parameters())


def test_scheduler_sets_lr_read_in_step(case: OptimizerCase) -> None:
    x, y = _data()
    model = _model(case)
    opt = case.make(model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 if epoch == 0 else 0.0)
    before = _snapshot(model)
    _step(case, model, opt, x, y)
    sched.step()
    assert all(g[case.lr_key] == 0.0 for g in opt.param_groups)
    moved = _snapshot(model)
    assert any(not torch.equal(a, b) for a, b in zip(before, moved))
    _step(case, model, opt, x, y)
    assert all(torch.equal(a, b) for a, b in zip(moved, _snapshot(model)))


def test_group_lr_override_is_honoured(case: OptimizerCase) -> None:
    x, y = _data()
    model = _model(case)
    opt = case.make(model)
    frozen = opt.param_groups[0]
    frozen[case.lr_key] = 0.0
    frozen_ids = {id(p) for p in frozen["params"]}
    before = {id(p): p.detach().clone() for p in model.parameters()}
    _step(case, model, opt, x, y)
    for p in model.parameters():
        if id(p) in frozen_ids:
            assert torch.equal(p, before[id(p)])
    if len(opt.param_groups) > 1:
        assert any(not torch.equal(p, before[id(p)]) for p in model.parameters() if id(p) not in frozen_ids)


def test_grad_none_parameter_is_left_alone(case: OptimizerCase) -> None:
    x, y = _data()
    model = _model(case)
    opt = case.make(model)
    target = [p for p in model.parameters() if p.ndim == 2][1]
    before = target.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        target.grad = None
        opt.step()
    assert torch.equal(target, before)


def test_introspection_attributes(case: OptimizerCase) -> None:
    x, y = _data()
    model = _model(case)
    opt = case.make(model)
    assert getattr(opt, "introspect") is False
    _step(case, model, opt, x, y)
    assert opt.last_internals == {}
    assert isinstance(opt.last_global_internals, dict)
    opt.introspect = True
    _step(case, model, opt, x, y)
    params = {id(p): p for p in model.parameters()}
    assert opt.last_internals, "introspect=True must fill last_internals"
    for p, entry in opt.last_internals.items():
        assert id(p) in params
        for key, value in entry.items():
            assert isinstance(value, Tensor) and not value.requires_grad and value.device == p.device, key
