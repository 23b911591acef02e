"""The group time-to-target table: per group the crossings of its seeds, mean ± spread, and the
speedup against the baseline group with a bootstrap interval, in steps, wall seconds and samples.

Steps and samples are machine-independent; wall time is not (trainings sharing a CPU slow each
other), which is why all three are kept: a step speedup that becomes no wall-clock speedup is the
cost of a more expensive optimizer step, and that is part of the answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.analysis.crossing import Crossing, run_crossing
from server.analysis.groups import Group
from server.analysis.speedup import SpeedupCI, bootstrap_speedup

__all__ = ["Spread", "GroupRow", "group_time_to_target"]

MEASURES = (("steps", "step"), ("time", "time_s"), ("samples", "samples"))


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (None below 2 values), min and max of the reached runs."""

    mean: float | None
    sd: float | None
    min: float | None
    max: float | None

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread:
        v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
        if not len(v):
            return cls(None, None, None, None)
        return cls(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else None, float(v.min()),
                   float(v.max()))


@dataclass(frozen=True)
class GroupRow:
    group: Group
    is_baseline: bool
    crossings: tuple[Crossing, ...]
    spreads: dict[str, Spread]  # "steps", "time", "samples", and "steps_lo" (start of the resolution)
    speedups: dict[str, SpeedupCI]  # "steps", "time", "samples"
    interval: int | None  # median evaluation interval around the crossings (the step resolution)

    @property
    def n(self) -> int:
        return self.group.n

    @property
    def n_reached(self) -> int:
        return sum(c.reached for c in self.crossings)

    def as_dict(self) -> dict[str, Any]:
        """The JSON row the API serves (flat columns first, so a table needs no unpacking)."""
        s, st = self.spreads, self.speedups
        row: dict[str, Any] = {
            "group": self.group.label, "values": dict(self.group.values), "baseline": self.is_baseline,
            "n": self.n, "n_reached": self.n_reached, "run_ids": self.group.run_ids,
            "seeds": [c.seed for c in self.crossings], "eval_interval": self.interval,
        }
        for name in ("steps", "time", "samples"):
            unit = "time_s" if name == "time" else name
            row[f"{unit}_mean"], row[f"{unit}_sd"] = s[name].mean, s[name].sd
            row[f"{unit}_min"], row[f"{unit}_max"] = s[name].min, s[name].max
            ci = st[name]
            row[f"speedup_{name}"], row[f"{name}_ci_low"], row[f"{name}_ci_high"] = ci.ratio, ci.low, ci.high
            row[f"{name}_verdict"] = ci.verdict
        row["steps_lo_mean"] = s["steps_lo"].mean
        row["paired"] = st["steps"].paired
        row["runs"] = [
            {"run_id": c.run_id, "name": c.name, "seed": c.seed, "reached": c.reached, "step": c.step,
             "step_lo": c.step_lo, "resolution": c.resolution, "time_s": c.time_s, "time_lo_s": c.time_lo_s,
             "samples_seen": c.samples, "interval": c.interval, "final": c.final}
            for c in self.crossings
        ]
        return row


def group_time_to_target(
    groups: Sequence[Group], baseline: Group, *, key: str, target: float, direction: str,
    rng: np.random.Generator, n_resamples: int = 2000,
) -> list[GroupRow]:
    """One row per group (the baseline's own row included, speedup 1 by construction).

    Seeds pair across groups by the config ``seed`` value; a run without a seed is unpaired.
    """
    crossings = {g.label: tuple(run_crossing(r, key, target, direction) for r in g.runs) for g in groups}
    if baseline.label not in crossings:
        crossings[baseline.label] = tuple(run_crossing(r, key, target, direction) for r in baseline.runs)
    base = crossings[baseline.label]
    rows = []
    for g in groups:
        cs = crossings[g.label]
        spreads = {name: Spread.of([getattr(c, attr) for c in cs if c.reached]) for name, attr in MEASURES}
        spreads["steps_lo"] = Spread.of([c.step_lo for c in cs if c.reached])
        speedups = {}
        for name, attr in MEASURES:
            if g.label == baseline.label:  # against itself: 1 by definition, no interval to draw
                n = sum(c.reached and getattr(c, attr) is not None for c in cs)
                speedups[name] = SpeedupCI(1.0 if n else None, None, None, n, n, False, "baseline")
                continue
            speedups[name] = bootstrap_speedup(_by_seed(base, attr), _by_seed(cs, attr), rng=rng,
                                               n_resamples=n_resamples)
        intervals = [c.interval for c in cs if c.reached and c.interval is not None]
        interval = int(np.median(intervals)) if intervals else None
        rows.append(GroupRow(group=g, is_baseline=g.label == baseline.label, crossings=cs, spreads=spreads,
                             speedups=speedups, interval=interval))
    return rows


def _by_seed(crossings: Sequence[Crossing], attr: str) -> dict[Any, float | None]:
    """seed -> measurement; runs without a seed (or with a repeated one) get a key no other group has."""
    out: dict[Any, float | None] = {}
    for c in crossings:
        key: Any = ("run", c.run_id)
        if c.seed is not None and isinstance(c.seed, (int, float, str, bool)) and c.seed not in out:
            key = c.seed
        out[key] = getattr(c, attr) if c.reached else None
    return out
