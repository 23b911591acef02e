"""KFAC/FOP rows for the shared optimizer contract suite (owned by the KFAC/FOP work).

The default train step (zero_grad, MSE forward, backward, ``step()``) is all KFAC and FOP need: the
module hooks capture the factors and FOP's half-batch gradients during that one backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tests.probe.optim.cases import ErrorCase, OptimizerCase

_COMMON_ERRORS = (
    ErrorCase({"lr": -1.0}, ValueError, r"lr.*-1\.0"),
    ErrorCase({"momentum": 1.0}, ValueError, r"momentum.*1\.0"),
    ErrorCase({"weight_decay": -0.5}, ValueError, r"weight_decay.*-0\.5"),
    ErrorCase({"damping": 0.0}, ValueError, r"damping.*0\.0"),
    ErrorCase({"damping": -1e-3}, ValueError, r"damping.*-0\.001"),
    ErrorCase({"factor_decay": 1.5}, ValueError, r"factor_decay.*1\.5"),
    ErrorCase({"kl_clip": 0.0}, ValueError, r"kl_clip.*0\.0"),
    ErrorCase({"factor_update_interval": 0}, ValueError, r"factor_update_interval.*0"),
    ErrorCase({"inv_update_interval": -3}, ValueError, r"inv_update_interval.*-3"),
    ErrorCase({"loss_reduction": "none"}, ValueError, r"loss_reduction.*none"),
)

_FOP_ERRORS = _COMMON_ERRORS + (
    ErrorCase({"eta_convention": "both"}, ValueError, r"eta_convention.*both"),
    ErrorCase({"beta_guard": -1.0}, ValueError, r"beta_guard.*-1\.0"),
)

# Small-problem settings: refresh curvature often so 30 steps see it; a looser trust region than the
# 1e-3 default so the KL clip does not dominate a tiny least-squares problem.
_SMALL = dict(lr=0.1, kl_clip=1e-2, factor_update_interval=1, inv_update_interval=5)


def _make_kfac(model: nn.Module, **kw: Any) -> torch.optim.Optimizer:
    from probe.optim import KFAC

    return KFAC(model, **{**_SMALL, **kw})


def _make_fop(model: nn.Module, **kw: Any) -> torch.optim.Optimizer:
    from probe.optim import FOP

    return FOP(model, **{**_SMALL, **kw})


# The variants (factored-pi damping, eta_convention="sum") ride on the same code paths; they are covered in
# test_kfac.py / test_fop.py rather than here, to keep the shared suite within its time budget.
KFAC_CASES: list = [
    OptimizerCase("kfac", _make_kfac, error_cases=_COMMON_ERRORS),
    OptimizerCase("fop", _make_fop, error_cases=_FOP_ERRORS),
]
