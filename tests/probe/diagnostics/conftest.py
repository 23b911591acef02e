"""Shared fixtures for the diagnostics tests: a recording run at the Monitor→Run seam, tiny models."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn


@dataclass
class RecordingRun:
    """In-memory stand-in for ``probe.client.Run`` with the exact method signatures the Monitor calls."""

    logs: list[tuple[int | None, dict[str, Any]]] = field(default_factory=list)
    arrays: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def log_at(self, metrics: Mapping[str, float | int | torch.Tensor], *, step: int) -> None:
        self.logs.append((step, dict(metrics)))

    def log_array(self, key: str, values: Any, *, step: int, layer: str = "") -> None:
        self.arrays.append({"key": key, "values": values, "step": step, "layer": layer})

    def log_event(
        self,
        key: str,
        message: str,
        *,
        step: int | None = None,
        layer: str | None = None,
        level: str = "warning",
        kind: str = "alert",
        data: Mapping[str, Any] | None = None,
    ) -> None:
        self.events.append(
            {"key": key, "message": message, "step": step, "layer": layer, "level": level, "kind": kind,
             "data": dict(data or {})}
        )

    # -- helpers for assertions
    def series(self, key: str) -> dict[int, float]:
        return {step: m[key] for step, m in self.logs if key in m and step is not None}

    def keys(self) -> set[str]:
        return {k for _, m in self.logs for k in m}


@pytest.fixture
def recording_run() -> RecordingRun:
    return RecordingRun()


class TinyMLP(nn.Module):
    def __init__(self, d_in: int = 8, hidden: int = 16, d_out: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


@pytest.fixture
def make_model():
    def make(seed: int = 0, **kwargs: int) -> TinyMLP:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return TinyMLP(**kwargs)

    return make


def train(model: nn.Module, optimizers: Any, steps: int, *, seed: int = 0, batch: int = 32) -> None:
    """A plain training loop on a fixed regression task (own generator: no global RNG)."""
    opts = optimizers if isinstance(optimizers, (list, tuple)) else [optimizers]
    gen = torch.Generator().manual_seed(seed)
    d_in = next(model.parameters()).shape[1]
    x = torch.randn(batch, d_in, generator=gen)
    y = torch.randn(batch, model(x).shape[1], generator=gen)
    for _ in range(steps):
        for opt in opts:
            opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        for opt in opts:
            opt.step()
