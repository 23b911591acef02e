"""Alert rules: turn measured values into events (``kind="alert"``) with the layer and the step.

Rules run on host values after the Monitor's once-per-interval copy, so alerting adds no device sync.
They are rate-limited per (key, layer): a layer that stays broken produces one event per cooldown,
and the number suppressed meanwhile travels in the next event's ``data``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AlertRules", "Alert", "AlertEngine"]


@dataclass(frozen=True)
class AlertRules:
    """Thresholds (all user-settable through ``attach(..., alerts=AlertRules(...))``).

    Attributes:
        cond_max: a condition number above this is "exploding" (weight spectra by default: updates of
            small batches are legitimately rank-deficient, so their condition number is often huge).
        cond_sources: spectrum sources checked against ``cond_max``.
        frozen_frac_max: alert when more than this fraction of a layer's neurons is frozen.
        update_ratio_min, update_ratio_max: the sane range of ‖ΔW‖/‖W‖ (≈1e-3 is the usual rule of thumb).
        update_ratio_warmup_steps: no "above" update-ratio alert for a zero-initialised parameter (biases,
            LayerNorm shifts: its ratio is infinite at its first update) during this many steps after it. Such
            a parameter consists of its own first updates, so ‖ΔW‖/‖W‖ ≈ 1/k at its k-th: without the
            warm-up every GPT run raised one false alert per bias at step 1. Other parameters alert at once.
        cooldown_steps: minimum steps between two alerts of the same key on the same layer.
        max_per_flush: cap on events per logging interval (an exploding model must not flood the run).
    """

    cond_max: float = 1e6
    cond_sources: tuple[str, ...] = ("weight",)
    frozen_frac_max: float = 0.5
    update_ratio_min: float = 1e-7
    update_ratio_max: float = 0.5
    update_ratio_warmup_steps: int = 10
    cooldown_steps: int = 100
    max_per_flush: int = 20


@dataclass(frozen=True)
class Alert:
    """One event for ``run.log_event`` (key ∈ nonfinite, cond_explode, frozen_neurons, update_ratio)."""

    key: str
    layer: str
    step: int
    message: str
    level: str = "warning"
    data: dict[str, Any] = field(default_factory=dict)


_QUANTITIES = frozenset({"nonfinite", "grad_norm", "neuron.frozen_frac", "update_ratio"})
"""The quantities :meth:`AlertEngine.check` has a rule for, besides the ``sv.<source>.cond`` family."""


class AlertEngine:
    """Evaluates ``AlertRules`` on logged values and applies the rate limit."""

    def __init__(self, rules: AlertRules | None = None) -> None:
        self.rules = rules or AlertRules()
        self._last: dict[tuple[str, str], int] = {}
        self._suppressed: dict[tuple[str, str], int] = {}
        self._emitted_this_flush = 0
        self.total = 0
        self._metric_keys: dict[str, tuple[str, str] | None] = {}
        self._zero_born: dict[str, int] = {}  # layer -> step of its first update from all-zero weights

    def check_metric(self, key: str, step: int, value: float) -> Alert | None:
        """:meth:`check` of a logged metric ``quantity/layer``.

        The Monitor logs hundreds of metrics per step and most have no rule: the split of each key, and
        whether a rule reads it, are remembered.
        """
        try:
            target = self._metric_keys[key]
        except KeyError:
            quantity, _, layer = key.partition("/")
            reads = quantity in _QUANTITIES or (quantity.startswith("sv.") and quantity.endswith(".cond"))
            target = self._metric_keys[key] = (quantity, layer) if reads else None
        return None if target is None else self.check(target[0], target[1], step, value)

    def start_flush(self) -> None:
        """Reset the per-interval cap."""
        self._emitted_this_flush = 0

    def check(self, quantity: str, layer: str, step: int, value: float) -> Alert | None:
        """Check one per-layer value (``quantity`` is the metric key before ``/``); return an alert or None."""
        r = self.rules
        if quantity == "nonfinite":
            if value > 0:
                message = f"{value:.0f} non-finite values in grad or update"
                return self._emit("nonfinite", layer, step, message, "error", {"count": value})
        elif quantity == "grad_norm":
            if not math.isfinite(value):
                return self._emit("nonfinite", layer, step, f"non-finite gradient norm ({value})", "error",
                                  {"grad_norm": str(value)})
        elif quantity.startswith("sv.") and quantity.endswith(".cond"):
            source = quantity[3:-5]
            if source in r.cond_sources and value > r.cond_max:  # NaN compares False: no alert for NaN
                return self._emit("cond_explode", layer, step,
                                  f"condition number of {source} is {value:.3g} (> {r.cond_max:.3g})", "warning",
                                  {"cond": value, "source": source, "threshold": r.cond_max})
        elif quantity == "neuron.frozen_frac":
            if value > r.frozen_frac_max:
                return self._emit("frozen_neurons", layer, step,
                                  f"{value:.0%} of neurons frozen (> {r.frozen_frac_max:.0%})", "warning",
                                  {"frozen_frac": value, "threshold": r.frozen_frac_max})
        elif quantity == "update_ratio":
            if math.isinf(value):  # ‖W‖ was 0: a zero-initialised parameter's first update
                self._zero_born.setdefault(layer, step)
            born = self._zero_born.get(layer)
            warming = born is not None and step - born < r.update_ratio_warmup_steps
            too_high = value > r.update_ratio_max and not warming
            if math.isfinite(value) and (value < r.update_ratio_min or too_high):
                side = "below" if value < r.update_ratio_min else "above"
                return self._emit("update_ratio", layer, step,
                                  f"update/param ratio {value:.3g} is {side} [{r.update_ratio_min:g}, "
                                  f"{r.update_ratio_max:g}]", "warning",
                                  {"update_ratio": value, "min": r.update_ratio_min, "max": r.update_ratio_max})
        return None

    def _emit(self, key: str, layer: str, step: int, message: str, level: str, data: dict[str, Any]) -> Alert | None:
        slot = (key, layer)
        last = self._last.get(slot)
        if (last is not None and step - last < self.rules.cooldown_steps) or (
            self._emitted_this_flush >= self.rules.max_per_flush
        ):
            self._suppressed[slot] = self._suppressed.get(slot, 0) + 1
            return None
        self._last[slot] = step
        suppressed = self._suppressed.pop(slot, 0)
        if suppressed:
            data = {**data, "suppressed_since_last": suppressed}
        self._emitted_this_flush += 1
        self.total += 1
        return Alert(key=key, layer=layer, step=step, message=message, level=level, data=data)
