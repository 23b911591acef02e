"""The cheap per-step paths still measure what they claim: real AdamW steps on a tiny MLP."""

from __future__ import annotations

import torch
from torch import nn

from probe.diagnostics.monitor import attach
from tests.probe.diagnostics.conftest import RecordingRun, TinyMLP, train


def test_a_nan_gradient_is_counted_when_the_norms_shortcut_the_count(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    step = {"n": 0}

    def poison(grad: torch.Tensor) -> torch.Tensor:
        step["n"] += 1
        if step["n"] == 4:  # the 4th backward (step 3): two NaN entries
            grad = grad.clone()
            grad[0, :2] = float("nan")
        return grad

    model.fc2.weight.register_hook(poison)
    mon = attach(model, opt, run=recording_run, budget=None, log_every=2, update_every=1, scalars_every=1)
    train(model, opt, 4)
    mon.detach()
    counts = recording_run.series("nonfinite/fc2.weight")
    assert counts[0] == counts[1] == counts[2] == 0
    assert counts[3] >= 2  # the gradient's 2, and the update's (SGD: the same 2 entries)
    assert recording_run.series("nonfinite/fc1.weight")[3] == 0
    assert mon.errors == {}


def test_default_settings_measure_updates_with_their_gradient_norms(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mon = attach(model, opt, run=recording_run)
    train(model, opt, 120)
    mon.detach()
    assert mon.errors == {}
    updates = set(recording_run.series("update_ratio/fc1.weight"))
    assert len(updates) >= 12  # at least its floor: one run per 10 steps
    assert updates <= set(recording_run.series("grad_norm/fc1.weight"))  # the non-finite check reused them
    assert all(v == 0 for v in recording_run.series("nonfinite/fc1.weight").values())


def test_a_layer_added_in_between_is_copied_for_its_update(recording_run: RecordingRun) -> None:
    """The capture-size check is cached per optimizer: a group added later must be copied too."""
    model = TinyMLP()
    opt = torch.optim.SGD(model.fc1.parameters(), lr=1e-2)
    mon = attach(model, opt, run=recording_run, budget=None, update_every=1, log_every=1)
    train(model, opt, 3)
    opt.add_param_group({"params": list(model.fc2.parameters())})
    train(model, opt, 3)
    mon.detach()
    assert set(recording_run.series("update_ratio/fc2.weight")) == {3, 4, 5}
    assert all(v > 0 for v in recording_run.series("update_ratio/fc2.weight").values())


def test_grad_norms_are_nn_utils_norms(recording_run: RecordingRun) -> None:
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = attach(model, opt, run=recording_run, budget=None, log_every=1)
    train(model, opt, 1)
    mon.detach()
    expected = float(nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    assert abs(recording_run.series("grad_norm")[0] - expected) <= 1e-6 * expected
