"""Pure builders: already-fetched data -> ``go.Figure``.

Every figure has a title, axis titles with units, a legend when it has more than one trace, and a
readable empty state that says how to get the data. No I/O here: pages fetch through ``api.py``,
shape with ``series.py`` and call these.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
from _plotly_utils.utils import to_typed_array_spec

from .series import ema

HEIGHT = 320
# A qualitative palette long enough for the 20-run compare page without repeating colours.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#8c6d31", "#843c39", "#7b4173",
    "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363", "#6baed6", "#fd8d3c", "#74c476",
)
NONFINITE_COLOR = "#d62728"


def color(i: int) -> str:
    """The i-th colour of a figure's own traces (sources, factors): not for runs, see ``colors.run_color``."""
    return PALETTE[i % len(PALETTE)]


@dataclass(slots=True)
class Line:
    """One curve: ``x``/``y`` floats (NaN/Inf allowed: they are marked, not dropped)."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    color: str | None = None
    steps: Sequence[int] = field(default_factory=list)
    dash: str | None = None


# plotly_white, spelled out: figures are built unvalidated (see _figure) so a template name would
# not be expanded, and the full template would add ~10 kB to every figure sent to the browser.
_AXIS = {"gridcolor": "#ebf0f8", "linecolor": "#c8d4e3", "zerolinecolor": "#ebf0f8", "automargin": True,
         "ticks": "", "showline": False}
_STYLE = {"paper_bgcolor": "white", "plot_bgcolor": "white", "font": {"color": "#2a3f5f", "size": 12},
          "colorway": list(PALETTE), "hoverlabel": {"align": "left"}}


class WireFigure(go.Figure):
    """A ``go.Figure`` whose JSON for the browser is built without copying the figure.

    Dash serialises a figure through ``to_plotly_json``, which for ``go.Figure`` is ``to_dict``: a
    ``deepcopy`` of every trace and then a walk of every list element looking for arrays to
    base64-encode, both in Python, per value. For the compare page's 20-run charts that was
    ~0.1 s of server time per page load. Here the figure's own dicts are copied shallowly and
    only numpy arrays are encoded (the builders send long vectors as numpy for that reason); a
    list is left as it is (orjson writes it).
    """

    def to_plotly_json(self) -> dict[str, Any]:
        return {"data": [_wire(trace) for trace in self._data], "layout": _wire(self._layout)}

    def parts(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The trace dicts and the layout dict as built, not copied: for a builder that adds traces
        to a figure another builder made (``group_figures.band_figure``)."""
        return list(self._data), self._layout


def _wire(obj: Any) -> Any:
    """``obj`` with numpy arrays as plotly.js typed-array specs; dicts copied, nothing else walked
    except lists of dicts (annotations, shapes)."""
    if isinstance(obj, dict):
        return {k: (v if k in _NOT_TYPED else _wire(v)) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_typed_array_spec(obj)
    if isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], dict):
        return [_wire(v) for v in obj]
    return obj


_NOT_TYPED = frozenset(("geojson", "layer", "layers", "range"))  # as plotly's convert_to_base64 skips


def raw_figure(data: list[dict[str, Any]], layout: dict[str, Any]) -> WireFigure:
    """Wrap plain dicts in a ``go.Figure`` without plotly's per-property validation.

    Validation costs ~100 ms for a 1,500-point line chart on the server (15x the build itself), paid
    on every callback; the builders here emit only known properties, and the tests read the result
    through the usual ``go.Figure`` attributes. The result is a :class:`WireFigure`.
    """
    return WireFigure({"data": data, "layout": layout}, _validate=False)


def _layout(title: str, x_title: str, y_title: str, *, uirevision: str | None, height: int, **extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        **_STYLE,
        "title": {"text": _esc(title), "x": 0.01, "xanchor": "left", "y": 0.985, "yanchor": "top", "yref": "container",
                  "font": {"size": 15}},
        "xaxis": {**_AXIS, "title": {"text": _esc(x_title)}},
        "yaxis": {**_AXIS, "title": {"text": _esc(y_title)}},
        "height": height,
        "margin": {"l": 60, "r": 20, "t": 72, "b": 48},
        # the legend sits in its own row between the title and the plot, so long run names never
        # cover the title
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.01, "xanchor": "left", "x": 0.0},
        "uirevision": uirevision,
        "hovermode": "closest",
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(layout.get(key), dict):
            layout[key] = {**layout[key], **value}
        else:
            layout[key] = value
    return layout


MANY_TRACES = 6
MAX_HEATMAP_HEIGHT = 720  # px: taller all-layer heatmaps are grouped by block or subset by the user


def rows_height(rows: int, *, per_row: int = 15) -> int:
    """Height of a layer x step heatmap: ~15 px per layer row, between 320 and 720 px."""
    return min(MAX_HEATMAP_HEIGHT, max(HEIGHT, 90 + per_row * rows))


def _side_legend(layout: dict[str, Any], entries: int) -> None:
    """Many entries (20 runs) would push the plot down from a legend row: move them to a scrolling
    column on the right instead."""
    if entries > MANY_TRACES:
        layout["legend"] = {"orientation": "v", "x": 1.01, "xanchor": "left", "y": 1.0, "yanchor": "top",
                            "font": {"size": 10}}
        layout["margin"] = {**layout["margin"], "r": 170, "t": 48}


def empty_figure(title: str, message: str, *, height: int = HEIGHT) -> WireFigure:
    """A blank chart that says why it is blank and what to do about it."""
    layout = _layout(title, "", "", uirevision=None, height=height, xaxis={"visible": False},
                     yaxis={"visible": False}, meta={"empty": True})
    layout["annotations"] = [{"text": _esc(message), "showarrow": False, "x": 0.5, "y": 0.5, "xref": "paper",
                              "yref": "paper", "font": {"size": 14, "color": "#555"}, "align": "center"}]
    return raw_figure([], layout)


def is_empty(fig: go.Figure | dict) -> bool:
    """True for figures made by :func:`empty_figure` (tests and pages ask)."""
    layout = fig["layout"] if isinstance(fig, dict) else fig.layout
    meta = layout.get("meta") if isinstance(layout, dict) else getattr(layout, "meta", None)
    return isinstance(meta, dict) and bool(meta.get("empty"))


def _nonfinite(x: Sequence[float], y: Sequence[float]) -> tuple[list[float], list[str]]:
    xs, labels = [], []
    for xv, yv in zip(x, y):
        if not math.isfinite(yv):
            xs.append(xv)
            labels.append("NaN" if math.isnan(yv) else ("+Inf" if yv > 0 else "-Inf"))
    return xs, labels


def marker_level(ys: Iterable[Sequence[float]]) -> float:
    """Where non-finite markers are drawn: the largest finite value (1.0 when there is none)."""
    best = -math.inf
    for y in ys:
        finite = [v for v in y if math.isfinite(v)]
        if finite:
            best = max(best, max(finite))
    return best if math.isfinite(best) else 1.0


def _f32(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def _floats(values: Sequence[float]) -> list[float]:
    return values if isinstance(values, list) else list(values)


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
    compact: bool = False,
    live: bool = True,
) -> WireFigure:
    """Lines over a common x axis, with optional EMA smoothing and marked non-finite points.

    ``compact`` sends x/y as float32 typed arrays (base64 on the wire, no text parsing in the
    browser) and ``live=False`` drops the empty placeholder traces: both for charts that are
    redrawn, never appended to — the live page's ``Patch`` extends plain lists at fixed indices.

    Trace layout is fixed so the live page can ``Patch`` by index: for line i the raw trace is
    ``2*i``, the smoothed trace ``2*i+1`` (empty when smoothing is off), and the last trace holds
    the non-finite markers of all lines (drawn at the highest finite value, hover says NaN/Inf; a
    hidden second axis would pin them to the top exactly but costs every chart an extra axis).
    """
    if not any(len(line.y) for line in lines):
        return empty_figure(title, empty_message, height=height)
    smooth = smoothing > 0
    data: list[dict[str, Any]] = []
    bad_x: list[float] = []
    bad_text: list[str] = []
    for i, line in enumerate(lines):
        c = line.color or color(i)
        name = _esc(line.name)
        xs_, ys_ = (_f32(line.x), _f32(line.y)) if compact else (_floats(line.x), _floats(line.y))
        style = {"color": c, "width": 1.5, **({"dash": line.dash} if line.dash else {})}
        data.append({"type": "scatter", "x": xs_, "y": ys_, "name": name, "mode": "lines",
                     "legendgroup": name, "line": style, "opacity": 0.3 if smooth else 1.0,
                     "showlegend": not smooth, "hovertemplate": f"{name}{' (raw)' if smooth else ''}: %{{y:.4g}}<extra></extra>"})
        smoothed = ema(line.y, smoothing)[0] if smooth else []
        if live or smooth:
            data.append({"type": "scatter", "x": (xs_ if smooth else []),
                         "y": (_f32(smoothed) if compact else smoothed), "name": name, "mode": "lines",
                         "legendgroup": name, "line": {**style, "width": 2}, "showlegend": smooth,
                         "hovertemplate": f"{name} (EMA {smoothing:g}): %{{y:.4g}}<extra></extra>"})
        xs, labels = _nonfinite(line.x, line.y)
        bad_x += xs
        bad_text += [f"{name}: {label}" for label in labels]
    level = marker_level(line.y for line in lines)
    if live or bad_x:
        data.append({"type": "scatter", "x": bad_x, "y": [level] * len(bad_x), "mode": "markers",
                     "name": "non-finite (NaN/Inf)", "marker": {"symbol": "x", "color": NONFINITE_COLOR, "size": 9},
                     "text": bad_text, "hovertemplate": "%{text}<extra></extra>",
                     "showlegend": bool(bad_x)})
    # every run at this x in one label, as other trackers show it (closest showed one run)
    layout = _layout(title, x_title, y_title, uirevision=uirevision, height=height, hovermode="x unified")
    if log_y:
        layout["yaxis"]["type"] = "log"
    _side_legend(layout, len(lines))
    layout["showlegend"] = True  # even for one line: the legend names what is plotted
    return raw_figure(data, layout)


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
    z_range: tuple[float, float] | None = None,
) -> go.Figure:
    """A heatmap (step x index, or layer x step). ``log_color`` colours by log10 so a spectrum
    spanning 1e-6..1e2 is readable; the colour bar and the hover say so.

    ``z`` travels as a float32 numpy array, which plotly sends base64-encoded: a 120 x 256 spectrum
    heatmap is ~120 kB instead of ~500 kB of JSON text, and the browser decodes it without parsing.

    ``z_range`` fixes the colour range (a fraction is 0..1); otherwise a field with one value gets
    a range that starts at 0 and contains it (plotly's default for an all-zero field is -0.5..0.5).
    """
    if len(z) == 0 or len(x) == 0:
        return empty_figure(title, empty_message, height=height)
    zz = np.array([[np.nan if v is None else v for v in row] for row in z], dtype=float)
    shown = (_log10(zz) if log_color else zz).astype(np.float32)
    value = "log10 value" if log_color else "value"
    finite = shown[np.isfinite(shown)]
    if z_range is None and finite.size and float(finite.min()) == float(finite.max()):
        c = float(finite[0])
        z_range = (min(0.0, c), max(c, 0.0)) if c != 0 else (0.0, 1.0)
    trace = {
        "type": "heatmap", "x": _floats(x), "y": _floats(y), "z": shown, "colorscale": "Viridis",
        "colorbar": {"title": {"text": (f"log10 {colorbar_title}" if log_color else colorbar_title)}},
        "hovertemplate": f"{x_title}=%{{x}}<br>{y_title}=%{{y}}<br>{value}=%{{z:.4g}}<extra></extra>",
        "hoverongaps": False, "name": colorbar_title, "showscale": True,
    }
    if z_range is not None:
        trace.update(zmin=float(z_range[0]), zmax=float(z_range[1]))
    layout = _layout(title, x_title, y_title, uirevision=uirevision, height=height)
    if len(y) and isinstance(y[0], str):
        # layers top-down in model order, as they appear in named_parameters()
        layout["yaxis"].update(type="category", autorange="reversed", dtick=1, tickfont={"size": 10})
    elif reverse_y:
        layout["yaxis"]["autorange"] = "reversed"
    return raw_figure([trace], layout)


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
    fig = line_figure(lines, title=title, x_title=x_title, y_title=y_title, log_y=log_y,
                      empty_message=empty_message, uirevision=uirevision, height=height, live=False)
    if not is_empty(fig):
        if len(lines) > 1:
            fig.layout.showlegend = True
        # markers help read a short spectrum; on 20 x 256 values they would be 5k SVG nodes
        if sum(len(line.y) for line in lines) <= 1000:
            for trace in fig.data[:len(lines)]:
                trace.mode = "lines+markers"
                trace.marker = {"size": 3}
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
    arrays = [(name, np.asarray(v, dtype=float)) for name, v in dists]
    if not any(v.size for _, v in arrays):
        return empty_figure(title, empty_message, height=height)
    if mode not in ("hist", "ecdf", "box"):
        raise ValueError(f"unknown mode {mode!r}")
    data: list[dict[str, Any]] = []
    for i, (name, v) in enumerate(arrays):
        finite = v[np.isfinite(v)]
        bad = int(v.size - finite.size)
        label = _esc(f"{name} ({bad} non-finite)" if bad else name)
        vals = _log10(finite) if log_x else finite
        if mode == "hist":
            data.append({"type": "histogram", "x": vals, "name": label, "histnorm": "probability",
                         "opacity": 0.55, "marker": {"color": color(i)}, "nbinsx": 50})
        elif mode == "ecdf":
            srt = np.sort(vals)
            data.append({"type": "scatter", "x": srt, "y": np.arange(1, srt.size + 1) / max(srt.size, 1),
                         "name": label, "mode": "lines", "line": {"color": color(i), "shape": "hv"}})
        else:
            data.append({"type": "box", "y": vals, "name": label, "marker": {"color": color(i)},
                         "boxpoints": False})
    shown_x = f"log10 {x_title}" if log_x else x_title
    if mode == "box":
        layout = _layout(title, "run", shown_x, uirevision=uirevision, height=height)
    else:
        y_title = "fraction of neurons" if mode == "hist" else "fraction of neurons ≤ x"
        layout = _layout(title, shown_x, y_title, uirevision=uirevision, height=height)
    layout.update(barmode="overlay", showlegend=True)
    if mode != "box":
        _side_legend(layout, len(arrays))
    else:
        layout["showlegend"] = len(arrays) <= MANY_TRACES  # the x axis already names each box
    return raw_figure(data, layout)


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
    layout = _layout(title, x_title, y_title, uirevision=None, height=height, showlegend=True)
    return raw_figure([{"type": "bar", "x": _floats(x), "y": _floats(y), "name": _esc(name or y_title),
                     "marker": {"color": color(0)}}], layout)


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
    """A grid of small line charts sharing the y axis: e.g. one spectrum per run at a matched step.
    Each panel is (panel title, [(trace name, values)]) with x = index. The grid is laid out by hand
    (axis domains) because ``make_subplots`` costs ~0.5 s for 20 panels."""
    panels = [p for p in panels if any(len(v) for _, v in p[1])]
    if not panels:
        return empty_figure(title, empty_message)
    cols = max(1, min(cols, len(panels)))
    rows = math.ceil(len(panels) / cols)
    hgap, vgap = 0.03, min(0.12, 0.5 / rows)
    width = (1 - hgap * (cols - 1)) / cols
    height = (1 - vgap * (rows - 1)) / rows
    layout = _layout(title, "", "", uirevision=None, height=80 + rows * height_per_row)
    del layout["xaxis"], layout["yaxis"]
    annotations = []
    data: list[dict[str, Any]] = []
    names_seen: set[str] = set()
    for k, (panel_title, traces) in enumerate(panels):
        r, c = divmod(k, cols)
        x0 = c * (width + hgap)
        y1 = 1 - r * (height + vgap)
        suffix = "" if k == 0 else str(k + 1)
        layout[f"xaxis{suffix}"] = {**_AXIS, "domain": _domain(x0, x0 + width), "anchor": f"y{suffix}",
                                    "title": {"text": _esc(x_title) if r == rows - 1 else ""}}
        layout[f"yaxis{suffix}"] = {**_AXIS, "domain": _domain(y1 - height, y1), "anchor": f"x{suffix}",
                                    "type": "log" if log_y else "linear",
                                    "title": {"text": _esc(y_title) if c == 0 else ""}}
        if k:
            layout[f"yaxis{suffix}"]["matches"] = "y"
            if c:
                layout[f"yaxis{suffix}"]["showticklabels"] = False
        annotations.append({"text": _esc(panel_title), "showarrow": False, "x": x0 + width / 2, "y": y1,
                            "xref": "paper", "yref": "paper", "xanchor": "center", "yanchor": "bottom",
                            "font": {"size": 12}})
        for j, (name, values) in enumerate(traces):
            data.append({"type": "scatter", "x": list(range(1, len(values) + 1)), "y": _floats(values),
                         "mode": "lines", "name": _esc(name), "legendgroup": _esc(name),
                         "showlegend": name not in names_seen, "line": {"color": color(j)},
                         "xaxis": f"x{suffix}", "yaxis": f"y{suffix}"})
            names_seen.add(name)
    layout["annotations"] = annotations
    return raw_figure(data, layout)


def _domain(lo: float, hi: float) -> list[float]:
    """An axis domain clamped to [0, 1] (float sums like 1 - 2*(h+gap) - h land at -1e-17)."""
    return [round(min(max(lo, 0.0), 1.0), 6), round(min(max(hi, 0.0), 1.0), 6)]


def _esc(text: str) -> str:
    """Plotly renders a subset of HTML in hover templates and titles; user strings (run and layer
    names) are escaped so ``<script>`` or ``<b>`` shows as typed."""
    return (
        str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("%{", "%&#123;")
    )


def safe_text(text: str) -> str:
    """Public alias of the escaping used for user strings placed in figure titles or names."""
    return _esc(text)
