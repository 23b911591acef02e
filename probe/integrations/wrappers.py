"""See through optimizer and model wrappers so the probe hooks the optimizer that really steps.

Why: accelerate's ``AcceleratedOptimizer`` subclasses ``torch.optim.Optimizer`` without calling its
``__init__`` (so it has no hook dictionaries: ``register_step_pre_hook`` raises ``AttributeError``), and
Lightning's ``LightningOptimizer`` is not an ``Optimizer`` at all. Both forward ``step()`` to the wrapped
optimizer, whose own step hooks therefore fire on every real update — the one place to attach. Model
wrappers (DDP's ``module.``, ``torch.compile``'s ``_orig_mod.``) only rename parameters; unwrapping them
keeps layer names equal to the user's model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_MAX_DEPTH = 8  # wrappers of wrappers (accelerate around a Lightning optimizer, …); a cycle stops here


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The innermost ``torch.optim.Optimizer`` behind ``optimizer`` (itself if it is a plain one).

    Raises:
        TypeError: ``optimizer`` is neither an optimizer nor a wrapper exposing one as ``.optimizer``
            (or ``._optimizer``); the message names its type.
    """
    current = optimizer
    for _ in range(_MAX_DEPTH):
        inner = getattr(current, "optimizer", None)
        if inner is None or inner is current:
            inner = getattr(current, "_optimizer", None)
        if inner is None or inner is current or not _looks_like_optimizer(inner):
            break
        current = inner
    if not isinstance(current, torch.optim.Optimizer) or not hasattr(current, "_optimizer_step_pre_hooks"):
        raise TypeError(
            f"probe.attach needs a torch.optim.Optimizer or a wrapper exposing one as .optimizer, got "
            f"{type(optimizer).__module__}.{type(optimizer).__qualname__}")
    return current


def _looks_like_optimizer(obj: Any) -> bool:
    return isinstance(obj, torch.optim.Optimizer) or hasattr(obj, "optimizer") or hasattr(obj, "_optimizer")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module behind DDP/FSDP-style ``.module`` and ``torch.compile``'s ``._orig_mod``."""
    parallel = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    current = model
    for _ in range(_MAX_DEPTH):
        inner = getattr(current, "_orig_mod", None)  # torch.compile's OptimizedModule
        if not isinstance(inner, nn.Module) and isinstance(current, parallel):
            inner = current.module  # only real DDP/DP: a user's child called "module" stays
        if not isinstance(inner, nn.Module) or inner is current:
            return current
        current = inner
    return current
