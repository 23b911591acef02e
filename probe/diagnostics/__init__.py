"""Optimizer diagnostics measured on the device and logged through ``probe.client.Run``.

Layout (one concern per module): ``spectra`` (singular values and derived ranks), ``spectra_pool``
(many spectra at once: batched, CPU eigensolvers on worker threads), ``thread_limit`` (one intra-op
thread for a worker, without process-wide side effects; the training's idle OpenMP threads released
while the workers run), ``measures`` (pure per-tensor measures), ``gradient_diff`` (two-half-batch
projections), ``schedule`` (when to measure), ``budget`` (how much the probe may cost), ``alerts``
(values → events), ``quantity`` (the protocol of one diagnostic), ``quantities`` (the built-in
diagnostics, one module each) and ``monitor`` (the step hooks, schedule and budget over the quantities;
``probe.attach`` returns a :class:`~probe.diagnostics.monitor.Monitor`).
Names resolve lazily so that importing the package imports no torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["Monitor", "attach", "AlertRules", "OverheadBudget", "Quantity", "Needs", "every", "log_spaced"]

_LAZY = {
    "Monitor": "probe.diagnostics.monitor",
    "attach": "probe.diagnostics.monitor",
    "AlertRules": "probe.diagnostics.alerts",
    "OverheadBudget": "probe.diagnostics.budget",
    "Quantity": "probe.diagnostics.quantity",
    "Needs": "probe.diagnostics.quantity",
    "every": "probe.diagnostics.schedule",
    "log_spaced": "probe.diagnostics.schedule",
}


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'probe.diagnostics' has no attribute {name!r}") from None
    return getattr(import_module(module), name)
