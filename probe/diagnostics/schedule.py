"""When to measure: step → bool schedules (the cockpit ``track_schedule`` shape).

A schedule is any ``Callable[[int], bool]``; the Monitor asks it once per training step with the
step index. Plain integers are accepted wherever a schedule is, meaning ``every(n)``, so users can
write ``spectra_every=100`` and still pass their own callable when they need something else.
"""

from __future__ import annotations

import math
from collections.abc import Callable

Schedule = Callable[[int], bool]

__all__ = ["Schedule", "every", "log_spaced", "never", "as_schedule", "period_of"]


def every(n: int, *, start: int = 0) -> Schedule:
    """Return a schedule true on steps ``start, start + n, start + 2n, …``.

    Args:
        n: period in steps (≥ 1).
        start: first step measured; steps before it are skipped.

    Raises:
        ValueError: if ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"Invalid period n: {n} (must be >= 1)")

    def schedule(step: int) -> bool:
        return step >= start and (step - start) % n == 0

    schedule.__qualname__ = f"every({n}, start={start})"
    schedule.period = n  # type: ignore[attr-defined]  # the nominal cadence, for the budget's floor
    return schedule


def log_spaced(per_decade: int = 10, *, start: int = 0, max_period: int | None = None) -> Schedule:
    """Return a schedule dense early and sparse late: ~``per_decade`` measurements per decade of steps.

    Early training changes fastest, so a logarithmic grid spends the measurement budget where the
    spectra move. ``max_period`` bounds the gap late in long runs (then it degrades to ``every``).

    Raises:
        ValueError: if ``per_decade < 1`` or ``max_period < 1``.
    """
    if per_decade < 1:
        raise ValueError(f"Invalid per_decade: {per_decade} (must be >= 1)")
    if max_period is not None and max_period < 1:
        raise ValueError(f"Invalid max_period: {max_period} (must be >= 1)")
    ratio = 10.0 ** (1.0 / per_decade)

    def schedule(step: int) -> bool:
        k = step - start
        if k < 0:
            return False
        if k <= per_decade:  # the grid is denser than one per step here: measure every step
            return True
        if max_period is not None and k % max_period == 0:
            return True
        # k is on the grid when k == round(ratio**j) for some integer j.
        j0 = round(math.log(k) / math.log(ratio))
        return any(round(ratio**j) == k for j in (j0 - 1, j0, j0 + 1))

    schedule.__qualname__ = f"log_spaced({per_decade}, start={start}, max_period={max_period})"
    return schedule


def never(step: int) -> bool:
    """A schedule that never measures (turns a diagnostic off)."""
    return False


def as_schedule(value: int | Schedule | None) -> Schedule:
    """Normalise a user option: an int ``n`` → ``every(n)``, ``None`` or ``0`` → ``never``."""
    if value is None or value == 0:
        return never
    if isinstance(value, bool):
        raise TypeError("a schedule must be an int period or a callable, not a bool")
    if isinstance(value, int):
        return every(value)
    if callable(value):
        return value
    raise TypeError(f"a schedule must be an int period or a callable step -> bool, got {type(value).__name__}")


def period_of(schedule: Schedule) -> int | None:
    """The nominal period of ``schedule`` if it declares one (``every`` does), else ``None``."""
    period = getattr(schedule, "period", None)
    return period if isinstance(period, int) and period >= 1 else None
