"""Overhead budget: the token bucket alone, then the Monitor throttling its expensive diagnostics."""

from __future__ import annotations

import pytest
import torch

from probe.diagnostics.budget import OverheadBudget
from probe.diagnostics.monitor import attach
from tests.probe.diagnostics.conftest import RecordingRun, TinyMLP, train


def _simulate(budget: OverheadBudget, steps: int, train_s: float, cost_s: float) -> int:
    runs = 0
    for _ in range(steps):
        chosen = budget.select(["spectra"])
        probe_s = 0.0
        if "spectra" in chosen:
            runs += 1
            probe_s = cost_s
            budget.charge("spectra", cost_s)
        budget.observe_step(train_s + probe_s, probe_s)
    return runs


def test_an_expensive_diagnostic_runs_as_often_as_the_budget_pays_for() -> None:
    # 3 % of a 1 s step pays for a 0.3 s diagnostic once every 10 steps
    runs = _simulate(OverheadBudget(0.03), 1000, train_s=1.0, cost_s=0.3)
    assert 95 <= runs <= 102


def test_a_cheap_diagnostic_is_not_throttled() -> None:
    assert _simulate(OverheadBudget(0.03), 200, train_s=1.0, cost_s=0.001) == 200


def test_no_budget_runs_everything() -> None:
    assert _simulate(OverheadBudget(None), 50, train_s=1.0, cost_s=10.0) == 50


def test_achieved_overhead_is_reported_and_reset() -> None:
    b = OverheadBudget(0.03)
    b.observe_step(1.0, 0.1)
    b.observe_step(1.0, 0.0)
    assert b.take_overhead() == pytest.approx(0.05)
    assert b.take_overhead() is None


def test_priority_order_decides_under_scarce_credit() -> None:
    b = OverheadBudget(0.5)
    b.charge("update", 0.4)
    b.charge("spectra", 0.4)
    b.observe_step(1.0, 0.0)  # credit 0.5: only one of the two fits
    assert b.select(["update", "spectra"]) == {"update"}
    assert b.skipped == {"spectra": 1}


def test_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError, match="fraction"):
        OverheadBudget(0.0)


def _spectra_steps(budget: float | None) -> list[int]:
    run = RecordingRun()
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = attach(model, opt, run=run, budget=budget, log_every=10, spectra_every=5, update_every=5,
                 neuron_every=5)
    train(model, opt, 30)
    mon.detach()
    return sorted(run.series("sv.weight.cond/fc1.weight"))


def test_monitor_throttles_spectra_to_the_budget_and_logs_its_overhead() -> None:
    assert _spectra_steps(None) == [0, 5, 10, 15, 20, 25]
    # A budget nothing fits in: each diagnostic runs once (to learn its cost), then never again.
    assert _spectra_steps(1e-9) == [0]


def test_monitor_logs_achieved_overhead_once_per_interval(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = attach(model, opt, run=recording_run, log_every=5)
    train(model, opt, 20)
    mon.detach()
    overhead = recording_run.series("probe.overhead")
    assert sorted(overhead) == [4, 9, 14, 19]
    assert all(0 < v < 1 for v in overhead.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: device-time accounting via CUDA events")
def test_device_time_of_diagnostics_is_charged_on_cuda(recording_run: RecordingRun) -> None:
    model = TinyMLP().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mon = attach(model, opt, run=recording_run, budget=None, log_every=2, spectra_every=1, neuron_every=1)
    x, y = torch.randn(32, 8, device="cuda"), torch.randn(32, 4, device="cuda")
    for _ in range(4):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    mon.detach()
    assert mon.errors == {}
    assert mon.budget.cost["spectra"] > 0 and not mon._device_events
    assert len(recording_run.series("sv.weight.cond/fc1.weight")) == 4


def test_an_expensive_diagnostic_first_in_line_saves_up_instead_of_starving() -> None:
    b = OverheadBudget(0.1)
    b.charge("spectra", 1.0)
    b.charge("update", 0.05)
    runs = {"spectra": 0, "update": 0}
    for _ in range(200):
        chosen = b.select(["spectra", "update"])  # spectra has been waiting longer
        for name in chosen:
            runs[name] += 1
        b.observe_step(1.0 + sum(b.cost[n] for n in chosen), sum(b.cost[n] for n in chosen))
    assert runs["spectra"] >= 15  # 0.1 s of credit per step pays 1 s of spectra about every 10 steps


def test_a_pause_between_steps_does_not_buy_a_burst() -> None:
    b = OverheadBudget(0.03)
    for _ in range(10):
        b.observe_step(1.0, 0.0)
    before = b.credit
    b.observe_step(600.0, 0.0)  # ten minutes of evaluation between two steps
    assert b.credit - before == pytest.approx(0.03 * 1.5)  # no more than an ordinary step and a half


def test_the_step_time_estimate_still_follows_a_genuine_slowdown() -> None:
    b = OverheadBudget(0.03)
    for _ in range(10):
        b.observe_step(1.0, 0.0)
    for _ in range(30):
        b.observe_step(3.0, 0.0)  # the model got 3x slower (a longer sequence length, say)
    assert b.step_time == pytest.approx(3.0, rel=1e-2)
    before = b.credit
    b.observe_step(3.0, 0.0)
    assert b.credit - before == pytest.approx(0.03 * 3.0, rel=1e-2)


def test_monitor_reports_its_whole_run_overhead(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = attach(model, opt, run=recording_run, log_every=5)
    assert mon.overhead is None
    train(model, opt, 6)
    assert mon.overhead is not None and 0 < mon.overhead < 1
