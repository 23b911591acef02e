"""No false update-ratio alerts on the first updates of zero-initialised parameters (a GPT's biases)."""

from __future__ import annotations

import torch

import probe
from probe.demo.models import CharGPT
from probe.diagnostics.alerts import AlertEngine, AlertRules


def test_a_gpt_with_zero_biases_raises_no_update_ratio_alert_in_its_first_steps(recording_run) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = CharGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    monitor = probe.attach(model, opt, run=recording_run, update_every=1, log_every=1, budget=None)
    for _ in range(4):
        x = torch.randint(0, 128, (4, 64))
        loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, 128), x.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    monitor.detach()
    ratios = recording_run.series("update_ratio/blocks.0.qkv.bias")
    assert ratios[1] > 0.5  # the ratio really is that high at step 1: only the alert is held back
    assert [e for e in recording_run.events if e["key"] == "update_ratio"] == []


def test_only_zero_initialised_parameters_get_the_warmup() -> None:
    engine = AlertEngine(AlertRules(update_ratio_warmup_steps=10, cooldown_steps=1))
    assert engine.check("update_ratio", "fc.bias", 0, float("inf")) is None  # all-zero weights before
    assert engine.check("update_ratio", "fc.bias", 1, 0.9) is None
    alert = engine.check("update_ratio", "fc.bias", 10, 0.9)  # warm-up over: a real alert
    assert alert is not None and "above" in alert.message
    assert engine.check("update_ratio", "fc.weight", 1, 0.9) is not None  # not zero-born: no warm-up
    assert engine.check("update_ratio", "fc.bias", 11, 1e-9) is not None  # "below" never waits
