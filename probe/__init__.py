"""Optiscope probe: attach optimizer diagnostics to a PyTorch training run.

    import probe
    run = probe.init(project="cifar", name="normuon-lr0.02", config={...})
    monitor = probe.attach(model, optimizer, run=run)
    ...
    run.log({"loss": loss}, step=step)
    run.finish()

Names are resolved lazily so that ``import probe`` (e.g. by the ``optiscope`` CLI) costs nothing
and has no side effects; torch is imported only when an optimizer or the monitor is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["init", "attach", "Run", "Monitor", "Quantity", "Needs", "Api", "optim", "data"]

_LAZY = {
    "init": ("probe.client.run", "init"),
    "Run": ("probe.client.run", "Run"),
    "attach": ("probe.diagnostics.monitor", "attach"),
    "Monitor": ("probe.diagnostics.monitor", "Monitor"),
    "Quantity": ("probe.diagnostics.quantity", "Quantity"),
    "Needs": ("probe.diagnostics.quantity", "Needs"),
    "Api": ("probe.api", "Api"),
    "optim": ("probe.optim", None),
    "data": ("probe.data", None),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'probe' has no attribute {name!r}") from None
    module = import_module(module_name)
    return module if attr is None else getattr(module, attr)
