"""Cadence schedules."""

from __future__ import annotations

import pytest

from probe.diagnostics.schedule import as_schedule, every, log_spaced, never


def test_every_with_start() -> None:
    assert [s for s in range(12) if every(4, start=2)(s)] == [2, 6, 10]
    with pytest.raises(ValueError):
        every(0)


def test_log_spaced_is_dense_early_and_sparse_late() -> None:
    sched = log_spaced(4)
    steps = [s for s in range(10_001) if sched(s)]
    assert steps[:5] == [0, 1, 2, 3, 4]
    assert 100 in steps and 1000 in steps and 10_000 in steps
    assert len([s for s in steps if 1000 < s <= 10_000]) == 4  # ~per_decade points per decade


def test_log_spaced_max_period_bounds_the_gap() -> None:
    sched = log_spaced(2, max_period=500)
    steps = [s for s in range(5000, 10_000) if sched(s)]
    assert steps and max(b - a for a, b in zip(steps, steps[1:])) <= 500


def test_as_schedule_accepts_ints_callables_and_none() -> None:
    assert as_schedule(3)(6) and not as_schedule(3)(7)
    assert as_schedule(None) is never and as_schedule(0) is never
    assert as_schedule(lambda s: s == 5)(5)
    with pytest.raises(TypeError):
        as_schedule(True)
