"""The compare page's scalars: one chart per key, one line per run in its own colour on a common x
axis (step, wall time since start, samples seen), or each group's mean with a band.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dash import Input, Output, dcc, html

from ... import figures as F
from ... import group_figures as GF
from ... import ids
from ...api import ApiClient, ApiError
from ...colors import run_color, run_dash
from ...components import control, graph, message
from ...series import X_CHOICES, X_SAMPLES, X_STEP, X_TIME, X_TITLES, relative_time, steps_to_samples, y_title
from ...state import current_config, current_api
from .page_ids import CMP_BAND, CMP_GROUPS, CMP_MEMBERS
from .paint import group_color

CHART_POINT_BUDGET = 12_000


def section(key_options: Sequence[str], keys: Sequence[str], x: str | None, smooth: float, log: str | None,
            band: str | None, charts: Sequence[Any] = ()) -> html.Section:
    """The scalar controls (keys, x axis, smoothing, y scale, group band, members) and the charts:
    ``charts`` are the first ones, drawn in the page's own response (``first_charts``)."""
    return html.Section([
        html.H3("Scalars"),
        html.Div([
            control("scalars", dcc.Dropdown(id="cmp-keys-select", options=key_options, multi=True,
                                            value=keys), width="320px"),
            control("x axis", dcc.RadioItems(id=ids.CMP_X, value=x_choice(x), inline=True,
                                             options=[{"label": " " + X_TITLES[c].split(" (")[0], "value": c}
                                                      for c in X_CHOICES])),
            control("smoothing (EMA)", dcc.Slider(id=ids.CMP_SMOOTH, min=0, max=0.99, step=0.01, value=smooth,
                                                  marks={0: "0", 0.5: "0.5", 0.9: "0.9"}), width="220px"),
            control("y scale", dcc.Checklist(id=ids.CMP_LOG, options=[{"label": " log", "value": "log"}],
                                             value=log_choice(log))),
            control("group band", dcc.RadioItems(id=CMP_BAND, inline=True, value=band_choice(band),
                                                 options=[{"label": " " + label, "value": v}
                                                          for v, label in GF.BAND_LABELS.items()])),
            control("members", dcc.Checklist(id=CMP_MEMBERS, value=[],
                                             options=[{"label": " show each seed", "value": "show"}])),
        ], className="controls"),
        dcc.Loading(html.Div(list(charts), id=ids.CMP_SCALARS, className="grid2"), type="dot", delay_show=400),
    ], className="section")


def x_choice(x: str | None) -> str:
    """The x axis a ``?x=`` value asks for (step when it names none)."""
    return x if x in X_CHOICES else X_STEP


def log_choice(log: str | None) -> list[str]:
    """The y-scale checklist's value for a ``?log=`` value."""
    return ["log"] if log in ("1", "log", "true") else []


def band_choice(band: str | None) -> str:
    """The group band a ``?band=`` value asks for (min–max when it names none)."""
    return band if band in GF.BAND_LABELS else "minmax"


def first_charts(keys: Sequence[str], x: str | None, smooth: float, log: str | None, meta: Mapping[str, Any],
                 groups: Mapping[str, Any] | None, band: str | None) -> list[Any]:
    """The scalar charts the page opens with, drawn in the page's own response.

    Why not by the callback: the page's other panels fire their callbacks at the same moment, and
    on one server process they share one interpreter, so the scalars (the first thing a reader
    looks at) waited for all of them; drawn here, they arrive with the page. The callback redraws
    them when a control changes (``prevent_initial_call``).
    """
    try:
        return draw_scalars(keys, x_choice(x), smooth, log_choice(log), meta, groups, band_choice(band), [])
    except ApiError as exc:
        return [message("Cannot load the scalars", str(exc), kind="error")]


def overlay_lines(api: ApiClient, meta: Mapping[str, Mapping[str, Any]], key: str, series: Sequence[Mapping[str, Any]],
                  x: str, samples: Mapping[str, tuple[list[int], list[float]]]) -> list[F.Line]:
    """One line per run for ``key``, x in the chosen unit, in the run's own colour and dash
    (``colors.run_color``: the same in every panel, whatever the run's position in the selection)."""
    by_run = {s["run_id"]: s for s in series if s["key"] == key}
    lines = []
    for rid, m in meta.items():
        s = by_run.get(rid)
        if not s:
            continue
        if x == X_TIME:
            xs = relative_time(s["x"], m.get("created_at"))
        elif x == X_SAMPLES:
            xs = steps_to_samples(s["steps"], *samples.get(rid, ([], [])))
        else:
            xs = s["x"]
        lines.append(F.Line(m["name"], xs, s["y"], color=run_color(rid), steps=s["steps"], dash=run_dash(rid)))
    return lines


def draw_scalars(keys, x, smooth, log, meta, groups=None, band="minmax", members=None):
    """Overlaid scalars: one chart per key, one line per run (or a mean and band per group), one
    request for all of them."""
    meta = meta or {}
    keys = list(keys or [])
    if not meta or not keys:
        return [graph("cmp-scalar-empty", F.empty_figure("scalars", "no scalars in common — pick runs that logged "
                                                          "run.log({...}) keys"))]
    api = current_api()
    x = x or X_STEP
    run_ids = list(meta)
    wire_x = "time" if x == X_TIME else "step"
    # A budget of points per chart, not per run: 20 overlaid runs at 1,500 points each would send
    # 60k points per chart for a plot ~1,000 px wide (the server's min/max buckets keep the spikes).
    points = max(200, min(current_config().series_points, CHART_POINT_BUDGET // len(run_ids)))
    series = api.series(run_ids, keys, x=wire_x, points=points)
    samples: dict[str, tuple[list[int], list[float]]] = {}
    if x == X_SAMPLES:
        for s in api.series(run_ids, ["samples_seen"], x="step", points=5000):
            samples[s["run_id"]] = (s["steps"], s["y"])
    out = []
    grouped = bool((groups or {}).get("grouped"))
    for key in keys:
        if grouped:
            fig = group_scalar_figure(api, meta, key, series, x, samples, groups["groups"], band=band or "minmax",
                                      members="show" in (members or []), log_y="log" in (log or []),
                                      smoothing=float(smooth or 0))
            out.append(graph({"type": "cmp-scalar-graph", "key": key}, fig))
            continue
        lines = overlay_lines(api, meta, key, series, x, samples)
        fig = F.line_figure(lines, title=f"{key} — {len(lines)} runs", x_title=X_TITLES[x], y_title=y_title(key),
                            log_y="log" in (log or []), smoothing=float(smooth or 0), uirevision=f"cmp:{key}:{x}",
                            empty_message=f"no run logged {key}", compact=True, live=False)
        fig.layout.showlegend = True
        out.append(graph({"type": "cmp-scalar-graph", "key": key}, fig))
    return out


def group_scalar_figure(api: ApiClient, meta: Mapping[str, Mapping[str, Any]], key: str,
                        series: Sequence[Mapping[str, Any]], x: str, samples: Mapping[str, tuple[list[int], list[float]]],
                        groups: Sequence[Mapping[str, Any]], *, band: str, members: bool, log_y: bool,
                        smoothing: float):
    """One chart of ``key``: per group the mean of its runs with a band, members on demand."""
    curves = []
    for g in groups:
        sub = {rid: meta[rid] for rid in g["run_ids"] if rid in meta}
        lines = overlay_lines(api, sub, key, series, x, samples)
        if lines:
            curves.append(GF.group_curve(g["group"], lines, band=band, color=group_color(g)))
    fig = GF.band_figure(curves, title=f"{key} — {len(curves)} groups, {GF.BAND_LABELS[band]}", x_title=X_TITLES[x],
                         y_title=y_title(key), band=band, log_y=log_y, smoothing=smoothing,
                         show_members=members, uirevision=f"cmp:{key}:{x}:groups", empty_message=f"no run logged {key}")
    fig.layout.showlegend = True
    return fig


def register(app: Any) -> None:
    """Register the section's callbacks on ``app`` (a Dash app, or the ``dash`` module's global list)."""
    app.callback(
        Output(ids.CMP_SCALARS, "children"),
        Input("cmp-keys-select", "value"),
        Input(ids.CMP_X, "value"),
        Input(ids.CMP_SMOOTH, "value"),
        Input(ids.CMP_LOG, "value"),
        Input(ids.CMP_META, "data"),
        Input(CMP_GROUPS, "data"),
        Input(CMP_BAND, "value"),
        Input(CMP_MEMBERS, "value"),
        prevent_initial_call=True,  # the page's response holds the first charts (``first_charts``)
    )(draw_scalars)
