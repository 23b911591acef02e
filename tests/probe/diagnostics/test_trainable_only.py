"""Only trainable parameters are measured, and parameters added or unfrozen later are picked up (issue 17).

Real training steps (torch AdamW / SGD) on tiny models; what is checked is which keys reach the run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from probe.diagnostics.monitor import attach
from tests.probe.diagnostics.conftest import RecordingRun, TinyMLP

# Everything every step, so a missing key means "not measured", never "not due" or "deferred".
_EVERY_STEP = dict(log_every=5, update_every=1, neuron_every=1, spectra_every=1, vectors_every=1,
                   internals_every=1, budget=None)
_PER_LAYER = ("grad_norm", "update_ratio", "nonfinite", "neuron.cv", "sv.weight.spectral_norm", "sv.update.spectral_norm")


def _steps_with(run: RecordingRun, key: str) -> set[int]:
    return set(run.series(key))


def _layer_keys(run: RecordingRun, layer: str) -> set[str]:
    return {k for k in run.keys() if k.endswith("/" + layer)} | {
        a["key"] for a in run.arrays if a["layer"] == layer}


def _loop(model: nn.Module, opt: torch.optim.Optimizer, steps: int,
          at: dict[int, Callable[[], None]] | None = None) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=gen)
    y = torch.randn(32, 4, generator=gen)
    for step in range(steps):
        if at and step in at:
            at[step]()
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _mlp() -> TinyMLP:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return TinyMLP()


def test_frozen_parameters_get_no_metrics_even_when_the_optimizer_holds_them(recording_run: RecordingRun) -> None:
    model = _mlp()
    model.fc1.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)  # frozen weights in the optimizer, as people do
    with attach(model, opt, run=recording_run, **_EVERY_STEP):
        _loop(model, opt, 10)
    assert not _layer_keys(recording_run, "fc1.weight") and not _layer_keys(recording_run, "fc1.bias")
    for q in _PER_LAYER:
        assert _steps_with(recording_run, f"{q}/fc2.weight") == set(range(10)), q
    assert {a["step"] for a in recording_run.arrays if a["key"] == "sv.weight" and a["layer"] == "fc2.weight"} \
        == set(range(10))


class _LoRALinear(nn.Module):
    """A frozen base weight plus a trainable low-rank update B·A (LoRA's shape)."""

    def __init__(self, d_in: int, d_out: int, rank: int = 2) -> None:
        super().__init__()
        self.base = nn.Linear(d_in, d_out)
        self.base.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.randn(rank, d_in) * 0.1)
        self.lora_b = nn.Parameter(torch.zeros(d_out, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + x @ self.lora_a.T @ self.lora_b.T


def test_a_lora_frozen_base_is_not_measured_its_adapters_are(recording_run: RecordingRun) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(_LoRALinear(8, 16), nn.Tanh(), _LoRALinear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with attach(model, opt, run=recording_run, **_EVERY_STEP):
        _loop(model, opt, 6)
    measured = {k.split("/", 1)[1] for k in recording_run.keys() if "/" in k}
    assert measured == {"0.lora_a", "0.lora_b", "2.lora_a", "2.lora_b"}
    assert _steps_with(recording_run, "sv.weight.spectral_norm/0.lora_b") == set(range(6))


def test_a_param_group_added_later_is_measured_from_then_on(recording_run: RecordingRun) -> None:
    model = _mlp()
    model.fc1.requires_grad_(False)
    opt = torch.optim.SGD(model.fc2.parameters(), lr=1e-2)

    def unfreeze() -> None:  # progressive unfreezing: the layer joins the optimizer at step 8
        model.fc1.requires_grad_(True)
        opt.add_param_group({"params": list(model.fc1.parameters()), "lr": 1e-3})

    with attach(model, opt, run=recording_run, **_EVERY_STEP):
        _loop(model, opt, 15, at={8: unfreeze})
    for q in _PER_LAYER:
        assert _steps_with(recording_run, f"{q}/fc1.weight") == set(range(8, 15)), q
        assert _steps_with(recording_run, f"{q}/fc2.weight") == set(range(15)), q
    assert _steps_with(recording_run, "grad_norm/fc1.bias") == set(range(8, 15))


def test_a_new_module_added_with_its_group_is_named_from_the_model(recording_run: RecordingRun) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)

    def grow() -> None:  # a new head, registered on the model, joins the optimizer at step 3
        model.head = nn.Linear(4, 4)
        opt.add_param_group({"params": list(model.head.parameters())})
        model.forward = lambda x: model.head(TinyMLP.forward(model, x))  # type: ignore[method-assign]

    with attach(model, opt, run=recording_run, **_EVERY_STEP):
        _loop(model, opt, 6, at={3: grow})
    assert _steps_with(recording_run, "sv.weight.spectral_norm/head.weight") == set(range(3, 6))
    assert not any(k.split("/", 1)[-1].startswith("param") for k in recording_run.keys())


def test_requires_grad_flipped_later_starts_and_stops_the_measurements(recording_run: RecordingRun) -> None:
    model = _mlp()
    model.fc1.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def freeze_again() -> None:
        model.fc1.requires_grad_(False)
        model.fc1.weight.grad = model.fc1.bias.grad = None  # as zero_grad(set_to_none=True) leaves them

    with attach(model, opt, run=recording_run, **_EVERY_STEP):
        _loop(model, opt, 16, at={5: lambda: model.fc1.requires_grad_(True), 11: freeze_again})
    for q in _PER_LAYER:
        assert _steps_with(recording_run, f"{q}/fc1.weight") == set(range(5, 11)), q
        assert _steps_with(recording_run, f"{q}/fc2.weight") == set(range(16)), q
