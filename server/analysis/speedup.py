"""Speedup = baseline ÷ run (> 1 is faster), and a bootstrap 95 % interval over seeds.

Why a bootstrap: with 3–5 seeds per group nothing about the distribution of steps-to-target is known,
and the quantity of interest is a *ratio of means*, whose sampling distribution is skewed. The BCa
bootstrap (``scipy.stats.bootstrap``) corrects for that skew and bias; it is resampled over seeds,
jointly ("paired") when both groups ran the same seeds — a seed that is hard for one optimizer (a bad
init, an unlucky data order) is usually hard for the other, and pairing removes that shared part.
The generator is a seeded ``numpy.random.Generator`` passed in by the caller: the same request gives
the same interval, and no global RNG is touched.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

__all__ = ["Verdict", "SpeedupCI", "speedup_ratio", "bootstrap_speedup", "NO_DIFFERENCE"]

NO_DIFFERENCE = "no difference at this n"
Verdict = Literal["faster", "slower", "no difference at this n", "one seed: no interval", "not reached",
                  "baseline"]


def speedup_ratio(baseline: Any, value: Any) -> float | None:
    """baseline ÷ value for two positive numbers, None when either is missing (one run did not reach)."""
    ok = (isinstance(baseline, (int, float)) and isinstance(value, (int, float)) and value > 0
          and math.isfinite(float(baseline)) and math.isfinite(float(value)))
    return float(baseline) / float(value) if ok else None


@dataclass(frozen=True)
class SpeedupCI:
    """A speedup with its interval; ``low``/``high`` are None when one side has fewer than 2 values."""

    ratio: float | None
    low: float | None
    high: float | None
    n: int  # values of the run's group used
    n_baseline: int
    paired: bool
    verdict: Verdict

    def as_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "ci_low": self.low, "ci_high": self.high, "n": self.n,
                "n_baseline": self.n_baseline, "paired": self.paired, "verdict": self.verdict}


def _clean(values: Mapping[Any, float | None]) -> dict[Any, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v)) and v > 0}


def _ratio_of_means(base: np.ndarray, run: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(base, axis=axis) / np.mean(run, axis=axis)


def bootstrap_speedup(
    baseline: Mapping[Any, float | None], run: Mapping[Any, float | None], *, rng: np.random.Generator,
    n_resamples: int = 2000, level: float = 0.95,
) -> SpeedupCI:
    """mean(baseline) ÷ mean(run) over seeds, with a BCa bootstrap interval at ``level``.

    ``baseline`` and ``run`` map seed -> measurement (steps, seconds, samples); missing, non-finite or
    non-positive values (a run that did not reach the target) are left out. When at least two seeds are
    in both, only those are used and resampled as pairs; otherwise the groups are resampled apart.
    """
    b, r = _clean(baseline), _clean(run)
    if not b or not r:
        return SpeedupCI(None, None, None, len(r), len(b), False, "not reached")
    common = [k for k in r if k in b and k is not None]
    paired = len(common) >= 2
    if paired:
        bv = np.array([b[k] for k in common])
        rv = np.array([r[k] for k in common])
    else:
        bv, rv = np.array(list(b.values())), np.array(list(r.values()))
    ratio = float(_ratio_of_means(bv, rv))
    if len(bv) < 2 or len(rv) < 2:
        return SpeedupCI(ratio, None, None, len(rv), len(bv), False, "one seed: no interval")
    low, high = _interval(bv, rv, paired=paired, rng=rng, n_resamples=n_resamples, level=level, ratio=ratio)
    verdict: Verdict = NO_DIFFERENCE if low <= 1.0 <= high else ("faster" if low > 1.0 else "slower")  # type: ignore[assignment]
    return SpeedupCI(ratio, low, high, len(rv), len(bv), paired, verdict)


def _interval(bv: np.ndarray, rv: np.ndarray, *, paired: bool, rng: np.random.Generator, n_resamples: int,
              level: float, ratio: float) -> tuple[float, float]:
    """BCa, falling back to the percentile interval where BCa is undefined (a degenerate bootstrap
    distribution, e.g. identical groups, where every resample gives the same ratio)."""
    if np.ptp(bv) == 0 and np.ptp(rv) == 0:
        return ratio, ratio
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DegenerateDataWarning: handled by the fallback below
        res = stats.bootstrap((bv, rv), _ratio_of_means, paired=paired, vectorized=True, axis=-1,
                              n_resamples=n_resamples, confidence_level=level, method="BCa", rng=rng)
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        dist = np.asarray(res.bootstrap_distribution)
        dist = dist[np.isfinite(dist)]
        if not len(dist):
            return ratio, ratio
        alpha = (1.0 - level) / 2
        low, high = (float(q) for q in np.quantile(dist, [alpha, 1.0 - alpha]))
    return min(low, ratio), max(high, ratio)
