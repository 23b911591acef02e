"""The compare page's matched-point panels: spectra and neuron update norms of every run at the
same step or the same samples seen, overlaid and side by side (grouped: each group's mean spectrum
with its band and its pooled neuron norms) — the cross-run histogram comparison other trackers lack.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from dash import Input, Output, State, dcc, html

from ... import figures as F
from ... import group_figures as GF
from ... import ids
from ...api import ApiClient
from ...colors import run_color
from ...components import control, graph
from ...queries import SV_SOURCES
from ...state import current_api
from .page_ids import CMP_BAND, CMP_GROUPS
from .paint import group_color, paint

SMALL_MULTIPLES_MAX = 8
MATCH_STEP = "step"
MATCH_SAMPLES = "samples"


def section(layer_options: Sequence[str], layer: str | None, source: str | None, match: str | None,
            at: int | None) -> html.Section:
    """The layer, source, match and step controls, and the four panels."""
    return html.Section([
        html.H3("Spectra and neuron update norms at a matched point"),
        html.Div([
            control("layer", dcc.Dropdown(id=ids.CMP_LAYER, options=layer_options, value=layer,
                                          clearable=False),
                    width="300px"),
            control("spectrum of", dcc.RadioItems(id=ids.CMP_SOURCE, inline=True,
                                                  value=source if source in SV_SOURCES else "weight",
                                                  options=[{"label": " " + s, "value": s} for s in SV_SOURCES])),
            control("match by", dcc.RadioItems(id=ids.CMP_MATCH, inline=True,
                                               value=match if match in (MATCH_STEP, MATCH_SAMPLES) else MATCH_STEP,
                                               options=[{"label": " step", "value": MATCH_STEP},
                                                        {"label": " samples seen", "value": MATCH_SAMPLES}])),
            control("at", dcc.Input(id=ids.CMP_AT, type="number", value=at, debounce=True,
                                    placeholder="latest common", style={"width": "150px"})),
        ], className="controls"),
        dcc.Loading(html.Div([
            html.Div([graph(ids.CMP_SPEC_OVERLAY), graph(ids.CMP_NEURON_OVERLAY)], className="grid2"),
            graph(ids.CMP_SPEC_GRID),
            graph(ids.CMP_NEURON_BOX),
        ]), type="dot", delay_show=400),
    ], className="section")


def matched_steps(api: ApiClient, run_ids: Sequence[str], match: str, at: float | None,
                  common_last: int | None) -> dict[str, int | None]:
    """The step to show for each run: the same step, or the step where each run had seen ``at`` samples
    (runs pruned by InfoBatch reach a sample count at different steps). None: the run never got there."""
    if match != MATCH_SAMPLES:
        step = int(at) if at is not None else common_last
        return {rid: step for rid in run_ids}
    series = {s["run_id"]: s for s in api.series(list(run_ids), ["samples_seen"], x="step", points=20000)}
    out: dict[str, int | None] = {}
    for rid in run_ids:
        s = series.get(rid)
        if not s or not s["y"]:
            out[rid] = None
            continue
        goal = at if at is not None else min(max(v for v in t["y"] if math.isfinite(v)) for t in series.values() if t["y"])
        out[rid] = next((st for st, v in zip(s["steps"], s["y"]) if math.isfinite(v) and v >= goal), None)
    return out


def _at_step(api: ApiClient, rid: str, key: str, layer: str, step: int | None) -> tuple[int, list[float]] | None:
    if step is None:
        return None
    records = api.arrays(rid, key, layer=layer, at_step=step)
    return (int(records[-1]["step"]), records[-1]["values"]) if records else None


def matched_panels(layer, source, match, at, meta, catalog, groups=None, band="minmax"):
    """Spectra and neuron-norm distributions of every run at the matched point, overlaid and side by side;
    grouped, the overlays show each group's mean spectrum with its band and its pooled neuron norms."""
    meta = meta or {}
    hint_sv = "no spectra logged for these runs — enable them with probe.attach(model, optimizer, run=run)"
    hint_nn = "no neuron update norms logged for these runs — probe.attach(...) logs them for 2-D layers"
    if not meta or not layer:
        empty = F.empty_figure("spectra at a matched step", hint_sv)
        return empty, empty, F.empty_figure("neuron update norms", hint_nn), F.empty_figure("neuron update norms", hint_nn)
    api = current_api()
    run_ids = list(meta)
    steps = matched_steps(api, run_ids, match, at, (catalog or {}).get("common_last_step"))
    source = source or "weight"
    # one request per run and array, concurrently; arrays no picked run logged are not asked for
    catalog = catalog or {}
    want_sv = source in catalog.get("sources", []) and layer in catalog.get("sv_layers", [])
    want_nn = layer in catalog.get("neuron_layers", [])
    spec = api.map(lambda rid: _at_step(api, rid, f"sv.{source}", layer, steps[rid]), run_ids) if want_sv \
        else [None] * len(run_ids)
    neur = api.map(lambda rid: _at_step(api, rid, "neuron.update_norm", layer, steps[rid]), run_ids) if want_nn \
        else [None] * len(run_ids)
    where = "matched samples seen" if match == MATCH_SAMPLES else f"step ≤ {steps[run_ids[0]]}"
    got_sv = [(rid, g) for rid, g in zip(run_ids, spec) if g]
    sv_colors = [run_color(rid) for rid, _ in got_sv]
    spectra = [(f"{meta[r]['name']} @ {g[0]}", g[1]) for r, g in got_sv]
    overlay = paint(F.spectrum_figure(spectra, title=f"spectrum of {source} — {layer} ({where})",
                                      empty_message=hint_sv), sv_colors)
    found = [(f"{meta[r]['name']} @ step {g[0]}", g[1]) for r, g in got_sv]
    if len(found) <= SMALL_MULTIPLES_MAX:
        # each run in its own colour (one trace per panel), not every panel in the first colour
        grid = paint(F.small_multiples([(name, [(name, values)]) for name, values in found],
                                       title=f"spectra side by side — {layer}", x_title="index i", y_title="σᵢ",
                                       empty_message=hint_sv), sv_colors)
    else:  # 20 little charts cost the browser ~1 s; one run x index heatmap shows the same side by side
        width = max(len(v) for _, v in found)
        grid = F.heatmap_figure(list(range(1, width + 1)), [name for name, _ in found],
                                [list(v) + [math.nan] * (width - len(v)) for _, v in found],
                                title=f"spectra side by side — {layer}", x_title="index i (descending σ)",
                                y_title="run", colorbar_title="σ", log_color=True,
                                height=max(320, 90 + 18 * len(found)))
        # each row's label starts with a square in its run's colour (plotly styles <span> in tick text)
        grid.layout.yaxis.update(tickmode="array", tickvals=[name for name, _ in found],
                                 ticktext=[f"<span style='color:{c}'>■</span> {F.safe_text(name)}"
                                           for c, (name, _) in zip(sv_colors, found)])
    got_nn = [(rid, g) for rid, g in zip(run_ids, neur) if g]
    nn_colors = [run_color(rid) for rid, _ in got_nn]
    dists = [(f"{meta[r]['name']} @ {g[0]}", g[1]) for r, g in got_nn]
    n_overlay = paint(F.distribution_figure(dists, title=f"neuron update norms — {layer} ({where})", mode="ecdf",
                                            x_title="‖ΔW_row‖₂", empty_message=hint_nn), nn_colors)
    if (groups or {}).get("grouped"):
        overlay, n_overlay = group_matched_overlays(groups["groups"], dict(zip(run_ids, spec)),
                                                    dict(zip(run_ids, neur)), source=source, layer=layer,
                                                    where=where, band=band or "minmax", hints=(hint_sv, hint_nn))
    n_box = paint(F.distribution_figure(dists, title=f"neuron update norms side by side — {layer}", mode="box",
                                        x_title="‖ΔW_row‖₂", empty_message=hint_nn), nn_colors)
    return overlay, grid, n_overlay, n_box


def group_matched_overlays(groups: Sequence[Mapping[str, Any]], spectra: Mapping[str, Any],
                           norms: Mapping[str, Any], *, source: str, layer: str, where: str, band: str,
                           hints: tuple[str, str]):
    """(spectrum figure, neuron-norm figure) per group: the mean spectrum of its runs at the matched
    point with a band (index by index), and the neuron update norms of all its runs pooled (each
    neuron of each seed is one sample of the group's distribution)."""
    curves, pooled, pooled_colors = [], [], []
    for g in groups:
        lines = [F.Line(rid, list(range(1, len(got[1]) + 1)), got[1]) for rid in g["run_ids"]
                 if (got := spectra.get(rid))]
        if lines:
            curves.append(GF.group_curve(g["group"], lines, band=band, color=group_color(g)))
        values = [v for rid in g["run_ids"] if (got := norms.get(rid)) for v in got[1]]
        if values:
            pooled.append((f"{g['group']} ({sum(1 for rid in g['run_ids'] if norms.get(rid))} runs)", values))
            pooled_colors.append(group_color(g))
    spec = GF.band_figure(curves, title=f"mean spectrum of {source} — {layer} ({where}), {GF.BAND_LABELS[band]}",
                          x_title="index i (descending σ)", y_title="singular value σᵢ", band=band, log_y=True,
                          empty_message=hints[0])
    nn = F.distribution_figure(pooled, title=f"neuron update norms per group, seeds pooled — {layer} ({where})",
                               mode="ecdf", x_title="‖ΔW_row‖₂", empty_message=hints[1])
    return spec, paint(nn, pooled_colors)


def register(app: Any) -> None:
    """Register the section's callbacks on ``app`` (a Dash app, or the ``dash`` module's global list)."""
    app.callback(
        Output(ids.CMP_SPEC_OVERLAY, "figure"),
        Output(ids.CMP_SPEC_GRID, "figure"),
        Output(ids.CMP_NEURON_OVERLAY, "figure"),
        Output(ids.CMP_NEURON_BOX, "figure"),
        Input(ids.CMP_LAYER, "value"),
        Input(ids.CMP_SOURCE, "value"),
        Input(ids.CMP_MATCH, "value"),
        Input(ids.CMP_AT, "value"),
        State(ids.CMP_META, "data"),
        State(ids.CMP_KEYS, "data"),
        Input(CMP_GROUPS, "data"),
        Input(CMP_BAND, "value"),
    )(matched_panels)
