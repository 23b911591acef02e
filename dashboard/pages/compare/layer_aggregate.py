"""Aggregates over layers for the compare page's per-layer section: at each logged step, the median
or the max (the worst layer) over the layers that logged the diagnostic at that step; past the point
budget, over step ranges instead of exact steps (``bins``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

__all__ = ["AGG_MAX", "AGG_MEDIAN", "aggregate"]

AGG_MEDIAN = "~median"
AGG_MAX = "~max"


def aggregate(per_layer: Sequence[tuple[Sequence[int], Sequence[float]]], agg: str, *,
              max_steps: int | None = None) -> tuple[list[int], list[float]]:
    """(steps, value) of the median or max over layers at each step any layer logged, over the layers
    with a finite value there (a layer logging every 25 steps does not blank the others' steps).

    ``max_steps``: the points asked per series. More distinct steps than that means the series were
    downsampled on the server (see :data:`LAYER_POINT_BUDGET`) and the layers' points no longer share
    steps, so the steps are split into ``max_steps // 2`` equal ranges (the downsampling keeps a min
    and a max per range) and each layer contributes its mean (median) or max (max) over a range. A
    range's step is the mean of the steps in it."""
    rows = [(np.asarray(st, dtype=np.int64), np.asarray(ys, dtype=float)) for st, ys in per_layer]
    rows = [(st, ys) for st, ys in rows if len(st)]
    if not rows:
        return [], []
    all_steps = np.concatenate([st for st, _ in rows])
    steps = np.unique(all_steps)
    if max_steps is not None and len(steps) > max_steps:
        return _binned(rows, agg, max(2, max_steps // 2))
    grid = np.full((len(rows), len(steps)), np.nan)
    for row, (st, ys) in enumerate(rows):
        grid[row, np.searchsorted(steps, st)] = ys
    return [int(s) for s in steps], _over_layers(grid, agg)


def _over_layers(grid: np.ndarray, agg: str) -> list[float]:
    grid = np.where(np.isfinite(grid), grid, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step where no layer has a finite value
        vals = np.nanmax(grid, axis=0) if agg == AGG_MAX else np.nanmedian(grid, axis=0)
    return [float(v) for v in vals]


def _binned(rows: Sequence[tuple[np.ndarray, np.ndarray]], agg: str, bins: int) -> tuple[list[int], list[float]]:
    """The binned aggregate (see :func:`aggregate`); a layer without a point in a range, but logged on
    both sides of it, contributes its value interpolated at the range's middle (so the median is
    always over the same layers, not over whichever happened to keep a point there)."""
    lo = min(int(st.min()) for st, _ in rows)
    hi = max(int(st.max()) for st, _ in rows)
    edges = np.linspace(lo, hi + 1, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    grid = np.full((len(rows), bins), np.nan)
    step_sum, step_n = np.zeros(bins), np.zeros(bins)
    for row, (st, ys) in enumerate(rows):
        which = np.clip(np.searchsorted(edges, st, side="right") - 1, 0, bins - 1)
        np.add.at(step_sum, which, st)
        np.add.at(step_n, which, 1)
        finite = np.isfinite(ys)
        w, y = which[finite], ys[finite]
        if agg == AGG_MAX:
            cell = np.full(bins, -np.inf)
            np.maximum.at(cell, w, y)
            got = np.isfinite(cell)
        else:
            total, count = np.zeros(bins), np.zeros(bins)
            np.add.at(total, w, y)
            np.add.at(count, w, 1)
            got = count > 0
            cell = np.divide(total, count, out=np.full(bins, np.nan), where=got)
        if finite.any():
            fs = st[finite]
            inside = (centres >= fs.min()) & (centres <= fs.max()) & ~got
            cell = np.where(inside, np.interp(centres, fs, y), cell)
            got = got | inside
        grid[row] = np.where(got, cell, np.nan)
    keep = step_n > 0
    steps = np.rint(step_sum[keep] / step_n[keep]).astype(np.int64)
    return [int(s) for s in steps], _over_layers(grid[:, keep], agg)
