"""Where one run first crossed a target, and the interval the logging cadence leaves open.

A metric evaluated every 25 steps that is first at the target at step 149 crossed it somewhere after the
previous evaluation (step 124): the measurement is "125–149", not "149". Speedups between runs whose
crossings are within one evaluation interval of each other are noise of the cadence, so the interval
is kept next to every crossing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from server.analysis.groups import RunData, SeriesLike

__all__ = ["Direction", "Crossing", "first_crossing", "run_crossing", "value_at_step", "SAMPLES_KEY"]

Direction = Literal["below", "above"]
SAMPLES_KEY = "samples_seen"


def first_crossing(values: np.ndarray, target: float, direction: str) -> int | None:
    """Index of the first value at or past ``target`` (NaN never crosses), or None."""
    with np.errstate(invalid="ignore"):
        hit = values <= target if direction == "below" else values >= target
    idx = np.flatnonzero(hit)
    return int(idx[0]) if len(idx) else None


def value_at_step(series: SeriesLike | None, step: float) -> float | None:
    """The value of the last point at or before ``step`` (None before the first point)."""
    if series is None or len(series.steps) == 0:
        return None
    i = int(np.searchsorted(series.steps, step, side="right")) - 1
    return None if i < 0 else float(series.values[i])


@dataclass(frozen=True)
class Crossing:
    """One run's first crossing. ``*_lo`` is where the previous evaluation was (exclusive): the true
    crossing lies in ``(step_lo - 1, step]`` steps, ``(time_lo_s, time_s]`` seconds."""

    run_id: str
    name: str
    seed: object
    reached: bool
    step: int | None = None
    step_lo: int | None = None
    time_s: float | None = None
    time_lo_s: float | None = None
    samples: float | None = None
    samples_lo: float | None = None
    interval: int | None = None  # steps between the evaluations around the crossing (the resolution)
    final: float | None = None  # last value of the metric (shows how close a run that missed came)

    @property
    def resolution(self) -> str | None:
        """``"125–149"``: the steps the crossing may have happened at."""
        if self.step is None or self.step_lo is None:
            return None
        return str(self.step) if self.step_lo >= self.step else f"{self.step_lo}–{self.step}"


def run_crossing(run: RunData, key: str, target: float, direction: str) -> Crossing:
    """First crossing of ``target`` by the run's ``key`` on its raw points.

    Wall time is counted from the run's first logged point of any key (``run.first_time``), so time
    spent before the first evaluation (data loading, compilation) is part of it, as a user feels it.
    """
    series = run.series.get(key)
    base = Crossing(run_id=run.id, name=run.name, seed=run.seed, reached=False)
    if series is None or len(series.steps) == 0:
        return base
    finite = series.values[np.isfinite(series.values)]
    final = float(finite[-1]) if len(finite) else None
    i = first_crossing(series.values, target, direction)
    if i is None:
        return Crossing(run_id=run.id, name=run.name, seed=run.seed, reached=False, final=final)
    step = int(series.steps[i])
    step_lo = int(series.steps[i - 1]) + 1 if i > 0 else 0
    interval = step - int(series.steps[i - 1]) if i > 0 else (
        int(series.steps[1] - series.steps[0]) if len(series.steps) > 1 else None)
    time_s = time_lo = None
    t0 = run.first_time
    if t0 is not None and math.isfinite(t0) and len(series.times) == len(series.steps):
        t = float(series.times[i])
        time_s = t - t0 if math.isfinite(t) else None
        if i > 0 and math.isfinite(float(series.times[i - 1])):
            time_lo = float(series.times[i - 1]) - t0
        elif i == 0:
            time_lo = 0.0
    samples = value_at_step(run.series.get(SAMPLES_KEY), step)
    samples_lo = value_at_step(run.series.get(SAMPLES_KEY), step_lo) if i > 0 else 0.0
    return Crossing(run_id=run.id, name=run.name, seed=run.seed, reached=True, step=step, step_lo=step_lo,
                    time_s=time_s, time_lo_s=time_lo, samples=samples, samples_lo=samples_lo,
                    interval=interval, final=final)
