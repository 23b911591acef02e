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


def test_an_expensive_diagnostic_gets_what_the_cheap_ones_leave_and_never_blocks_them() -> None:
    b = OverheadBudget(0.1)
    b.charge("spectra", 1.0)
    b.charge("update", 0.05)
    runs = {"spectra": 0, "update": 0}
    for _ in range(200):
        chosen = b.select(["spectra", "update"])  # spectra has been waiting longer
        for name in chosen:
            runs[name] += 1
        b.observe_step(1.0 + sum(b.cost[n] for n in chosen), sum(b.cost[n] for n in chosen))
    assert runs["update"] >= 180  # the cheap one behind it is not blocked (only paused while spectra is repaid)
    assert runs["spectra"] >= 9  # the 0.05 s per step update leaves pays 1 s of spectra about every 20 steps


def test_the_credit_has_a_floor_so_one_expensive_run_does_not_dig_a_lasting_hole() -> None:
    b = OverheadBudget(0.03, window_steps=200)
    for _ in range(10):
        b.observe_step(0.01, 0.0)
    b.charge("spectra", 0.001)
    b.observe_step(10.0, 10.0)  # one optimistic first run that cost 1,000 steps' worth
    assert b.credit >= -0.03 * 200 * 0.01 - 1e-12
    b.debit(100.0)  # device time learnt late is bounded the same way
    assert b.credit >= -0.03 * 200 * 0.01 - 1e-12
    steps = 0
    while not b.select(["spectra"]) and steps < 1000:
        b.observe_step(0.01, 0.0)
        steps += 1
    assert steps <= 2 * 200 + 1  # repaid within two windows, not never


def test_a_forced_diagnostic_runs_whatever_the_credit_and_is_counted() -> None:
    b = OverheadBudget(0.03)
    b.charge("spectra", 5.0)
    b.charge("update", 5.0)
    b.observe_step(1.0, 0.0)
    assert b.select(["spectra", "update"], forced=["update"]) == {"update"}
    assert b.forced == {"update": 1} and b.skipped == {"spectra": 1}


def test_the_fixed_part_is_thinned_only_when_it_alone_exceeds_the_budget() -> None:
    b = OverheadBudget(0.03)
    assert b.fixed_every == 1  # not thinned during the 50-step warm-up, whatever it costs
    for _ in range(60):
        b.observe_step(0.0102, 0.0002, fixed_seconds=0.0002)  # 2 % of the training time: within 3 %
    assert b.fixed_every == 1
    for _ in range(50):
        b.observe_step(0.01085, 0.00085, fixed_seconds=0.00085)  # 8.5 %: every 3 steps
    assert b.fixed_every == 3
    for _ in range(50):
        b.observe_step(0.010, 0.01, fixed_seconds=0.01)  # never thinned beyond 1 in 10
    assert b.fixed_every == 10
    assert OverheadBudget(None).fixed_every == 1


def test_a_block_over_twice_the_budget_is_reported_with_what_was_thinned() -> None:
    b = OverheadBudget(0.03, alert_steps=100)
    b.charge("spectra", 1.0)
    reports = []
    for i in range(300):
        b.select(["spectra"])
        over = b.observe_step(0.010, 0.0015, fixed_seconds=0.0015)  # 15 %: 5x the budget
        if over is not None:
            reports.append((i, over))
    assert [i for i, _ in reports] == [99, 199, 299]
    over = reports[-1][1]
    assert over.overhead == pytest.approx(0.15) and over.budget == 0.03 and over.steps == 100
    assert over.fixed_every == 6 and over.skipped == {"spectra": 100}  # 1.5 ms / (3 % of 8.5 ms)
    assert "15.0%" in over.message() and "every 6 steps" in over.message() and "spectra 100" in over.message()
    within = OverheadBudget(0.03, alert_steps=100)
    assert all(within.observe_step(0.010, 0.0004) is None for _ in range(300))  # 4 %: under 2x


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


class _MLP64(torch.nn.Sequential):
    """The issue's 64-wide MLP (batch 64), whose default run used to store one point per layer."""

    def __init__(self) -> None:
        super().__init__(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                         torch.nn.Linear(64, 10))


def _train_64(steps: int, run: RecordingRun, *, pause_s: float = 0.0, **options: object) -> object:
    import time

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _MLP64()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mon = attach(model, opt, run=run, **options)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 32, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if pause_s:
            time.sleep(pause_s)  # a slower training step the probe's cost is small against
    mon.detach()
    return mon


def test_default_settings_deliver_at_least_a_tenth_of_every_enabled_quantity(recording_run: RecordingRun) -> None:
    steps = 3000
    mon = _train_64(steps, recording_run)
    assert mon.errors == {}
    layers = ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    nominal = {"grad_norm": 1, "update_ratio": 1, "nonfinite": 1}
    for key, every in nominal.items():
        for layer in layers:
            assert len(recording_run.series(f"{key}/{layer}")) >= 0.1 * steps / every, (key, layer)
    for layer in ("0.weight", "2.weight", "4.weight"):  # matrices
        for key, every in {"neuron.cv": 10, "sv.weight.cond": 50, "sv.update.spectral_norm": 50}.items():
            assert len(recording_run.series(f"{key}/{layer}")) >= 0.1 * steps / every, (key, layer)
        for key in ("sv.weight", "neuron.update_norm"):  # full arrays: vectors_every=200
            points = {a["step"] for a in recording_run.arrays if a["key"] == key and a["layer"] == layer}
            assert len(points) >= 0.1 * steps / 200, (key, layer)
    assert len(recording_run.series("grad_norm")) >= 0.1 * steps


def test_an_overhead_alert_is_raised_where_the_budget_cannot_be_met(recording_run: RecordingRun) -> None:
    _train_64(300, recording_run, budget=1e-5)
    alerts = [e for e in recording_run.events if e["key"] == "probe.overhead"]
    assert len(alerts) == 1  # the first block over budget; then at most one per 1,000 steps
    alert = alerts[0]
    assert alert["kind"] == "alert" and alert["step"] == 100  # after the first 100 measured steps
    assert alert["data"]["overhead"] > 2e-5 and alert["data"]["budget"] == 1e-5
    assert alert["data"]["fixed_every"] == 10  # the grad norms were thinned as far as they go
    assert "budget 0.0%" in alert["message"] and "thinned to every 10 steps" in alert["message"]
    # and the run was still measured at every quantity's floor
    assert len(recording_run.series("update_ratio/0.weight")) >= 30


def test_no_overhead_alert_where_the_budget_can_be_met(recording_run: RecordingRun) -> None:
    mon = _train_64(300, recording_run, pause_s=0.02)  # ~20 ms steps: the default 3 % is ~0.6 ms
    assert not [e for e in recording_run.events if e["key"] == "probe.overhead"]
    assert mon.overhead is not None and mon.overhead < 0.06
