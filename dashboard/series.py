"""Numeric shaping of series between the API and the figures: smoothing, x-axis choices and the
layer x step grids. Pure numpy, no I/O, so every rule here is tested directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

X_STEP = "step"
X_TIME = "time"
X_SAMPLES = "samples"
X_CHOICES = (X_STEP, X_TIME, X_SAMPLES)
X_TITLES = {
    X_STEP: "step",
    X_TIME: "wall time since run start (s)",
    X_SAMPLES: "samples seen",
}


def ema(values: Sequence[float], weight: float, *, state: tuple[float, int] | None = None) -> tuple[list[float], tuple[float, int]]:
    """TensorBoard-style debiased exponential moving average.

    Debiasing keeps the first points from being dragged towards 0. Non-finite values are shown as
    NaN gaps in the smoothed line but do not poison the average (a single NaN would otherwise turn
    every later smoothed point into NaN). ``state`` = (biased accumulator, count of finite points)
    lets the live page continue a curve from where the last poll stopped.
    """
    weight = float(min(max(weight, 0.0), 0.999))
    acc, n = state if state is not None else (0.0, 0)
    out: list[float] = []
    for v in values:
        v = float(v)
        if not np.isfinite(v):
            out.append(float("nan"))
            continue
        acc = acc * weight + (1.0 - weight) * v
        n += 1
        debias = 1.0 - weight**n if weight > 0 else 1.0
        out.append(_round_sig(acc / debias))
    return out, (acc, n)


def _round_sig(value: float, digits: int = 12) -> float:
    """Round to ``digits`` significant digits: the EMA of a constant must stay exactly constant, or
    plotly's autorange zooms into 1e-17 of floating-point noise (a flat lr drawn as a jagged line)."""
    if value == 0.0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def relative_time(times: Sequence[float], origin: float | None) -> list[float]:
    """Unix seconds -> seconds since ``origin`` (the run's first point): runs started on different
    days can then share one wall-time axis, as time-to-target does."""
    if origin is None:
        origin = float(times[0]) if len(times) else 0.0
    return [float(t) - origin for t in times]


def steps_to_samples(steps: Sequence[int], ref_steps: Sequence[int], ref_samples: Sequence[float]) -> list[float]:
    """Map steps onto the ``samples_seen`` axis by linear interpolation of the logged samples_seen.

    samples_seen is logged at its own cadence (every step, or per epoch for InfoBatch), so the x of
    another key is interpolated; beyond the last logged point it is extrapolated flat (unknown),
    and with no samples_seen at all the result is NaN (the page says so).
    """
    if len(ref_steps) == 0:
        return [float("nan")] * len(steps)
    rs = np.asarray(ref_steps, dtype=float)
    rv = np.asarray(ref_samples, dtype=float)
    ok = np.isfinite(rv)
    if not ok.any():
        return [float("nan")] * len(steps)
    order = np.argsort(rs[ok], kind="stable")
    return np.interp(np.asarray(steps, dtype=float), rs[ok][order], rv[ok][order]).tolist()


@dataclass(frozen=True, slots=True)
class Grid:
    """A layer x step matrix built from per-layer scalar series."""

    layers: list[str]
    steps: list[float]  # bin centres
    z: list[list[float | None]]  # rows = layers; None where a layer logged nothing in a bin


def layer_grid(series_by_layer: Mapping[str, tuple[Sequence[float], Sequence[float]]], bins: int, *, agg: str = "max") -> Grid:
    """Bin each layer's (steps, values) onto one common step grid.

    The server downsamples each series on its own (min/max buckets) so the layers' x values differ;
    a heatmap needs one column set. ``agg="max"`` keeps spikes (a condition number that explodes for
    one step must stay visible — the complaint about TensorBoard's reservoir sampling); NaN/Inf
    inside a bin are ignored unless the bin has nothing else, in which case the cell shows NaN.
    """
    layers = [name for name, (s, _) in series_by_layer.items() if len(s)]
    if not layers:
        return Grid([], [], [])
    lo = min(float(np.min(series_by_layer[name][0])) for name in layers)
    hi = max(float(np.max(series_by_layer[name][0])) for name in layers)
    bins = max(1, min(bins, int(hi - lo) + 1))
    edges = np.linspace(lo, hi + 1e-9, bins + 1)
    centres = ((edges[:-1] + edges[1:]) / 2).tolist()
    z: list[list[float | None]] = []
    for name in layers:
        steps = np.asarray(series_by_layer[name][0], dtype=float)
        values = np.asarray(series_by_layer[name][1], dtype=float)
        idx = np.clip(np.searchsorted(edges, steps, side="right") - 1, 0, bins - 1)
        row: list[float | None] = [None] * bins
        finite = np.isfinite(values)
        if agg == "max":
            acc = np.full(bins, -np.inf)
            np.maximum.at(acc, idx[finite], values[finite])
        elif agg == "last":
            acc = np.full(bins, -np.inf)
            acc[idx[finite]] = values[finite]  # later points overwrite earlier ones (sorted by step)
        else:
            raise ValueError(f"unknown agg {agg!r}")
        has_finite = np.zeros(bins, dtype=bool)
        has_finite[idx[finite]] = True
        has_any = np.zeros(bins, dtype=bool)
        has_any[idx] = True
        for b in range(bins):
            if has_finite[b]:
                row[b] = float(acc[b])
            elif has_any[b]:
                row[b] = float("nan")
        z.append(row)
    return Grid(layers, centres, z)


def split_layer_key(key: str) -> tuple[str, str | None]:
    """``"sv.weight.cond/fc1.weight"`` -> (``"sv.weight.cond"``, ``"fc1.weight"``); a quantity never
    contains ``/`` but a layer name may not either, so the first ``/`` splits."""
    quantity, sep, layer = key.partition("/")
    return quantity, (layer if sep else None)
