"""Pure builders: already-fetched data -> ``go.Figure``.

Every figure has a title, axis titles with units, a legend when it has more than one trace, and a
readable empty state that says how to get the data. No I/O here: pages fetch through ``api.py``,
shape with ``series.py`` and call these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .series import ema

TEMPLATE = "plotly_white"
HEIGHT = 320
# A qualitative palette long enough for the 20-run compare page without repeating colours.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#8c6d31", "#843c39", "#7b4173",
    "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363", "#6baed6", "#fd8d3c", "#74c476",
)
NONFINITE_COLOR = "#d62728"


def color(i: int) -> str:
    """The i-th colour, stable across figures so a run keeps its colour on the compare page."""
    return PALETTE[i % len(PALETTE)]


@dataclass(slots=True)
class Line:
    """One curve: ``x``/``y`` floats (NaN/Inf allowed: they are marked, not dropped)."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    color: str | None = None
    steps: Sequence[int] = field(default_factory=list)


def _base(fig: go.Figure, title: str, x_title: str, y_title: str, *, uirevision: str | None, height: int) -> go.Figure:
    fig.update_layout(
        template=TEMPLATE,
        title={"text": _esc(title), "x": 0.01, "xanchor": "left", "y": 0.985, "yanchor": "top", "yref": "container"},
        xaxis_title=_esc(x_title),
        yaxis_title=_esc(y_title),
        height=height,
        margin={"l": 60, "r": 20, "t": 72, "b": 48},
        # the legend sits in its own row between the title and the plot, so long run names never
        # cover the title
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.01, "xanchor": "left", "x": 0.0},
        uirevision=uirevision,
        hovermode="closest",
    )
    return fig


def empty_figure(title: str, message: str, *, height: int = HEIGHT) -> go.Figure:
    """A blank chart that says why it is blank and what to do about it."""
    fig = go.Figure()
    _base(fig, title, "", "", uirevision=None, height=height)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.add_annotation(
        text=_esc(message), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
        font={"size": 14, "color": "#555"}, align="center",
    )
    fig.update_layout(meta={"empty": True})
    return fig


def is_empty(fig: go.Figure | dict) -> bool:
    """True for figures made by :func:`empty_figure` (tests and pages ask)."""
    layout = fig["layout"] if isinstance(fig, dict) else fig.layout
    meta = layout["meta"] if isinstance(fig, dict) and "meta" in layout else getattr(layout, "meta", None)
    return bool(meta) and isinstance(meta, dict) and bool(meta.get("empty"))


def _nonfinite(x: Sequence[float], y: Sequence[float]) -> tuple[list[float], list[str]]:
    xs, labels = [], []
    for xv, yv in zip(x, y):
        if not math.isfinite(yv):
            xs.append(xv)
            labels.append("NaN" if math.isnan(yv) else ("+Inf" if yv > 0 else "-Inf"))
    return xs, labels


def line_figure(
    lines: Sequence[Line],
    *,
    title: str,
    x_title: str,
    y_title: str,
    log_y: bool = False,
    smoothing: float = 0.0,
    uirevision: str | None = None,
    empty_message: str = "no data logged yet",
    height: int = HEIGHT,
) -> go.Figure:
    """Lines over a common x axis, with optional EMA smoothing and marked non-finite points.

    Trace layout is fixed so the live page can ``Patch`` by index: for line i the raw trace is
    ``2*i``, the smoothed trace ``2*i+1`` (empty when smoothing is off), and the last trace holds
    the non-finite markers of all lines (pinned to the top of the plot, hover says NaN/Inf).
    """
    if not any(len(line.y) for line in lines):
        return empty_figure(title, empty_message, height=height)
    fig = go.Figure()
    smooth = smoothing > 0
    bad_x: list[float] = []
    bad_text: list[str] = []
    for i, line in enumerate(lines):
        c = line.color or color(i)
        fig.add_trace(
            go.Scatter(
                x=list(line.x), y=list(line.y), name=_esc(line.name), mode="lines", legendgroup=line.name,
                line={"color": c, "width": 1.5}, opacity=0.3 if smooth else 1.0,
                showlegend=not smooth,
                hovertemplate=f"{_esc(line.name)}<br>x=%{{x}}<br>y=%{{y:.4g}}<extra></extra>",
            )
        )
        smoothed = ema(line.y, smoothing)[0] if smooth else []
        fig.add_trace(
            go.Scatter(
                x=list(line.x) if smooth else [], y=smoothed, name=_esc(line.name), mode="lines",
                legendgroup=line.name, line={"color": c, "width": 2}, showlegend=smooth,
                hovertemplate=f"{_esc(line.name)} (EMA {smoothing:g})<br>x=%{{x}}<br>y=%{{y:.4g}}<extra></extra>",
            )
        )
        xs, labels = _nonfinite(line.x, line.y)
        bad_x += xs
        bad_text += [f"{_esc(line.name)}: {label}" for label in labels]
    fig.add_trace(
        go.Scatter(
            x=bad_x, y=[1.0] * len(bad_x), yaxis="y2", mode="markers", name="non-finite (NaN/Inf)",
            marker={"symbol": "x", "color": NONFINITE_COLOR, "size": 9}, text=bad_text,
            hovertemplate="x=%{x}<br>%{text}<extra></extra>", showlegend=bool(bad_x),
        )
    )
    _base(fig, title, x_title, y_title, uirevision=uirevision, height=height)
    fig.update_layout(yaxis2={"overlaying": "y", "range": [0, 1.05], "visible": False, "fixedrange": True})
    if log_y:
        fig.update_layout(yaxis_type="log")
    if len(lines) == 1 and not smooth and not bad_x:
        fig.update_layout(showlegend=False)
    return fig


def _log10(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(values)
    out[~np.isfinite(out)] = np.nan
    return out


def heatmap_figure(
    x: Sequence[float],
    y: Sequence[str | float],
    z: Sequence[Sequence[float | None]],
    *,
    title: str,
    x_title: str,
    y_title: str,
    colorbar_title: str,
    log_color: bool = False,
    uirevision: str | None = None,
    empty_message: str = "no data logged yet",
    height: int = HEIGHT,
    reverse_y: bool = False,
) -> go.Figure:
    """A heatmap (step x index, or layer x step). ``log_color`` colours by log10 so a spectrum
    spanning 1e-6..1e2 is readable; the colour bar says so and the hover shows the real value."""
    if len(z) == 0 or len(x) == 0:
        return empty_figure(title, empty_message, height=height)
    zz = np.array([[np.nan if v is None else v for v in row] for row in z], dtype=float)
    shown = _log10(zz) if log_color else zz
    hover_val = "%{customdata:.4g}" if log_color else "%{z:.4g}"
    fig = go.Figure(
        go.Heatmap(
            x=list(x), y=list(y), z=np.round(shown, 5).tolist(),
            customdata=np.round(zz, 6).tolist() if log_color else None,
            colorscale="Viridis",
            colorbar={"title": {"text": (f"log10 {colorbar_title}" if log_color else colorbar_title)}},
            hovertemplate=f"{x_title}=%{{x}}<br>{y_title}=%{{y}}<br>value={hover_val}<extra></extra>",
            hoverongaps=False,
            name=colorbar_title,
            showscale=True,
        )
    )
    _base(fig, title, x_title, y_title, uirevision=uirevision, height=height)
    if len(y) and isinstance(y[0], str):
        # layers top-down in model order, as they appear in named_parameters()
        fig.update_yaxes(type="category", automargin=True, autorange="reversed")
    elif reverse_y:
        fig.update_yaxes(autorange="reversed")
    return fig


def spectrum_figure(
    spectra: Sequence[tuple[str, Sequence[float]]],
    *,
    title: str,
    log_y: bool = True,
    y_title: str = "singular value σᵢ",
    x_title: str = "index i (descending σ)",
    empty_message: str = "no spectra logged yet",
    uirevision: str | None = None,
    height: int = HEIGHT,
) -> go.Figure:
    """Overlaid spectra (one per source or per run) against the singular-value index."""
    lines = [Line(name, list(range(1, len(values) + 1)), values) for name, values in spectra]
    fig = line_figure(
        lines, title=title, x_title=x_title, y_title=y_title, log_y=log_y,
        empty_message=empty_message, uirevision=uirevision, height=height,
    )
    if not is_empty(fig) and len(lines) > 1:
        fig.update_layout(showlegend=True)
    fig.update_traces(mode="lines+markers", marker={"size": 3}, selector={"mode": "lines"})
    return fig


def distribution_figure(
    dists: Sequence[tuple[str, Sequence[float]]],
    *,
    title: str,
    x_title: str,
    mode: str = "hist",
    log_x: bool = False,
    empty_message: str = "no distribution logged yet",
    uirevision: str | None = None,
    height: int = HEIGHT,
) -> go.Figure:
    """Distributions of per-neuron values, overlaid across sources or runs.

    ``hist``: probability-normalised overlaid histograms (runs with different widths stay
    comparable); ``ecdf``: cumulative curves, readable even with 20 runs overlaid; ``box``: one box
    per run side by side. Non-finite values are counted in the legend, not silently dropped.
    """
    dists = [(name, np.asarray(v, dtype=float)) for name, v in dists]
    if not any(v.size for _, v in dists):
        return empty_figure(title, empty_message, height=height)
    fig = go.Figure()
    y_title = {"hist": "fraction of neurons", "ecdf": "fraction of neurons ≤ x", "box": x_title}[mode]
    for i, (name, v) in enumerate(dists):
        finite = v[np.isfinite(v)]
        bad = int(v.size - finite.size)
        label = _esc(f"{name} ({bad} non-finite)" if bad else name)
        vals = _log10(finite) if log_x else finite
        if mode == "hist":
            fig.add_trace(go.Histogram(x=vals.tolist(), name=label, histnorm="probability", opacity=0.55,
                                       marker_color=color(i), nbinsx=50))
        elif mode == "ecdf":
            s = np.sort(vals)
            fig.add_trace(go.Scatter(x=s.tolist(), y=(np.arange(1, s.size + 1) / max(s.size, 1)).tolist(),
                                     name=label, mode="lines", line={"color": color(i)}))
        elif mode == "box":
            fig.add_trace(go.Box(y=vals.tolist(), name=label, marker_color=color(i), boxpoints=False))
        else:
            raise ValueError(f"unknown mode {mode!r}")
    shown_x = f"log10 {x_title}" if log_x else x_title
    if mode == "box":
        _base(fig, title, "run", f"log10 {x_title}" if log_x else x_title, uirevision=uirevision, height=height)
    else:
        _base(fig, title, shown_x, y_title, uirevision=uirevision, height=height)
    fig.update_layout(barmode="overlay", showlegend=True)
    return fig


def bar_figure(
    x: Sequence[float | str],
    y: Sequence[float],
    *,
    title: str,
    x_title: str,
    y_title: str,
    name: str = "",
    empty_message: str = "no data logged yet",
    height: int = HEIGHT,
) -> go.Figure:
    """Bars (per epoch, per class)."""
    if not len(y):
        return empty_figure(title, empty_message, height=height)
    fig = go.Figure(go.Bar(x=list(x), y=list(y), name=name or y_title, marker_color=color(0)))
    _base(fig, title, x_title, y_title, uirevision=None, height=height)
    fig.update_layout(showlegend=False)
    return fig


def small_multiples(
    panels: Sequence[tuple[str, Sequence[tuple[str, Sequence[float]]]]],
    *,
    title: str,
    x_title: str,
    y_title: str,
    log_y: bool = True,
    cols: int = 4,
    empty_message: str = "no data at this step",
    height_per_row: int = 220,
) -> go.Figure:
    """A grid of small line charts sharing axes: e.g. one spectrum per run at a matched step.
    Each panel is (panel title, [(trace name, values)]) with x = index."""
    panels = [p for p in panels if any(len(v) for _, v in p[1])]
    if not panels:
        return empty_figure(title, empty_message)
    cols = max(1, min(cols, len(panels)))
    rows = math.ceil(len(panels) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[_esc(p[0]) for p in panels], shared_yaxes=True,
                        horizontal_spacing=0.03, vertical_spacing=min(0.12, 0.5 / rows))
    names_seen: set[str] = set()
    for k, (_, traces) in enumerate(panels):
        r, c = divmod(k, cols)
        for j, (name, values) in enumerate(traces):
            fig.add_trace(
                go.Scatter(x=list(range(1, len(values) + 1)), y=list(values), mode="lines", name=_esc(name),
                           legendgroup=name, showlegend=name not in names_seen, line={"color": color(j)}),
                row=r + 1, col=c + 1,
            )
            names_seen.add(name)
    _base(fig, title, "", "", uirevision=None, height=80 + rows * height_per_row)
    fig.update_xaxes(title_text=None)
    for c in range(1, cols + 1):
        fig.update_xaxes(title_text=x_title, row=rows, col=c)
    fig.update_yaxes(title_text=y_title, col=1)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def _esc(text: str) -> str:
    """Plotly renders a subset of HTML in hover templates and titles; user strings (run and layer
    names) are escaped so ``<script>`` or ``<b>`` shows as typed."""
    return (
        str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("%{", "%&#123;")
    )


def safe_text(text: str) -> str:
    """Public alias of the escaping used for user strings placed in figure titles or names."""
    return _esc(text)
