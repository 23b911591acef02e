"""Rows of the shared optimizer contract suite (``test_contract.py``).

One row (:class:`OptimizerCase`) per optimizer configuration, in the shape of torch's
``OptimizerInfo`` table: how to build it for a model, how one training step runs, and which
constructor arguments must be refused. The Muon family rows live here; KFAC/FOP rows live in
``cases_kfac.py`` (``KFAC_CASES``), which imports :class:`OptimizerCase` from this module.
:func:`all_cases` joins both lists; it imports ``cases_kfac`` lazily so that either module can
be imported first without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

#: ``make(model, **overrides) -> optimizer``; overrides are constructor keyword arguments.
MakeFn = Callable[..., torch.optim.Optimizer]
#: ``train_step(model, optimizer, x, y) -> loss`` (the loss before the step, detached).
TrainStepFn = Callable[[nn.Module, torch.optim.Optimizer, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class ErrorCase:
    """Constructor ``kwargs`` that must raise ``exc`` with a message matching ``match`` (re.search)."""

    kwargs: dict[str, Any]
    exc: type[Exception]
    match: str


@dataclass(frozen=True)
class OptimizerCase:
    """One optimizer configuration for the shared suite.

    Attributes:
        name: test id.
        make: builds the optimizer for a model: ``make(model, **overrides)``. Overrides are
            constructor keyword arguments (used by ``error_cases`` and the lr-override check).
        train_step: one training step; ``None`` means the default: zero_grad, MSE forward,
            backward, ``optimizer.step()``; returns the loss before the step. KFAC/FOP rows
            pass their own when they need hooks or two half-batch backwards.
        error_cases: constructor arguments that must be refused.
        supports_float64: run the float64 variant of the checks.
        steps: steps for the "loss decreases" check on the shared least-squares problem.
        decrease_factor: final loss must be below ``decrease_factor`` x initial loss.
        lr_key: name of the learning-rate hyperparameter in ``param_groups``.
        make_model: model factory ``make_model(generator) -> nn.Module``; ``None`` uses the
            suite's default MLP (Linear 8->32->32->4 with tanh, biases on).
    """

    name: str
    make: MakeFn
    train_step: TrainStepFn | None = None
    error_cases: Sequence[ErrorCase] = field(default_factory=tuple)
    supports_float64: bool = True
    steps: int = 30
    decrease_factor: float = 0.5
    lr_key: str = "lr"
    make_model: Callable[[torch.Generator], nn.Module] | None = None


def _muon_family_cases() -> list[OptimizerCase]:
    from probe.optim import Muon, NorMuon, hybrid_param_groups

    def make_muon(model: nn.Module, **kw: Any) -> torch.optim.Optimizer:
        kw.setdefault("lr", 0.02)
        return Muon(hybrid_param_groups(model, adamw_lr=1e-2, first_conv_to_adamw=False), **kw)

    def make_normuon(model: nn.Module, **kw: Any) -> torch.optim.Optimizer:
        kw.setdefault("lr", 0.02)
        return NorMuon(hybrid_param_groups(model, adamw_lr=1e-2, first_conv_to_adamw=False), **kw)

    def make_normuon_paper(model: nn.Module, **kw: Any) -> torch.optim.Optimizer:
        kw.setdefault("lr", 0.05)
        kw.setdefault("adjust_lr_fn", "match_rms_adamw")
        kw.setdefault("nesterov", False)
        return NorMuon(hybrid_param_groups(model, adamw_lr=1e-2, first_conv_to_adamw=False), **kw)

    common_errors = [
        ErrorCase({"lr": -1.0}, ValueError, r"lr.*-1\.0"),
        ErrorCase({"momentum": 1.0}, ValueError, r"momentum.*1\.0"),
        ErrorCase({"momentum": -0.1}, ValueError, r"momentum.*-0\.1"),
        ErrorCase({"weight_decay": -0.5}, ValueError, r"weight_decay.*-0\.5"),
        ErrorCase({"ns_steps": 0}, ValueError, r"ns_steps.*0"),
        ErrorCase({"adjust_lr_fn": "bogus"}, ValueError, r"adjust_lr_fn.*bogus"),
        ErrorCase({"ns_dtype": torch.int32}, ValueError, r"ns_dtype.*int32"),
        ErrorCase({"ns_coefficients": (1.0, 2.0)}, ValueError, r"ns_coefficients"),
    ]
    normuon_errors = common_errors + [
        ErrorCase({"beta2": 1.5}, ValueError, r"beta2.*1\.5"),
        ErrorCase({"eps": -1e-3}, ValueError, r"eps.*-0\.001"),
    ]
    return [
        OptimizerCase("muon", make_muon, error_cases=tuple(common_errors)),
        OptimizerCase("normuon", make_normuon, error_cases=tuple(normuon_errors)),
        OptimizerCase("normuon_paper_rms", make_normuon_paper, error_cases=()),
    ]


def all_cases() -> list[OptimizerCase]:
    """Muon-family rows followed by ``cases_kfac.KFAC_CASES``."""
    from tests.probe.optim.cases_kfac import KFAC_CASES

    return _muon_family_cases() + list(KFAC_CASES)
