"""Compare page ("/compare?runs=a,b,c"): 2 to 50 runs side by side, or as seed groups.

Overlaid scalars on a common x axis (step, wall time since start, samples seen); spectra and
neuron-norm distributions at a matched step or matched samples seen, overlaid and as small
multiples (the cross-run histogram comparison other trackers lack); a config diff showing only what
differs; and the time-to-target table computed by the server's ``/time-to-target``.

Groups (``group_by=`` config keys / ``tags``, by default everything but the seed when seeds repeat):
scalar panels show each group's mean with a band and its members on demand, the group time-to-target
table has bootstrap 95 % intervals over seeds (``/analysis/time-to-target``), and the "why" panel lists
the ranked per-layer differences between two groups (``/analysis/why``), each linking to the run-page
panel that shows it. The builders are in ``compare_groups`` and ``dashboard.group_figures``.

Requests for many runs go out concurrently (``ApiClient.map``) or as one multi-run ``/series``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import dash
from dash import Input, Output, State, callback, clientside_callback, dcc, html, no_update

from .. import figures as F
from .. import group_figures as GF
from .. import ids
from .. import colors
from ..colors import run_color, run_dash
from ..api import ApiClient, ApiError, NotFound
from ..components import control, flatten, fmt_duration, fmt_value, graph, message, parse_time, speedup_text
from ..queries import SV_SOURCES, Catalog, natural_key
from ..series import X_CHOICES, X_SAMPLES, X_STEP, X_TIME, X_TITLES, relative_time, steps_to_samples, y_title
from ..state import current_api, current_config
from . import compare_groups as CG
from . import compare_layers as CL

TITLE = "Optiscope · compare"
MAX_RUNS = 50  # the server's /time-to-target takes up to 50 run ids
CHART_POINT_BUDGET = 12_000
SMALL_MULTIPLES_MAX = 8
MATCH_STEP = "step"
MATCH_SAMPLES = "samples"
WHY_TOP = 10
# component ids of the group features (kept here: dashboard/ids.py is shared by every page)
CMP_GROUP_BY = "cmp-group-by"
CMP_GROUPS = "cmp-groups"
CMP_GROUPS_SUMMARY = "cmp-groups-summary"
CMP_BAND = "cmp-band"
CMP_MEMBERS = "cmp-members"
CMP_TTT_GROUPS = "cmp-ttt-groups"
CMP_WHY = "cmp-why"
CMP_WHY_A = "cmp-why-a"
CMP_WHY_BASELINE = "cmp-why-baseline"
CMP_WHY_MATCH = "cmp-why-match"
CMP_WHY_AT = "cmp-why-at"


# -- layout ---------------------------------------------------------------------------------------

def parse_run_ids(runs: str | None) -> list[str]:
    """``"a,b,,a"`` -> ``["a", "b"]`` (order kept, duplicates and blanks dropped, capped)."""
    out: list[str] = []
    for part in (runs or "").split(","):
        part = part.strip()
        if part and part not in out:
            out.append(part)
    return out[:MAX_RUNS]


PICKER_RECENT = 200  # the run picker opens with the newest runs; typing searches every run by name
PICKER_MATCHES = 100


def run_option(run: Mapping[str, Any]) -> dict[str, str]:
    return {"label": f"{run.get('name') or run['id']} ({run.get('project')})", "value": run["id"]}


def search_run_options(search: str | None, selected: Sequence[str] | None,
                       options: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """The picker's options while the user types: the picked runs (kept, or the dropdown drops them)
    plus the server's name matches over every run, not only the newest listed at page load."""
    if not search or not search.strip():
        raise dash.exceptions.PreventUpdate
    picked = set(selected or [])
    keep = [dict(o) for o in options or [] if o["value"] in picked]
    try:
        matches, _ = current_api().list_runs(q=search.strip(), limit=PICKER_MATCHES)
    except ApiError:
        return list(options or [])
    seen = {o["value"] for o in keep}
    return keep + [run_option(r) for r in matches if r["id"] not in seen]


callback(Output(ids.CMP_RUNS, "options"), Input(ids.CMP_RUNS, "search_value"),
         State(ids.CMP_RUNS, "value"), State(ids.CMP_RUNS, "options"),
         prevent_initial_call=True)(search_run_options)


def layout(runs: str | None = None, keys: str | None = None, x: str | None = None, layer: str | None = None,
           source: str | None = None, match: str | None = None, at: str | None = None, metric: str | None = None,
           target: str | None = None, direction: str | None = None, baseline: str | None = None,
           smooth: str | None = None, log: str | None = None, group_by: str | None = None, band: str | None = None,
           lt_q: str | None = None, lt_layer: str | None = None, lt_scope: str | None = None, lt_x: str | None = None,
           **_: Any) -> html.Div:
    """Controls from the query string; every panel is filled by its callback."""
    run_ids = parse_run_ids(runs)
    api = current_api()
    try:
        all_runs, _ = api.list_runs(limit=PICKER_RECENT)
    except ApiError as exc:
        return message("Cannot reach the server", str(exc), kind="error")
    options = [run_option(r) for r in all_runs]
    known = {o["value"] for o in options}
    missing = [r for r in run_ids if r not in known]
    for rid in missing:  # older than the newest runs listed, or unknown: ask directly
        try:
            options.append(run_option(api.get_run(rid)))
        except ApiError:
            pass
    valid = [r for r in run_ids if r in {o["value"] for o in options}]
    unknown = [r for r in run_ids if r not in valid]
    notes = [message("Unknown runs ignored", ", ".join(unknown), kind="warning")] if unknown else []
    # Everything the panels need to start is computed here, in the page's own response, so the
    # panels' callbacks fire at once instead of after two more round trips.
    listed = {r["id"]: r for r in all_runs}
    meta, catalog, note = compare_state(api, valid, listed)
    controls = controls_for(catalog, meta, keys.split(",") if keys else None, metric, baseline, layer)
    grouping, groups = initial_groups(api, meta, CG.parse_group_by(group_by))
    lt = CL.layer_controls(catalog, lt_q, lt_layer, lt_scope)
    try:
        smooth_v = min(max(float(smooth), 0.0), 0.99) if smooth else 0.0
    except ValueError:
        smooth_v = 0.0
    try:
        at_v = int(float(at)) if at else None
    except ValueError:
        at_v = None
    try:
        target_v = float(target) if target else None
    except ValueError:
        target_v = None
    return html.Div(
        [
            html.H2("Compare runs"),
            *notes,
            html.Div(note, id=ids.CMP_MESSAGE),
            html.Div([
                control("runs (2–50)", dcc.Dropdown(id=ids.CMP_RUNS, options=options, value=valid, multi=True,
                                                    placeholder="pick runs to compare"), width="100%"),
            ], className="controls"),
            html.Div([
                control("group by", dcc.Dropdown(id=CMP_GROUP_BY, options=CG.group_by_options(meta), value=grouping,
                                                 multi=True, placeholder="each run on its own"), width="420px"),
                html.Div(CG.groups_summary(groups), id=CMP_GROUPS_SUMMARY),
            ], className="controls"),
            dcc.Store(id=CMP_GROUPS, data=groups),
            dcc.Store(id=ids.CMP_KEYS, data=catalog),
            dcc.Store(id="cmp-meta", data=meta),
            # -- scalars
            html.Section([
                html.H3("Scalars"),
                html.Div([
                    control("scalars", dcc.Dropdown(id="cmp-keys-select", options=controls[0], multi=True,
                                                    value=controls[1]), width="320px"),
                    control("x axis", dcc.RadioItems(id=ids.CMP_X, value=x if x in X_CHOICES else X_STEP, inline=True,
                                                     options=[{"label": " " + X_TITLES[c].split(" (")[0], "value": c}
                                                              for c in X_CHOICES])),
                    control("smoothing (EMA)", dcc.Slider(id=ids.CMP_SMOOTH, min=0, max=0.99, step=0.01, value=smooth_v,
                                                          marks={0: "0", 0.5: "0.5", 0.9: "0.9"}), width="220px"),
                    control("y scale", dcc.Checklist(id=ids.CMP_LOG, options=[{"label": " log", "value": "log"}],
                                                     value=["log"] if log in ("1", "log", "true") else [])),
                    control("group band", dcc.RadioItems(id=CMP_BAND, inline=True,
                                                         value=band if band in GF.BAND_LABELS else "minmax",
                                                         options=[{"label": " " + label, "value": v}
                                                                  for v, label in GF.BAND_LABELS.items()])),
                    control("members", dcc.Checklist(id=CMP_MEMBERS, value=[],
                                                     options=[{"label": " show each seed", "value": "show"}])),
                ], className="controls"),
                dcc.Loading(html.Div(id=ids.CMP_SCALARS, className="grid2"), type="dot", delay_show=400),
            ], className="section"),
            # -- time to target
            html.Section([
                html.H3("Time to target"),
                html.P("Steps, wall time and samples seen until the metric first crosses the target (raw points, "
                       "computed by the server); speedup = baseline ÷ run, so > 1 means faster than the baseline.",
                       className="hint"),
                html.Div([
                    control("metric", dcc.Dropdown(id=ids.CMP_TTT_KEY, options=controls[2], value=controls[3],
                                                   clearable=False),
                            width="220px"),
                    control("target", dcc.Input(id=ids.CMP_TTT_TARGET, type="number", value=target_v, debounce=True,
                                                placeholder="auto", style={"width": "130px"})),
                    control("reached when", dcc.RadioItems(
                        id=ids.CMP_TTT_DIRECTION, inline=True, value=direction if direction in ("below", "above") else None,
                        options=[{"label": " ≤ target", "value": "below"}, {"label": " ≥ target", "value": "above"}])),
                    control("baseline", dcc.Dropdown(id=ids.CMP_TTT_BASELINE, options=controls[4],
                                                     value=controls[5], clearable=False), width="260px"),
                ], className="controls"),
                dcc.Loading(html.Div(id=CMP_TTT_GROUPS), type="dot", delay_show=400),
                dcc.Loading(html.Div(id=ids.CMP_TTT_TABLE), type="dot", delay_show=400),
            ], className="section"),
            # -- why
            html.Section([
                html.H3("Why: what differs between two groups"),
                html.P("Every per-layer diagnostic both sides logged, read at matched progress, averaged over the "
                       "layers of one kind (blocks.*.fc) and ranked by standardized difference: against the "
                       "seed-to-seed spread with ≥ 2 seeds a side (Welch t, Benjamini–Hochberg), else against how "
                       "much the difference varies between layers. Each line links to the panel that shows it.",
                       className="hint"),
                html.Div([
                    control("A", dcc.Dropdown(id=CMP_WHY_A, clearable=False), width="260px"),
                    control("vs baseline", dcc.Dropdown(id=CMP_WHY_BASELINE, clearable=False), width="260px"),
                    control("matched by", dcc.RadioItems(id=CMP_WHY_MATCH, inline=True, value="loss", options=[
                        {"label": " same loss (the time-to-target metric and target)", "value": "loss"},
                        {"label": " same step", "value": "step"}, {"label": " samples seen", "value": "samples"}])),
                    control("at", dcc.Input(id=CMP_WHY_AT, type="number", debounce=True, placeholder="auto",
                                            style={"width": "120px"})),
                ], className="controls"),
                dcc.Loading(html.Div(id=CMP_WHY), type="dot", delay_show=400),
            ], className="section"),
            # -- per-layer diagnostics over time
            html.Section([
                html.H3("Per-layer diagnostics over time"),
                html.P("One per-layer diagnostic for every run (or each group's mean with its band) against step: "
                       "a single layer, or the median / max over the layers (all, one role such as "
                       "blocks.*.fc.weight, or one block) at each logged step.", className="hint"),
                html.Div([
                    control("diagnostic", dcc.Dropdown(id=ids.CMP_LT_QUANTITY, options=lt[0], value=lt[1],
                                                       clearable=False, placeholder="no per-layer diagnostics"),
                            width="280px"),
                    control("layer", dcc.Dropdown(id=ids.CMP_LT_LAYER, options=lt[2], value=lt[3], clearable=False),
                            width="280px"),
                    control("over", dcc.Dropdown(id=ids.CMP_LT_BLOCK, options=lt[4], value=lt[5], clearable=False),
                            width="240px"),
                    control("x axis", dcc.RadioItems(id=ids.CMP_LT_X, inline=True,
                                                     value=lt_x if lt_x in (X_STEP, X_SAMPLES) else X_STEP,
                                                     options=[{"label": " step", "value": X_STEP},
                                                              {"label": " samples seen", "value": X_SAMPLES}])),
                ], className="controls"),
                dcc.Loading(graph(ids.CMP_LT_GRAPH), type="dot", delay_show=400),
                dcc.Store(id=ids.CMP_LT_SEEN, data=False),
            ], className="section", id=ids.CMP_LT_SECTION),
            # -- spectra and neurons at a matched step
            html.Section([
                html.H3("Spectra and neuron update norms at a matched point"),
                html.Div([
                    control("layer", dcc.Dropdown(id=ids.CMP_LAYER, options=controls[6], value=controls[7],
                                                  clearable=False),
                            width="300px"),
                    control("spectrum of", dcc.RadioItems(id=ids.CMP_SOURCE, inline=True,
                                                          value=source if source in SV_SOURCES else "weight",
                                                          options=[{"label": " " + s, "value": s} for s in SV_SOURCES])),
                    control("match by", dcc.RadioItems(id=ids.CMP_MATCH, inline=True,
                                                       value=match if match in (MATCH_STEP, MATCH_SAMPLES) else MATCH_STEP,
                                                       options=[{"label": " step", "value": MATCH_STEP},
                                                                {"label": " samples seen", "value": MATCH_SAMPLES}])),
                    control("at", dcc.Input(id=ids.CMP_AT, type="number", value=at_v, debounce=True,
                                            placeholder="latest common", style={"width": "150px"})),
                ], className="controls"),
                dcc.Loading(html.Div([
                    html.Div([graph(ids.CMP_SPEC_OVERLAY), graph(ids.CMP_NEURON_OVERLAY)], className="grid2"),
                    graph(ids.CMP_SPEC_GRID),
                    graph(ids.CMP_NEURON_BOX),
                ]), type="dot", delay_show=400),
            ], className="section"),
            # -- config diff
            html.Section([
                html.H3("Config: only what differs"),
                html.Div(id=ids.CMP_CONFIG_DIFF),
            ], className="section"),
            html.Div(id=ids.CMP_URL_SINK, hidden=True),
        ]
    )


# -- run metadata and the union catalog -----------------------------------------------------------

def run_meta(api: ApiClient, run_ids: Sequence[str],
             known: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Name, start time, optimizer and config of each run; ``known`` rows (from ``GET /runs``) are
    used as they are, the others fetched concurrently; unknown ids are skipped."""
    known = known or {}

    def one(rid: str) -> Mapping[str, Any] | None:
        if rid in known:
            return known[rid]
        try:
            return api.get_run(rid)
        except NotFound:
            return None
    out = {}
    for rid, run in zip(run_ids, api.map(one, list(run_ids))):
        if run is None:
            continue
        created = parse_time(run.get("created_at"))
        out[rid] = {"name": run.get("name") or rid, "created_at": created.timestamp() if created else None,
                    "config": run.get("config") or {}, "optimizer": run.get("optimizer"),
                    "project": run.get("project"), "status": run.get("status"), "last_step": run.get("last_step")}
    return out


def union_catalog(catalogs: Mapping[str, Catalog]) -> dict[str, Any]:
    """What the runs logged, merged: scalar keys (with how many runs have each), spectrum layers and
    sources, neuron layers, and the last step every run reached (the default matched step)."""
    scalars: dict[str, int] = {}
    sv_layers: dict[str, None] = {}
    neuron_layers: dict[str, None] = {}
    sources: dict[str, None] = {}
    quantities: dict[str, dict[str, None]] = {}
    last_steps = []
    for cat in catalogs.values():
        for k in cat.global_scalars:
            scalars[k] = scalars.get(k, 0) + 1
        for src in cat.sv_sources():
            sources[src] = None
            sv_layers.update(dict.fromkeys(cat.array_layers(f"sv.{src}")))
        neuron_layers.update(dict.fromkeys(cat.array_layers("neuron.update_norm")))
        for q, layers in cat.quantities.items():
            quantities.setdefault(q, {}).update(dict.fromkeys(layers))
        if cat.last_step is not None:
            last_steps.append(cat.last_step)
    ordered = sorted(scalars, key=lambda k: (k != "loss", not k.startswith(("acc", "val")), -scalars[k], k))
    return {"scalars": ordered, "sv_layers": list(sv_layers), "neuron_layers": list(neuron_layers),
            "sources": list(sources), "common_last_step": min(last_steps) if last_steps else None,
            "layer_quantities": {q: sorted(v, key=natural_key) for q, v in quantities.items()}}


def compare_state(api: ApiClient, run_ids: Sequence[str], known: Mapping[str, Mapping[str, Any]] | None = None):
    """(meta, merged catalog, notice) for the picked runs."""
    run_ids = list(run_ids or [])
    if len(run_ids) < 2:
        note = message("Pick at least two runs", "Select runs on the runs page and press “compare”, or add "
                       "them in the box above.")
    else:
        note = None
    if not run_ids:
        return {}, union_catalog({}), note
    try:
        meta = run_meta(api, run_ids, known)
        keys = api.map(lambda rid: Catalog.from_keys(api.keys(rid)), list(meta))
    except ApiError as exc:
        return {}, union_catalog({}), message("Cannot load runs", str(exc), kind="error")
    return meta, union_catalog(dict(zip(meta, keys))), note


@callback(
    Output("cmp-meta", "data"),
    Output(ids.CMP_KEYS, "data"),
    Output(ids.CMP_MESSAGE, "children"),
    Input(ids.CMP_RUNS, "value"),
    prevent_initial_call=True,
)
def load_runs(run_ids):
    """Per-run metadata and the merged key catalog when the picked runs change."""
    return compare_state(current_api(), run_ids or [])


@callback(
    Output("cmp-keys-select", "options"),
    Output("cmp-keys-select", "value"),
    Output(ids.CMP_TTT_KEY, "options"),
    Output(ids.CMP_TTT_KEY, "value"),
    Output(ids.CMP_TTT_BASELINE, "options"),
    Output(ids.CMP_TTT_BASELINE, "value"),
    Output(ids.CMP_LAYER, "options"),
    Output(ids.CMP_LAYER, "value"),
    Input(ids.CMP_KEYS, "data"),
    State("cmp-meta", "data"),
    State("cmp-keys-select", "value"),
    State(ids.CMP_TTT_KEY, "value"),
    State(ids.CMP_TTT_BASELINE, "value"),
    State(ids.CMP_LAYER, "value"),
    prevent_initial_call=True,
)
def fill_controls(catalog, meta, keys, ttt_key, baseline, layer):
    """Offer only what the picked runs logged; keep choices that are still valid."""
    return controls_for(catalog, meta, keys, ttt_key, baseline, layer)


def controls_for(catalog, meta, keys, ttt_key, baseline, layer) -> tuple:
    """(scalar options, chosen scalars, metric options, metric, baseline options, baseline, layer
    options, layer) for the runs' merged catalog, keeping earlier choices that are still valid."""
    catalog = catalog or {}
    meta = meta or {}
    scalars = [k for k in catalog.get("scalars", []) if k != "samples_seen"]
    keys = [k for k in (keys or []) if k in scalars] or scalars[:2]
    ttt_key = ttt_key if ttt_key in scalars else (scalars[0] if scalars else None)
    runs = [{"label": m["name"], "value": rid} for rid, m in meta.items()]
    baseline = baseline if baseline in meta else (next(iter(meta)) if meta else None)
    layers = catalog.get("sv_layers") or catalog.get("neuron_layers") or []
    layer = layer if layer in layers else (layers[0] if layers else None)
    return scalars, keys, scalars, ttt_key, runs, baseline, layers, layer


# -- colours --------------------------------------------------------------------------------------

def group_color(group: Mapping[str, Any]) -> str:
    """The colour of a group from ``/analysis/groups`` (``colors.group_color``)."""
    return colors.group_color(group["group"], group.get("run_ids") or [])


def swatch(run_id: str) -> html.Span:
    """A dot in the run's colour, before its name in tables (``data-color`` for tests and tools)."""
    c = run_color(run_id)
    return html.Span("● ", className="run-swatch", style={"color": c}, **{"data-color": c})


def paint(fig, colors: Sequence[str]):
    """Give the first ``len(colors)`` traces of ``fig`` these colours (line and marker): the figure
    builders colour traces by position, the compare page by run (``colors.run_color``)."""
    if F.is_empty(fig):
        return fig
    for trace, c in zip(fig.data, colors):
        if trace.type == "box":
            trace.marker = {"color": c}
            trace.line = {"color": c}
        else:
            trace.line = {**(trace.line.to_plotly_json() if trace.line else {}), "color": c}
            if getattr(trace, "marker", None) is not None and trace.mode and "markers" in trace.mode:
                trace.marker = {**trace.marker.to_plotly_json(), "color": c}
    return fig


# -- groups ---------------------------------------------------------------------------------------

def initial_groups(api: ApiClient, meta: Mapping[str, Mapping[str, Any]],
                   wanted: list[str] | None) -> tuple[list[str], dict[str, Any]]:
    """(group-by choice, groups) for the first render. No choice in the URL: group by everything but
    the seed when that puts two or more runs together (seeds of one recipe), else show each run."""
    if wanted is None:
        try:
            auto = CG.load_groups(api, meta, [CG.ALL_BUT_SEED]) if len(meta) >= 2 else None
        except ApiError:
            auto = None
        if auto and any(g["n"] >= 2 for g in auto["groups"]):
            return [CG.ALL_BUT_SEED], auto
        wanted = []
    try:
        return wanted, CG.load_groups(api, meta, wanted)
    except ApiError:
        return [], CG.load_groups(api, meta, [])


@callback(
    Output(CMP_GROUPS, "data"),
    Output(CMP_GROUPS_SUMMARY, "children"),
    Output(CMP_GROUP_BY, "options"),
    Input(CMP_GROUP_BY, "value"),
    Input("cmp-meta", "data"),
    prevent_initial_call=True,
)
def update_groups(group_by, meta):
    """Regroup when the choice or the picked runs change (the server groups; the page draws)."""
    meta = meta or {}
    try:
        groups = CG.load_groups(current_api(), meta, group_by or [])
    except ApiError as exc:
        return no_update, message("Cannot group these runs", str(exc), kind="error"), CG.group_by_options(meta)
    return groups, CG.groups_summary(groups), CG.group_by_options(meta)


# -- scalars --------------------------------------------------------------------------------------

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


@callback(
    Output(ids.CMP_SCALARS, "children"),
    Input("cmp-keys-select", "value"),
    Input(ids.CMP_X, "value"),
    Input(ids.CMP_SMOOTH, "value"),
    Input(ids.CMP_LOG, "value"),
    Input("cmp-meta", "data"),
    Input(CMP_GROUPS, "data"),
    Input(CMP_BAND, "value"),
    Input(CMP_MEMBERS, "value"),
)
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


# -- time to target -------------------------------------------------------------------------------

def default_direction(key: str | None) -> str:
    """Accuracy-like metrics are reached from below (≥ target); losses from above (≤ target)."""
    k = (key or "").lower()
    return "above" if any(t in k for t in ("acc", "f1", "auc", "precision", "recall", "score")) else "below"


def default_target(series: Sequence[Mapping[str, Any]], direction: str) -> float | None:
    """A target every run reaches: the worst of the runs' best values (the server's min/max
    downsampling keeps each run's extreme, so this is exact)."""
    bests = []
    for s in series:
        ys = [y for y in s["y"] if math.isfinite(y)]
        if ys:
            bests.append(min(ys) if direction == "below" else max(ys))
    if not bests:
        return None
    # exact, not rounded: a target rounded past the worst run's best value would read "not reached"
    return max(bests) if direction == "below" else min(bests)


def ttt_table(result: Mapping[str, Any], meta: Mapping[str, Mapping[str, Any]]) -> html.Table:
    """The time-to-target rows as a table; the baseline row is marked and speedups coloured."""
    head = ["run", "reached", "steps", "wall time", "samples seen", "speedup (steps)", "speedup (time)",
            "speedup (samples)"]
    body = []
    for row in result.get("rows", []):
        rid = row.get("run_id")
        name = row.get("name") or (meta.get(rid) or {}).get("name") or rid
        is_base = rid == result.get("baseline")
        cells = [
            html.Td([swatch(rid), dcc.Link(name, href=f"/runs/{rid}"), " (baseline)" if is_base else ""]),
            html.Td("yes" if row.get("reached") else "no"),
            html.Td(fmt_value(row.get("step")) if row.get("reached") else "—"),
            html.Td(fmt_duration(row.get("time_s")) if row.get("reached") else "—"),
            html.Td(fmt_value(row.get("samples_seen")) if row.get("samples_seen") is not None else "—"),
        ]
        for name_ in ("speedup_steps", "speedup_time", "speedup_samples"):
            v = row.get(name_)
            cls = "speedup-fast" if v is not None and v > 1.0 + 1e-9 else ("speedup-slow" if v is not None and v < 1 - 1e-9 else "")
            cells.append(html.Td(speedup_text(v), className=cls))
        body.append(html.Tr(cells, className="ttt-row", **{"data-run": rid}))
    return html.Table([html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(body)],
                      className="data-table", id="cmp-ttt-result")


@callback(
    Output(ids.CMP_TTT_TABLE, "children"),
    Output(ids.CMP_TTT_TARGET, "placeholder"),
    Output(ids.CMP_TTT_DIRECTION, "value"),
    Input(ids.CMP_TTT_KEY, "value"),
    Input(ids.CMP_TTT_TARGET, "value"),
    Input(ids.CMP_TTT_DIRECTION, "value"),
    Input(ids.CMP_TTT_BASELINE, "value"),
    State("cmp-meta", "data"),
)
def time_to_target(key, target, direction, baseline, meta):
    """Ask the server's /time-to-target (one implementation, shared with the demo) and tabulate."""
    meta = meta or {}
    if not key or len(meta) < 1:
        return message("Pick runs and a metric", "The table appears when the runs share a scalar."), no_update, no_update
    api = current_api()
    direction_out = no_update
    if direction not in ("below", "above"):
        direction = direction_out = default_direction(key)
    placeholder = no_update
    if target is None:
        # min/max buckets keep each run's extreme, so a coarse series gives the exact best value
        target = default_target(api.series(list(meta), [key], points=200), direction)
        if target is None:
            return message(f"No run logged {key}"), no_update, direction_out
        placeholder = f"auto: {target:.4g}"
    run_ids = list(meta)
    if baseline in run_ids:  # the server's default baseline is the first run id: put the chosen one first
        run_ids.remove(baseline)
        run_ids.insert(0, baseline)
    try:
        result = api.time_to_target(run_ids, key, float(target), direction=direction, baseline=baseline)
    except ApiError as exc:
        return message("Cannot compute time to target", str(exc), kind="error"), placeholder, direction_out
    rel = "≤" if direction == "below" else "≥"
    caption = html.P(f"{key} {rel} {target:.4g}; baseline: {(meta.get(result.get('baseline')) or {}).get('name', result.get('baseline'))}",
                     className="hint")
    return html.Div([caption, ttt_table(result, meta)]), placeholder, direction_out


def _target_for(api: ApiClient, run_ids: Sequence[str], key: str, target, direction) -> tuple[float | None, str]:
    direction = direction if direction in ("below", "above") else default_direction(key)
    if target is None:
        target = default_target(api.series(list(run_ids), [key], points=200), direction)
    return (None if target is None else float(target)), direction


@callback(
    Output(CMP_TTT_GROUPS, "children"),
    Input(ids.CMP_TTT_KEY, "value"),
    Input(ids.CMP_TTT_TARGET, "value"),
    Input(ids.CMP_TTT_DIRECTION, "value"),
    Input(ids.CMP_TTT_BASELINE, "value"),
    Input(CMP_GROUPS, "data"),
    State("cmp-meta", "data"),
)
def group_time_to_target(key, target, direction, baseline, groups, meta):
    """The group table (``/analysis/time-to-target``) above the per-run one, when runs are grouped."""
    meta = meta or {}
    if not (groups or {}).get("grouped") or not key or not meta:
        return None
    api = current_api()
    target, direction = _target_for(api, list(meta), key, target, direction)
    if target is None:
        return None
    try:
        result = api.analysis_time_to_target(list(meta), key, target, direction=direction, baseline_run=baseline,
                                             group_by=CG.group_by_keys(groups.get("group_by")))
    except ApiError as exc:
        return message("Cannot compute the group table", str(exc), kind="error")
    rel = "≤" if direction == "below" else "≥"
    caption = html.P(f"Seed groups: {key} {rel} {target:.4g}; baseline group {result.get('baseline')}; speedup = "
                     "baseline ÷ group with a bootstrap 95 % interval over seeds (paired by seed); an interval "
                     "containing 1 reads “no difference at this n”.", className="hint")
    colors = {g["group"]: group_color(g) for g in groups.get("groups") or []}
    return html.Div([caption, CG.group_ttt_table(result, colors)])


@callback(
    Output(CMP_WHY_A, "options"),
    Output(CMP_WHY_A, "value"),
    Output(CMP_WHY_BASELINE, "options"),
    Output(CMP_WHY_BASELINE, "value"),
    Input(CMP_GROUPS, "data"),
    Input(ids.CMP_TTT_BASELINE, "value"),
    State(CMP_WHY_A, "value"),
    State(CMP_WHY_BASELINE, "value"),
)
def why_sides(groups, baseline_run, a, base):
    """Offer the groups; keep earlier choices that still exist, else A = first non-baseline group."""
    gs = (groups or {}).get("groups") or []
    labels = [g["group"] for g in gs]
    options = [{"label": f"{g['group']} (n={g['n']})", "value": g["group"]} for g in gs]
    default_a, default_base = CG.default_sides(gs, baseline_run)
    base = base if base in labels else default_base
    a = a if a in labels and a != base else (default_a if default_a != base else None)
    return options, a, options, base


@callback(
    Output(CMP_WHY, "children"),
    Input(CMP_WHY_A, "value"),
    Input(CMP_WHY_BASELINE, "value"),
    Input(CMP_WHY_MATCH, "value"),
    Input(CMP_WHY_AT, "value"),
    State(CMP_GROUPS, "data"),
    State(ids.CMP_TTT_KEY, "value"),
    State(ids.CMP_TTT_TARGET, "value"),
    State(ids.CMP_TTT_DIRECTION, "value"),
    State("cmp-meta", "data"),
)
def why(a, base, match, at, groups, key, target, direction, meta):
    """The top lines of ``/analysis/why`` for A vs the baseline group."""
    gs = {g["group"]: g for g in (groups or {}).get("groups") or []}
    if not a or not base or a not in gs or base not in gs or a == base:
        return message("Pick two groups", "Choose A and a baseline (two different groups or runs).")
    api = current_api()
    match = match or "loss"
    direction_v = direction
    if match == "loss":
        if not key:
            return message("Pick a time-to-target metric", "Matching by loss reads each run where it first reached "
                           "the time-to-target metric's target.")
        if at is None:
            at, direction_v = _target_for(api, list(meta or {}), key, target, direction)
        direction_v = direction_v if direction_v in ("below", "above") else default_direction(key)
    run_ids = [*gs[a]["run_ids"], *gs[base]["run_ids"]]
    try:
        result = api.analysis_why(run_ids, a_runs=gs[a]["run_ids"], baseline_runs=gs[base]["run_ids"], match=match,
                                  at=at, key=key if match == "loss" else None, direction=direction_v or "below",
                                  top=WHY_TOP)
    except ApiError as exc:
        return message("Cannot compute the why", str(exc), kind="error")
    return CG.why_panel(result)


# -- spectra / neurons at a matched step ----------------------------------------------------------

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


@callback(
    Output(ids.CMP_SPEC_OVERLAY, "figure"),
    Output(ids.CMP_SPEC_GRID, "figure"),
    Output(ids.CMP_NEURON_OVERLAY, "figure"),
    Output(ids.CMP_NEURON_BOX, "figure"),
    Input(ids.CMP_LAYER, "value"),
    Input(ids.CMP_SOURCE, "value"),
    Input(ids.CMP_MATCH, "value"),
    Input(ids.CMP_AT, "value"),
    State("cmp-meta", "data"),
    State(ids.CMP_KEYS, "data"),
    Input(CMP_GROUPS, "data"),
    Input(CMP_BAND, "value"),
)
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


# -- config diff ----------------------------------------------------------------------------------

def config_diff(meta: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(run names, [(key, value per run)]) for the keys whose values are not all equal; a key missing
    from a run counts as different (shown as —). Optimizer is included: it is the usual difference."""
    flat = {rid: {"optimizer": m.get("optimizer"), **flatten(m.get("config"))} for rid, m in meta.items()}
    keys = sorted({k for f in flat.values() for k in f})
    rows = []
    for k in keys:
        values = [fmt_value(f[k]) if k in f else "—" for f in flat.values()]
        if len(set(values)) > 1:
            rows.append((k, values))
    return [m["name"] for m in meta.values()], rows


@callback(Output(ids.CMP_CONFIG_DIFF, "children"), Input("cmp-meta", "data"))
def show_config_diff(meta):
    """Only the config keys that differ between the runs."""
    meta = meta or {}
    if len(meta) < 2:
        return message("Pick at least two runs to see their config differences")
    names, rows = config_diff(meta)
    if not rows:
        return message("Identical configs", "These runs have the same config and optimizer.")
    head = html.Thead(html.Tr([html.Th("key")] + [html.Th([swatch(rid), n]) for rid, n in zip(meta, names)]))
    body = html.Tbody([html.Tr([html.Td(k, className="kv-key")] + [html.Td(v) for v in values]) for k, values in rows])
    return html.Div(html.Table([head, body], className="data-table", id="cmp-config-table"), style={"overflowX": "auto"})


clientside_callback(
    """(runs, keys, x, smooth, log, metric, target, direction, baseline, layer, source, match, at, groupBy, band,
        ltQ, ltLayer, ltScope, ltX) => {
        if (window.location.pathname !== '/compare') return '';
        const p = new URLSearchParams();
        if (runs && runs.length) p.set('runs', runs.join(','));
        if (keys && keys.length) p.set('keys', keys.join(','));
        if (x && x !== 'step') p.set('x', x);
        if (smooth) p.set('smooth', smooth);
        if (log && log.length) p.set('log', '1');
        if (metric) p.set('metric', metric);
        if (target !== null && target !== undefined) p.set('target', target);
        if (direction) p.set('direction', direction);
        if (baseline) p.set('baseline', baseline);
        if (layer) p.set('layer', layer);
        if (source && source !== 'weight') p.set('source', source);
        if (match && match !== 'step') p.set('match', match);
        if (at !== null && at !== undefined) p.set('at', at);
        if (groupBy && groupBy.length) p.set('group_by', groupBy.join(','));
        if (band && band !== 'minmax') p.set('band', band);
        if (ltQ) p.set('lt_q', ltQ);
        if (ltLayer) p.set('lt_layer', ltLayer);
        if (ltScope && ltScope !== '~all') p.set('lt_scope', ltScope);
        if (ltX && ltX !== 'step') p.set('lt_x', ltX);
        window.history.replaceState(null, '', '/compare?' + p.toString().replace(/%2C/g, ',').replace(/%7E/g, '~'));
        return '';
    }""",
    Output(ids.CMP_URL_SINK, "children"),
    Input(ids.CMP_RUNS, "value"), Input("cmp-keys-select", "value"), Input(ids.CMP_X, "value"),
    Input(ids.CMP_SMOOTH, "value"), Input(ids.CMP_LOG, "value"), Input(ids.CMP_TTT_KEY, "value"),
    Input(ids.CMP_TTT_TARGET, "value"), Input(ids.CMP_TTT_DIRECTION, "value"), Input(ids.CMP_TTT_BASELINE, "value"),
    Input(ids.CMP_LAYER, "value"), Input(ids.CMP_SOURCE, "value"), Input(ids.CMP_MATCH, "value"),
    Input(ids.CMP_AT, "value"), Input(CMP_GROUP_BY, "value"), Input(CMP_BAND, "value"),
    Input(ids.CMP_LT_QUANTITY, "value"), Input(ids.CMP_LT_LAYER, "value"), Input(ids.CMP_LT_BLOCK, "value"),
    Input(ids.CMP_LT_X, "value"),
)

CL.register(dash, groups_id=CMP_GROUPS, band_id=CMP_BAND)  # re-run with this module, per app
