"""Numeric shaping of series between the API and the figures: smoothing, x-axis choices and the
layer x step grids. Pure numpy, no I/O, so every rule here is tested directly.
"""

from __future__ import annotations

import math
import warnings
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


def layer_grid(series_by_layer: Mapping[str, tuple[Sequence[float], Sequence[float]]], bins: int, *,
               agg: str = "max") -> Grid:
    """Put each layer's (steps, values) onto one common set of step columns.

    Columns follow the steps actually logged: with at most ``bins`` distinct steps each column is one
    logged step; with more, each column holds an equal share of the distinct steps (so no column is
    empty for a layer that logs at every cadence step). A fixed split of the step range into 200
    bins left ~180 of 200 columns blank for a quantity logged every 25 steps (a barcode).

    The server downsamples each series on its own (min/max buckets), so layers' steps may differ: a
    column a layer skipped inside its logged range is forward-filled from its previous column.
    ``agg="max"`` keeps spikes (a condition number that explodes for one step must stay visible);
    NaN/Inf inside a column are ignored unless it has nothing else, in which case the cell is NaN.
    """
    layers = [name for name, (s, _) in series_by_layer.items() if len(s)]
    if not layers:
        return Grid([], [], [])
    distinct = np.unique(np.concatenate([np.asarray(series_by_layer[n][0], dtype=float) for n in layers]))
    n_cols = max(1, min(bins, distinct.size))
    # column k holds distinct[bounds[k]:bounds[k+1]]; its label is the last step it holds
    bounds = np.linspace(0, distinct.size, n_cols + 1).round().astype(int)
    col_of_distinct = np.repeat(np.arange(n_cols), np.diff(bounds))
    centres = [float(distinct[b - 1]) for b in bounds[1:]] if n_cols < distinct.size else distinct.tolist()
    z: list[list[float | None]] = []
    for name in layers:
        steps = np.asarray(series_by_layer[name][0], dtype=float)
        values = np.asarray(series_by_layer[name][1], dtype=float)
        idx = col_of_distinct[np.searchsorted(distinct, steps)]
        finite = np.isfinite(values)
        acc = np.full(n_cols, -np.inf)
        if agg == "max":
            np.maximum.at(acc, idx[finite], values[finite])
        elif agg == "last":
            acc[idx[finite]] = values[finite]  # later points overwrite earlier ones (sorted by step)
        else:
            raise ValueError(f"unknown agg {agg!r}")
        has_finite = np.zeros(n_cols, dtype=bool)
        has_finite[idx[finite]] = True
        has_any = np.zeros(n_cols, dtype=bool)
        has_any[idx] = True
        row: list[float | None] = [None] * n_cols
        first, last = int(idx.min()), int(idx.max())
        prev: float | None = None
        for b in range(first, last + 1):
            if has_finite[b]:
                prev = row[b] = float(acc[b])
            elif has_any[b]:
                prev = row[b] = float("nan")
            else:
                row[b] = prev  # skipped by this layer's downsampling: carry its last value
        z.append(row)
    return Grid(layers, centres, z)


def block_of(layer: str) -> str:
    """The block a layer belongs to: its name up to and including the first numeric part
    (``blocks.3.attn.qkv.weight`` -> ``blocks.3``); layers outside numbered blocks are their own
    top-level module (``embed.weight`` -> ``embed``)."""
    parts = layer.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return parts[0] if len(parts) > 1 else layer


def group_rows(grid: Grid, *, agg: str = "max") -> Grid:
    """Collapse a layer grid to one row per block (max or median over its layers), so a 200-matrix
    model is a readable ~30-row heatmap instead of a 3,000 px tall one."""
    order: dict[str, list[int]] = {}
    for i, layer in enumerate(grid.layers):
        order.setdefault(block_of(layer), []).append(i)
    z: list[list[float | None]] = []
    arr = np.array([[np.nan if v is None else v for v in row] for row in grid.z], dtype=float)
    for rows in order.values():
        sub = arr[rows]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            vals = np.nanmax(sub, axis=0) if agg == "max" else np.nanmedian(sub, axis=0)
        z.append([None if not np.isfinite(v) else float(v) for v in vals])
    return Grid([f"{b} ({len(r)})" for b, r in order.items()], list(grid.steps), z)


def split_layer_key(key: str) -> tuple[str, str | None]:
    """``"sv.weight.cond/fc1.weight"`` -> (``"sv.weight.cond"``, ``"fc1.weight"``); a quantity never
    contains ``/`` but a layer name may not either, so the first ``/`` splits."""
    quantity, sep, layer = key.partition("/")
    return quantity, (layer if sep else None)


def y_title(key: str) -> str:
    """Y-axis title of a scalar: the key itself, with the unit where the key implies one (never a
    bare "(value)")."""
    units = {"lr": "learning rate", "step_time": "seconds per step (s)", "probe.overhead": "probe time / step time",
             "grad_norm": "‖g‖₂", "samples_seen": "samples"}
    if key in units:
        return units[key]
    if key.startswith(("acc", "val_acc")):
        return f"{key} (fraction)"
    return key
