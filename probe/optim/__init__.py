"""Optimizers whose internals Optiscope can show: Muon, NorMuon, KFAC, FOP.

All are ``torch.optim.Optimizer``-compatible (KFAC/FOP take the model, since they hook its layers).
Names resolve lazily so that importing one optimizer does not import the others.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["Muon", "NorMuon", "KFAC", "FOP", "hybrid_param_groups"]

_LAZY = {
    "Muon": "probe.optim.muon",
    "NorMuon": "probe.optim.normuon",
    "KFAC": "probe.optim.kfac",
    "FOP": "probe.optim.fop",
    "hybrid_param_groups": "probe.optim.routing",
}


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'probe.optim' has no attribute {name!r}") from None
    return getattr(import_module(module), name)
