"""Spike-preserving downsampling of one series.

MinMax (tsdownsample, Rust) keeps the minimum and the maximum of every bucket, so a single-point
spike always survives — LTTB alone can drop it. Non-finite points are data: tsdownsample would
ignore or mangle them, so the finite points are downsampled on their own and the first and last
point of every run of NaN/+Inf/-Inf are added back (a divergence stays visible, and 500k NaNs
after a blow-up do not flood the chart).
"""

from __future__ import annotations

import numpy as np
from tsdownsample import MinMaxDownsampler

_MINMAX = MinMaxDownsampler()


def _minmax(y: np.ndarray, n_out: int) -> np.ndarray:
    n_out = max(4, n_out - (n_out % 2))
    if len(y) <= n_out:
        return np.arange(len(y), dtype=np.int64)
    return np.asarray(_MINMAX.downsample(np.ascontiguousarray(y), n_out=n_out), dtype=np.int64)


def _nonfinite_run_ends(y: np.ndarray) -> np.ndarray:
    code = np.zeros(len(y), dtype=np.int8)
    code[np.isnan(y)] = 1
    code[np.isposinf(y)] = 2
    code[np.isneginf(y)] = 3
    change = np.flatnonzero(np.diff(code)) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change - 1, [len(y) - 1]))
    keep = code[starts] != 0
    return np.unique(np.concatenate((starts[keep], ends[keep])))


def downsample_indices(y: np.ndarray, n_out: int) -> np.ndarray:
    """Sorted indices of ``y`` to keep: about ``n_out`` of them, always including every spike
    (bucket min/max), the first and last point, and the ends of every non-finite run."""
    n = len(y)
    if n <= n_out:
        return np.arange(n, dtype=np.int64)
    finite = np.isfinite(y)
    if finite.all():
        idx = _minmax(y, n_out)
    else:
        fidx = np.flatnonzero(finite)
        bad = _nonfinite_run_ends(y)
        if len(bad) > n_out // 2:  # pathological alternation: thin evenly, keep the ends
            bad = bad[np.unique(np.linspace(0, len(bad) - 1, n_out // 2).round().astype(np.int64))]
        budget = max(4, n_out - len(bad))
        idx = np.concatenate((fidx[_minmax(y[fidx], budget)], bad))
    return np.unique(np.concatenate((idx, [0, n - 1])))
