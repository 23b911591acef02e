"""Alerts: the rules on values, the rate limit, and end-to-end events from a training run."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from probe.diagnostics.alerts import AlertEngine, AlertRules
from probe.diagnostics.monitor import attach
from tests.probe.diagnostics.conftest import RecordingRun, TinyMLP, train


def test_rules_fire_on_each_condition_and_not_otherwise() -> None:
    engine = AlertEngine(AlertRules(cooldown_steps=1))
    assert engine.check("nonfinite", "a", 1, 3.0).key == "nonfinite"
    assert engine.check("nonfinite", "a", 2, 0.0) is None
    assert engine.check("grad_norm", "a", 3, math.inf).key == "nonfinite"
    assert engine.check("sv.weight.cond", "a", 4, 1e9).key == "cond_explode"
    assert engine.check("sv.update.cond", "a", 5, 1e9) is None  # updates are legitimately low-rank
    assert engine.check("sv.weight.cond", "a", 6, math.nan) is None
    assert engine.check("neuron.frozen_frac", "a", 7, 0.9).key == "frozen_neurons"
    assert engine.check("update_ratio", "a", 8, 2.0).key == "update_ratio"
    assert engine.check("update_ratio", "a", 9, 1e-9).key == "update_ratio"
    assert engine.check("update_ratio", "a", 10, 1e-3) is None


def test_check_metric_splits_the_key_and_skips_metrics_without_a_rule() -> None:
    engine = AlertEngine(AlertRules(cooldown_steps=1))
    for step in (1, 2):  # the second time from the remembered split
        alert = engine.check_metric("sv.weight.cond/blocks.0.fc", step, 1e9)
        assert (alert.key, alert.layer, alert.step) == ("cond_explode", "blocks.0.fc", step)
        assert engine.check_metric("nonfinite/head", step, 2.0).layer == "head"
        assert engine.check_metric("sv.weight.spectral_norm/head", step, 1e30) is None
        assert engine.check_metric("step_time", step, 1e30) is None
    assert engine.check_metric("grad_norm", 3, math.nan).key == "nonfinite"  # the global norm has no layer


@pytest.mark.parametrize("quantity", [
    "nonfinite", "grad_norm", "sv.weight.cond", "sv.update.cond", "neuron.frozen_frac", "update_ratio",
    "neuron.cv", "sv.weight.eff_rank",
])
@pytest.mark.parametrize("value", [0.0, 1e-9, 0.9, 2.0, 1e9, math.inf, -math.inf, math.nan])
def test_check_metric_agrees_with_check_on_every_rule(quantity: str, value: float) -> None:
    by_key, direct = AlertEngine(), AlertEngine()
    a = by_key.check_metric(f"{quantity}/L", 5, value)
    b = direct.check(quantity, "L", 5, value)
    assert (a is None) == (b is None)
    if a is not None:
        assert (a.key, a.layer, a.step, a.message) == (b.key, b.layer, b.step, b.message)


def test_rate_limit_per_key_and_layer_reports_what_it_suppressed() -> None:
    engine = AlertEngine(AlertRules(cooldown_steps=10))
    fired = [engine.check("nonfinite", "a", s, 1.0) for s in range(25)]
    assert [a.step for a in fired if a] == [0, 10, 20]
    assert [a.data.get("suppressed_since_last") for a in fired if a] == [None, 9, 9]
    assert engine.check("nonfinite", "b", 3, 1.0) is not None  # another layer is not limited


def test_cap_per_flush() -> None:
    engine = AlertEngine(AlertRules(max_per_flush=2))
    engine.start_flush()
    assert sum(engine.check("nonfinite", f"l{i}", 0, 1.0) is not None for i in range(5)) == 2
    engine.start_flush()
    assert engine.check("nonfinite", "l9", 0, 1.0) is not None


def test_nan_gradient_raises_a_nonfinite_event_with_layer_and_step(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    attach(model, opt, run=recording_run, budget=None, log_every=3)
    train(model, opt, 2)
    opt.zero_grad()
    model(torch.ones(2, 8)).sum().backward()
    model.fc2.weight.grad[0, 0] = float("nan")
    opt.step()
    assert recording_run.series("nonfinite/fc2.weight")[2] == 2.0  # one in the grad, one in the update
    events = [e for e in recording_run.events if e["key"] == "nonfinite" and e["layer"] == "fc2.weight"]
    assert len(events) == 1 and events[0]["step"] == 2 and events[0]["kind"] == "alert"


def test_frozen_neurons_and_exploding_condition_number_raise_events(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    with torch.no_grad():
        model.fc1.weight[:, 0] *= 1e-8  # a nearly dead input direction: cond ≈ 1e8
    model.fc1.weight.register_hook(lambda g: g * (torch.arange(16) < 4).float()[:, None])  # 12/16 rows frozen
    opt = torch.optim.SGD(model.parameters(), lr=1e-12)  # tiny steps keep the weight as built
    attach(model, opt, run=recording_run, budget=None, log_every=1, neuron_every=1, spectra_every=1)
    train(model, opt, 1)
    keys = {(e["key"], e["layer"], e["step"]) for e in recording_run.events}
    assert ("frozen_neurons", "fc1.weight", 0) in keys
    assert ("cond_explode", "fc1.weight", 0) in keys


def test_update_ratio_out_of_range_raises_an_event(recording_run: RecordingRun) -> None:
    model = nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=100.0)
    attach(model, opt, run=recording_run, budget=None, log_every=1)
    model(torch.ones(3, 4)).square().sum().backward()
    opt.step()
    assert any(e["key"] == "update_ratio" and e["layer"] == "weight" for e in recording_run.events)
