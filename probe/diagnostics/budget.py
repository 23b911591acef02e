"""Overhead budget: keep the probe's share of step time near a target without ever starving a diagnostic.

A token bucket in seconds. Every closed training step earns ``fraction × (step time − probe time)`` of
credit (a pause between steps counts as 1.5 steps at most), the target share of the time training
itself took, and every second the probe spends on the training thread is debited — the fixed per-step
part (grad norms, step bookkeeping, the interval flush) included. A due diagnostic runs when the credit
covers its estimated cost (an EMA of its measured cost; unknown costs are optimistic, so each runs once
and gets measured).

Three rules keep that from starving anything (a single optimistic first run used to dig a hole the
fixed per-step debits never let it climb out of, and a run stored one point per layer):

* the credit has a floor as well as a cap (both ``fraction × window_steps`` mean step times, at least
  1.5× the dearest diagnostic), so a debt is bounded and repaid within a window;
* a diagnostic the credit does not cover is skipped, not a barrier: the cheaper ones behind it still
  run (the caller orders the due ones most overdue first, so a deferred one moves up the line);
* a diagnostic past its floor (``forced``: the caller's guarantee of one run per 10 nominal periods)
  runs whatever the credit.

The fixed part cannot be deferred, only thinned: when its cost alone exceeds the budget,
:attr:`fixed_every` says to run it every k steps (k ≤ 10). When the achieved overhead of a block of
``alert_steps`` steps exceeds ``alert_factor ×`` the budget, :meth:`observe_step` returns an
:class:`OverBudget` saying by how much and what was thinned, for the Monitor to log as a run event.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["OverheadBudget", "OverBudget", "MAX_THINNING"]

MAX_THINNING = 10
"""The most a diagnostic or the fixed per-step part is thinned: once every 10 nominal periods."""


@dataclass(frozen=True)
class OverBudget:
    """A block of steps whose achieved probe overhead stayed above ``alert_factor ×`` the budget."""

    overhead: float
    """Probe time / step time over the block."""
    budget: float
    steps: int
    fixed_every: int
    """The fixed per-step part ran every this many steps."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Due runs deferred by the budget during the block, per diagnostic."""
    forced: dict[str, int] = field(default_factory=dict)
    """Runs made at the floor despite the budget during the block, per diagnostic."""

    def message(self) -> str:
        parts = [f"probe overhead {self.overhead:.1%} over the last {self.steps} steps "
                 f"(budget {self.budget:.1%})"]
        if self.fixed_every > 1:
            parts.append(f"grad norms thinned to every {self.fixed_every} steps")
        if self.skipped:
            parts.append("deferred " + ", ".join(f"{k} {v}×" for k, v in sorted(self.skipped.items())))
        if self.forced:
            parts.append("run at their floor " + ", ".join(f"{k} {v}×" for k, v in sorted(self.forced.items())))
        return "; ".join(parts)

    def data(self) -> dict[str, object]:
        return {"overhead": self.overhead, "budget": self.budget, "steps": self.steps,
                "fixed_every": self.fixed_every, "skipped": dict(self.skipped), "forced": dict(self.forced)}


class OverheadBudget:
    """Token bucket deciding which due diagnostics may run this step.

    Args:
        fraction: target probe time / training time (default 0.03); ``None`` disables throttling.
        window_steps: credit cap and floor are ± ``fraction × window_steps`` mean step times (but always
            at least 1.5× the dearest diagnostic, or it could never run).
        smoothing: EMA weight of a new cost or step-time observation.
        alert_factor, alert_steps: :meth:`observe_step` reports an :class:`OverBudget` when a block of
            ``alert_steps`` steps ran above ``alert_factor × fraction``.

    Raises:
        ValueError: on a non-positive fraction, window or alert block, smoothing outside (0, 1].
    """

    def __init__(self, fraction: float | None = 0.03, *, window_steps: int = 200, smoothing: float = 0.2,
                 alert_factor: float = 2.0, alert_steps: int = 100) -> None:
        if fraction is not None and not fraction > 0:
            raise ValueError(f"Invalid budget fraction: {fraction} (must be > 0, or None for no budget)")
        if window_steps < 1:
            raise ValueError(f"Invalid window_steps: {window_steps} (must be >= 1)")
        if not 0 < smoothing <= 1:
            raise ValueError(f"Invalid smoothing: {smoothing} (must be in (0, 1])")
        if alert_steps < 1:
            raise ValueError(f"Invalid alert_steps: {alert_steps} (must be >= 1)")
        self.fraction = fraction
        self.gap_factor = 4.0
        self.credit_factor = 1.5
        self.window_steps = window_steps
        self.smoothing = smoothing
        self.alert_factor = alert_factor
        self.alert_steps = alert_steps
        self.credit = 0.0
        self.cost: dict[str, float] = {}
        self.step_time: float | None = None
        self.fixed_cost: float | None = None
        """EMA of the fixed per-step probe time on steps where the fixed part ran."""
        self._fixed_seen = 0
        self.skipped: dict[str, int] = {}
        self.forced: dict[str, int] = {}
        # Totals since construction (``Monitor.overhead``) and since the last ``take_overhead()``.
        self.probe_total = 0.0
        self.step_total = 0.0
        self._probe_acc = 0.0
        self._step_acc = 0.0
        self._block = [0.0, 0.0, 0]  # probe s, step s, steps of the current alert block
        self._block_skipped: dict[str, int] = {}
        self._block_forced: dict[str, int] = {}

    @property
    def fixed_every(self) -> int:
        """Run the fixed per-step part every this many steps: 1 unless its cost alone exceeds the budget."""
        # Not before 50 steps are measured: the first ones are slow (allocation, warm-up) and noisy.
        if self.fraction is None or self.fixed_cost is None or not self.step_time or self._fixed_seen < 50:
            return 1
        share = self.fixed_cost / (self.fraction * self.step_time)
        return max(1, min(MAX_THINNING, math.ceil(share - 1e-9)))

    def select(self, due: Iterable[str], forced: Iterable[str] = ()) -> set[str]:
        """Pick among the due diagnostics (most overdue first) those the credit covers, plus the ``forced``.

        One the credit does not cover is skipped and the next ones are still considered: an expensive
        diagnostic never blocks the cheap ones, and moves up the line as it grows overdue.
        """
        due = list(due)
        forced = set(forced)
        if self.fraction is None:
            return set(due)
        chosen: set[str] = set()
        available = self.credit
        for name in due:
            estimate = self.cost.get(name, 0.0)
            if name in forced:
                self.forced[name] = self.forced.get(name, 0) + 1
                self._block_forced[name] = self._block_forced.get(name, 0) + 1
            elif estimate > available:
                self.skipped[name] = self.skipped.get(name, 0) + 1
                self._block_skipped[name] = self._block_skipped.get(name, 0) + 1
                continue
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
        self._block[0] += seconds
        if self.fraction is not None:
            self.credit = max(self.credit - seconds, -self._bound())

    def observe_step(self, step_seconds: float, probe_seconds: float,
                     fixed_seconds: float | None = None) -> OverBudget | None:
        """Close one training step: ``step_seconds`` wall time including ``probe_seconds`` of probe work,
        of which ``fixed_seconds`` the fixed per-step part (``None``: it was thinned out this step).

        Returns an :class:`OverBudget` when this step ends an alert block that ran over budget.
        """
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
        if fixed_seconds is not None:
            self._fixed_seen += 1
            old = self.fixed_cost
            self.fixed_cost = fixed_seconds if old is None else old + self.smoothing * (fixed_seconds - old)
        if self.fraction is None:
            return None
        bound = self._bound()
        self.credit = min(max(self.credit + self.fraction * earned - probe_seconds, -bound), bound)
        return self._close_block(min(step_seconds, probe_seconds + self.gap_factor * self.step_time), probe_seconds)

    def _bound(self) -> float:
        """Credit cap and (negated) floor."""
        bound = self.fraction * self.window_steps * (self.step_time or 0.0) if self.fraction else 0.0
        if self.cost:
            bound = max(bound, 1.5 * max(self.cost.values()))
        return bound

    def _close_block(self, step_seconds: float, probe_seconds: float) -> OverBudget | None:
        block = self._block
        block[0] += probe_seconds
        block[1] += step_seconds
        block[2] += 1
        if block[2] < self.alert_steps:
            return None
        probe_s, step_s, steps = block
        self._block = [0.0, 0.0, 0]
        skipped, self._block_skipped = self._block_skipped, {}
        forced, self._block_forced = self._block_forced, {}
        assert self.fraction is not None
        overhead = probe_s / step_s if step_s > 0 else 0.0
        if overhead <= self.alert_factor * self.fraction:
            return None
        return OverBudget(overhead, self.fraction, steps, self.fixed_every, skipped, forced)

    def take_overhead(self) -> float | None:
        """Achieved probe time / step time since the last call (None if no step closed), then reset."""
        if self._step_acc <= 0:
            return None
        value = self._probe_acc / self._step_acc
        self._probe_acc = 0.0
        self._step_acc = 0.0
        return value
