"""Seed-group charts: each group's mean curve with a band across its seeds, and its members on demand.

Why a band and not five lines per optimizer: with three optimizers × five seeds the overlay is fifteen
crossing lines, and the question a reader has — do the seeds of A and B overlap? — is answered by
whether two shaded bands overlap. The members are one toggle away for the run that misbehaves.

Members are aligned on the union of their x values (linear interpolation inside each member's own
range, nothing extrapolated), so seeds logged at slightly different steps — or wall-time axes, which
never coincide — still average point by point.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import plotly.graph_objects as go

from . import figures as F

__all__ = ["Band", "GroupCurve", "group_curve", "band_figure", "BAND_LABELS"]

Band = Literal["minmax", "ci"]
BAND_LABELS = {"minmax": "min–max across seeds", "ci": "95 % interval of the mean"}
MAX_GRID = 2000  # points per group curve; a chart is ~1,000 px wide


@dataclass
class GroupCurve:
    """A group's mean and band on a common x grid (NaN where no member has data)."""

    name: str
    x: list[float]
    mean: list[float]
    low: list[float]
    high: list[float]
    n: int
    color: str
    members: list[F.Line] = field(default_factory=list)


def _grid(lines: Sequence[F.Line]) -> np.ndarray:
    xs = [np.asarray(line.x, dtype=np.float64) for line in lines if len(line.x)]
    if not xs:
        return np.empty(0)
    grid = np.unique(np.concatenate(xs))
    grid = grid[np.isfinite(grid)]
    if len(grid) > MAX_GRID:
        grid = grid[np.linspace(0, len(grid) - 1, MAX_GRID).round().astype(int)]
    return grid


def _on_grid(line: F.Line, grid: np.ndarray) -> np.ndarray:
    x, y = np.asarray(line.x, dtype=np.float64), np.asarray(line.y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    out = np.full(len(grid), np.nan)
    if not ok.any():
        return out
    x, y = x[ok], y[ok]
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    inside = (grid >= x[0]) & (grid <= x[-1])
    out[inside] = np.interp(grid[inside], x, y)
    return out


def group_curve(name: str, members: Sequence[F.Line], *, band: Band, color: str) -> GroupCurve:
    """Mean of the members and the band: min–max, or mean ± t₀.₉₇₅ · sd/√n (n members with data at x)."""
    grid = _grid(members)
    if not len(grid):
        return GroupCurve(name, [], [], [], [], len(members), color, list(members))
    rows = np.vstack([_on_grid(line, grid) for line in members])
    count = np.isfinite(rows).sum(axis=0)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no member has data there
        mean = np.nanmean(rows, axis=0)
        if band == "minmax":
            low, high = np.nanmin(rows, axis=0), np.nanmax(rows, axis=0)
        else:
            # Imported here: scipy.stats costs ~1.2 s (several on a busy machine) that every
            # `optiscope serve` start paid, for the first group band drawn, if any.
            from scipy import stats

            sd = np.nanstd(rows, axis=0, ddof=1)
            t = stats.t.ppf(0.975, np.maximum(count - 1, 1))
            half = np.where(count >= 2, t * sd / np.sqrt(np.maximum(count, 1)), 0.0)
            low, high = mean - half, mean + half
    return GroupCurve(name, grid.tolist(), mean.tolist(), low.tolist(), high.tolist(), len(members), color,
                      list(members))


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def band_figure(
    curves: Sequence[GroupCurve], *, title: str, x_title: str, y_title: str, band: Band, log_y: bool = False,
    smoothing: float = 0.0, show_members: bool = False, uirevision: str | None = None,
    empty_message: str = "no data logged yet",
) -> go.Figure:
    """The groups' mean lines (``figures.line_figure``, so they look like every other chart), a filled
    band under each (``fill="toself"`` polygon, class of trace ``meta="band"``), and thin member lines."""
    means = [F.Line(f"{c.name} (mean of {c.n})", c.x, c.mean, color=c.color) for c in curves]
    base = F.line_figure(means, title=title, x_title=x_title, y_title=y_title, log_y=log_y, smoothing=smoothing,
                         uirevision=uirevision, empty_message=empty_message, compact=True, live=False)
    if F.is_empty(base):
        return base
    bands = []
    for c in curves:
        x, lo, hi = np.asarray(c.x), np.asarray(c.low), np.asarray(c.high)
        ok = np.isfinite(lo) & np.isfinite(hi)
        if not ok.any():
            continue
        # float32 numpy, as the mean lines (``compact``): sent base64-encoded, not as JSON text
        bands.append({"type": "scatter", "x": np.concatenate([x[ok], x[ok][::-1]]).astype(np.float32),
                      "y": np.concatenate([hi[ok], lo[ok][::-1]]).astype(np.float32), "fill": "toself",
                      "fillcolor": _rgba(c.color, 0.18), "line": {"width": 0}, "mode": "lines",
                      "name": F.safe_text(f"{c.name}: {BAND_LABELS[band]}"), "legendgroup": F.safe_text(c.name),
                      "showlegend": False, "hoverinfo": "skip", "meta": "band"})
    members = []
    if show_members:
        for c in curves:
            for line in c.members:
                members.append({"type": "scatter", "x": np.asarray(line.x, dtype=np.float32),
                                "y": np.asarray(line.y, dtype=np.float32), "mode": "lines",
                                "name": F.safe_text(line.name), "legendgroup": F.safe_text(c.name),
                                "line": {"color": c.color, "width": 0.8}, "opacity": 0.45, "showlegend": False,
                                "meta": "member",
                                # named in the x-unified label like every other line, not "x=…"
                                "hovertemplate": f"{F.safe_text(line.name)}: %{{y:.4g}}<extra></extra>"})
    data, layout = base.parts()
    # unvalidated like every figure here: validating 20 member lines of 2,000 points cost ~0.8 s per chart
    return F.raw_figure([*bands, *data, *members], layout)
