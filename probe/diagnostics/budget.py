"""Overhead budget: keep the probe's share of step time under a target by throttling what is expensive.

A token bucket in seconds. Every closed training step earns ``fraction × (step time − probe time)`` of
credit (a pause between steps counts as 1.5 steps at most), i.e. the target share of the time training
itself took, and every second the probe spends is
debited, the mandatory per-step work included. An expensive diagnostic that is due runs only when the
credit covers its estimated cost (an EMA of its measured cost; unknown costs are optimistic, so each
diagnostic runs once and gets measured). So a diagnostic that costs ten steps' worth of budget simply
runs ten times less often than asked, and the achieved overhead converges to ``fraction`` whatever the
model, device or cadence. Credit is capped so that a long quiet stretch cannot fund a burst.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["OverheadBudget"]


class OverheadBudget:
    """Token bucket deciding which due diagnostics may run this step.

    Args:
        fraction: target probe time / training time (default 0.03); ``None`` disables throttling.
        window_steps: the credit cap is ``fraction × window_steps`` mean step times (but always at least
            1.5× the dearest diagnostic, or it could never run).
        smoothing: EMA weight of a new cost or step-time observation.

    Raises:
        ValueError: on a non-positive fraction, window or smoothing outside (0, 1].
    """

    def __init__(self, fraction: float | None = 0.03, *, window_steps: int = 200, smoothing: float = 0.2) -> None:
        if fraction is not None and not fraction > 0:
            raise ValueError(f"Invalid budget fraction: {fraction} (must be > 0, or None for no budget)")
        if window_steps < 1:
            raise ValueError(f"Invalid window_steps: {window_steps} (must be >= 1)")
        if not 0 < smoothing <= 1:
            raise ValueError(f"Invalid smoothing: {smoothing} (must be in (0, 1])")
        self.fraction = fraction
        self.gap_factor = 4.0
        self.credit_factor = 1.5
        self.window_steps = window_steps
        self.smoothing = smoothing
        self.credit = 0.0
        self.cost: dict[str, float] = {}
        self.step_time: float | None = None
        self.skipped: dict[str, int] = {}
        # Totals since construction (``Monitor.overhead``) and since the last ``take_overhead()``.
        self.probe_total = 0.0
        self.step_total = 0.0
        self._probe_acc = 0.0
        self._step_acc = 0.0

    def select(self, due: Iterable[str]) -> set[str]:
        """Pick due diagnostics in the given order (oldest first) while the credit covers their estimated cost.

        Selection stops at the first one the credit does not cover: an expensive diagnostic (spectra every
        50 steps) then saves up for its turn instead of starving behind a cheap one due every step.
        """
        due = list(due)
        if self.fraction is None:
            return set(due)
        chosen: set[str] = set()
        available = self.credit
        for i, name in enumerate(due):
            estimate = self.cost.get(name, 0.0)
            if estimate > available:
                for later in due[i:]:
                    self.skipped[later] = self.skipped.get(later, 0) + 1
                break
            chosen.add(name)
            available -= estimate
        return chosen

    def charge(self, name: str, seconds: float) -> None:
        """Record the measured cost of one run of diagnostic ``name`` (updates its estimate)."""
        old = self.cost.get(name)
        self.cost[name] = seconds if old is None else old + self.smoothing * (seconds - old)

    def debit(self, seconds: float) -> None:
        """Spend credit on probe work learnt about late (device time measured after the interval's sync)."""
        self._probe_acc += seconds
        self.probe_total += seconds
        if self.fraction is not None:
            self.credit -= seconds

    def observe_step(self, step_seconds: float, probe_seconds: float) -> None:
        """Close one training step: ``step_seconds`` wall time including ``probe_seconds`` of probe work."""
        train = max(step_seconds - probe_seconds, 0.0)
        self._probe_acc += probe_seconds
        self._step_acc += step_seconds
        self.probe_total += probe_seconds
        self.step_total += step_seconds
        earned = train
        if self.step_time is not None:
            # A pause between steps (evaluation, checkpointing) is not training time: it earns at most
            # 1.5 ordinary steps of credit, so it cannot buy a burst of diagnostics (at 4, a benchmark that
            # paused every 10 steps ran its probe at 3.9 % instead of 3 %). The step-time estimate still
            # follows a genuine slowdown: each observation is clamped only to gap_factor × the EMA.
            earned = min(train, self.credit_factor * self.step_time)
            train = min(train, self.gap_factor * self.step_time)
        self.step_time = train if self.step_time is None else self.step_time + self.smoothing * (train - self.step_time)
        if self.fraction is None:
            return
        self.credit += self.fraction * earned - probe_seconds
        cap = self.fraction * self.window_steps * self.step_time
        if self.cost:
            cap = max(cap, 1.5 * max(self.cost.values()))
        self.credit = min(self.credit, cap)

    def take_overhead(self) -> float | None:
        """Achieved probe time / step time since the last call (None if no step closed), then reset."""
        if self._step_acc <= 0:
            return None
        value = self._probe_acc / self._step_acc
        self._probe_acc = 0.0
        self._step_acc = 0.0
        return value
