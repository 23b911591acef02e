"""The demo's runs: which model, data, optimizer and budget each training gets, and how they are compared.

Three comparisons, each a small-scale check of a paper's headline claim (ALGORITHMS.md §1.9, §2.9,
§4.7, §5.7), read off the server's ``/time-to-target`` exactly as the dashboard's compare page does:

* ``vision``: digits CNN at a *large* batch (about a third of the training set per step, the regime the
  FOP paper targets) with AdamW (baseline), ``torch.optim.Muon`` + AdamW, our NorMuon, KFAC and FOP —
  steps / seconds / samples to a test accuracy.
* ``long-tail``: the long-tailed digits with AdamW on all data (baseline) vs AdamW + InfoBatch — does
  pruning save samples without losing accuracy?
* ``language``: the tiny char GPT with AdamW (baseline), Muon and NorMuon — to a validation loss.

Budgets are fixed step counts (so a run is reproducible), sized so that on a 2-core CPU with two
trainings at a time the full demo ends within 5 minutes and ``--quick`` within a minute; on a GPU the
models and budgets are scaled up. ``max_seconds`` is only a safety net against a very slow machine.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["RunSpec", "Comparison", "build_specs", "comparisons", "PROGRESS_PREFIX"]

# Training children print progress on stdout as ``PROGRESS_PREFIX + json`` lines; the orchestrator parses them.
PROGRESS_PREFIX = "@@optiscope "

Task = Literal["digits", "digits_lt", "chars"]
OptimizerName = Literal["adamw", "muon", "normuon", "kfac", "fop"]


@dataclass(frozen=True)
class RunSpec:
    """Everything one training subprocess needs; JSON round-trips through :meth:`to_json`."""

    name: str
    group: str
    task: Task
    optimizer: OptimizerName
    steps: int  # total optimizer steps (chars); ignored when ``epochs`` is set
    batch_size: int
    lr: float  # AdamW lr, or the lr of the non-matrix AdamW group in hybrid runs
    matrix_lr: float | None = None  # Muon-family lr for hidden matrices
    weight_decay: float = 0.0
    warmup_steps: int = 0
    eval_every: int = 10
    epochs: int = 0  # image tasks train whole epochs, so InfoBatch's shorter epochs show as fewer steps
    infobatch: bool = False
    seed: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    monitor: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    max_seconds: float = 240.0

    @property
    def label(self) -> str:
        """Unique within a demo: the name, with ``-s<seed>`` for seeds after the first. The run's name on
        the server stays ``name`` for every seed, so runs group by "everything but the seed"."""
        return self.name if self.seed == 0 else f"{self.name}-s{self.seed}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Comparison:
    """One time-to-target table: runs of ``group``, compared on ``key`` against the ``baseline`` run."""

    group: str
    title: str
    key: str
    target: float
    direction: Literal["below", "above"]
    baseline: str  # a RunSpec.name
    claim: str  # the paper claim this table checks, in one line


def comparisons(*, quick: bool) -> list[Comparison]:
    """The tables the demo prints; quick runs are short, so their targets are easier."""
    return [
        Comparison(
            group="vision",
            title="digits CNN, large batch — steps/time to test accuracy",
            key="val_acc",
            target=0.90 if quick else 0.97,
            direction="above",
            baseline="digits-adamw",
            claim="FOP reaches the target faster than KFAC and AdamW at large batch (FOP paper, Table 1)",
        ),
        Comparison(
            group="long-tail",
            title="long-tailed digits — samples to balanced test accuracy",
            key="val_acc",
            target=0.70 if quick else 0.92,
            direction="above",
            baseline="lt-adamw",
            claim="InfoBatch saves ~40% of the samples without losing accuracy (InfoBatch, ICLR 2024)",
        ),
        Comparison(
            group="language",
            title="char GPT on stdlib source — steps/time to validation loss",
            key="val_loss",
            target=3.05 if quick else 2.4,
            direction="below",
            baseline="gpt-adamw",
            claim="Muon ~1.35x faster than AdamW; NorMuon faster than Muon (Muon blog; NorMuon abstract)",
        ),
    ]


def build_specs(*, quick: bool, gpu: bool = False, seed: int = 0, seeds: int = 1) -> list[RunSpec]:
    """The demo's runs, in launch order (the longest first, so two workers finish together).

    ``seeds`` > 1 repeats every recipe with seeds ``seed … seed + seeds − 1`` (model init and data order
    change, nothing else), so each comparison becomes groups of runs that differ only in the seed.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    per_seed = [_specs_for_seed(quick=quick, gpu=gpu, seed=seed + i) for i in range(seeds)]
    # The language runs are the longest: all of them first, then vision, then long-tail.
    return [spec for group in ("language", "vision", "long-tail") for specs in per_seed for spec in specs
            if spec.group == group]


def _specs_for_seed(*, quick: bool, gpu: bool, seed: int) -> list[RunSpec]:
    device = "cuda" if gpu else "cpu"
    scale = 4 if gpu else 1  # GPU: 4× wider models, same recipes
    # Large batch: 512 of the 1,438 training images per step, i.e. 3 steps per epoch.
    v_epochs, v_batch, v_eval = (14, 512, 3) if quick else (40, 512, 3)
    # Long-tailed: ~590 images, batch 64, ~10 steps per full epoch (fewer while InfoBatch prunes).
    lt_epochs, lt_batch, lt_eval = (8, 64, 5) if quick else (40, 64, 5)
    g_steps, g_batch, g_eval = (40, 16, 10) if quick else (500, 32, 25)
    digits_model = {"channels": 16 * scale, "hidden": 128 * scale}
    gpt_model = {"d_model": 64 * scale, "n_layer": 2 if not gpu else 4, "n_head": 4, "block_size": 64 * (2 if gpu else 1)}
    # Diagnostics cadence (Monitor keyword arguments): dense enough that every panel has data even in a
    # 40-step quick run. budget=None: these models take milliseconds per step, so the default 3 % overhead
    # budget would defer nearly every spectrum — the demo exists to show them.
    monitor = (
        {"log_every": 5, "neuron_every": 5, "spectra_every": 10, "vectors_every": 10, "internals_every": 5,
         "budget": None}
        if quick
        else {"log_every": 10, "neuron_every": 10, "spectra_every": 25, "vectors_every": 50,
              "internals_every": 10, "budget": None}
    )
    # KFAC/FOP: refresh factors every step and eigendecompositions every 5 (the FOP paper's minimum
    # interval): the matrices are tiny, and a 40-step run needs more than one curvature estimate.
    kfac_kwargs = {"damping": 1e-3, "momentum": 0.9, "factor_update_interval": 1, "inv_update_interval": 5}
    max_s = 50.0 if quick else 240.0
    common = {"seed": seed, "device": device, "max_seconds": max_s, "monitor": monitor}

    # Learning rates: the best of a 3-point grid per optimizer on the full-budget run (steps to the
    # target), chosen once on a CPU and frozen here so every demo compares the same recipes.
    language = [
        RunSpec(
            name=f"gpt-{opt}",
            group="language",
            task="chars",
            optimizer=opt,  # type: ignore[arg-type]
            steps=g_steps,
            batch_size=g_batch,
            lr=3e-3,
            matrix_lr=None if opt == "adamw" else 0.02,
            weight_decay=0.0,
            warmup_steps=max(1, g_steps // 20),
            eval_every=g_eval,
            model=gpt_model,
            **common,
        )
        for opt in ("adamw", "muon", "normuon")
    ]
    vision = [
        RunSpec(
            name=f"digits-{opt}",
            group="vision",
            task="digits",
            optimizer=opt,  # type: ignore[arg-type]
            steps=0,
            epochs=v_epochs,
            batch_size=v_batch,
            lr={"adamw": 1e-2, "muon": 1e-2, "normuon": 1e-2, "kfac": 0.2, "fop": 0.2}[opt],
            matrix_lr=0.1 if opt in ("muon", "normuon") else None,
            warmup_steps=3,
            eval_every=v_eval,
            model=digits_model,
            optimizer_kwargs=kfac_kwargs if opt in ("kfac", "fop") else {},
            **common,
        )
        for opt in ("adamw", "muon", "normuon", "kfac", "fop")
    ]
    long_tail = [
        RunSpec(
            name=f"lt-{'infobatch' if ib else 'adamw'}",
            group="long-tail",
            task="digits_lt",
            optimizer="adamw",
            steps=0,
            epochs=lt_epochs,
            batch_size=lt_batch,
            lr=1e-2,
            warmup_steps=5,
            eval_every=lt_eval,
            infobatch=ib,
            model=digits_model,
            **common,
        )
        for ib in (False, True)
    ]
    return [*language, *vision, *long_tail]
