"""Compare page ("/compare?runs=a,b,c"): 2 to 50 runs side by side, or as seed groups.

Overlaid scalars on a common x axis (step, wall time since start, samples seen); spectra and
neuron-norm distributions at a matched step or matched samples seen, overlaid and as small
multiples (the cross-run histogram comparison other trackers lack); a config diff showing only what
differs; and the time-to-target table computed by the server's ``/time-to-target``.

Groups (``group_by=`` config keys / ``tags``, by default everything but the seed when seeds repeat):
scalar panels show each group's mean with a band and its members on demand, the group time-to-target
table has bootstrap 95 % intervals over seeds (``/analysis/time-to-target``), and the "why" panel lists
the ranked per-layer differences between two groups (``/analysis/why``), each linking to the run-page
panel that shows it. The builders are in ``groups`` and ``dashboard.group_figures``.

Requests for many runs go out concurrently (``ApiClient.map``) or as one multi-run ``/series``.

Shape: one module per section, each with its layout (``section``) and its callbacks (``register``):
``picker`` (the runs), ``state`` (the picked runs' metadata and merged catalog, and the controls
that follow them), ``groups``, ``scalars``, ``time_to_target``, ``why``, ``layers`` (per-layer
diagnostics over time), ``matched`` (spectra and neuron norms at a matched point), ``config_diff``
and ``url`` (the query string); ``paint`` holds the colour helpers they share and ``page_ids`` the
ids of the stores several read. The callbacks register when this module runs (the app re-executes
it per app, see ``dashboard.app._load_pages``), so each submodule exposes ``register`` instead of
decorating at import.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import dash
from dash import dcc, html

from ... import ids
from ...api import ApiError
from ...components import message
from ...state import current_api
# the names tests, tools and other modules use (``dashboard.pages.compare.<name>``)
from .config_diff import config_diff, show_config_diff
from .groups import initial_groups, update_groups
from .matched import MATCH_SAMPLES, MATCH_STEP, SMALL_MULTIPLES_MAX, group_matched_overlays, matched_panels, matched_steps
from .page_ids import (CMP_BAND, CMP_GROUP_BY, CMP_GROUPS, CMP_GROUPS_SUMMARY, CMP_MEMBERS, CMP_TTT_GROUPS, CMP_WHY,
                       CMP_WHY_A, CMP_WHY_AT, CMP_WHY_BASELINE, CMP_WHY_MATCH)
from .paint import group_color, paint, swatch
from .picker import PICKER_MATCHES, PICKER_RECENT, run_option, search_run_options
from .scalars import CHART_POINT_BUDGET, draw_scalars, group_scalar_figure, overlay_lines
from .state import (MAX_RUNS, compare_state, controls_for, fill_controls, load_runs, parse_run_ids, run_meta,
                    union_catalog)
from .time_to_target import default_direction, default_target, group_time_to_target, time_to_target, ttt_table
from .why import WHY_TOP, why, why_sides

TITLE = "Optiscope · compare"


def _section(name: str) -> ModuleType:
    """A section module by name. Not ``from . import why``: three sections share their name with a
    function re-exported above (``why``, ``time_to_target``, ``config_diff``), and when the app
    re-executes this module that form would find the function the last run bound here."""
    return importlib.import_module(f"{__name__}.{name}")


CG, CL = _section("groups"), _section("layers")
picker, state, scalars, matched, url = (_section(n) for n in ("picker", "state", "scalars", "matched", "url"))
ttt, why_section, config_diff_section = (_section(n) for n in ("time_to_target", "why", "config_diff"))


def layout(runs: str | None = None, keys: str | None = None, x: str | None = None, layer: str | None = None,
           source: str | None = None, match: str | None = None, at: str | None = None, metric: str | None = None,
           target: str | None = None, direction: str | None = None, baseline: str | None = None,
           smooth: str | None = None, log: str | None = None, group_by: str | None = None, band: str | None = None,
           lt_q: str | None = None, lt_layer: str | None = None, lt_scope: str | None = None, lt_x: str | None = None,
           **_: Any) -> html.Div:
    """Controls from the query string; every panel is filled by its callback."""
    run_ids = state.parse_run_ids(runs)
    api = current_api()
    try:
        all_runs, options, valid, notes = picker.picker_choices(api, run_ids)
    except ApiError as exc:
        return message("Cannot reach the server", str(exc), kind="error")
    # Everything the panels need to start is computed here, in the page's own response, so the
    # panels' callbacks fire at once instead of after two more round trips.
    listed = {r["id"]: r for r in all_runs}
    meta, catalog, note = state.compare_state(api, valid, listed)
    controls = state.controls_for(catalog, meta, keys.split(",") if keys else None, metric, baseline, layer)
    grouping, groups = CG.initial_groups(api, meta, CG.parse_group_by(group_by))
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
            picker.picker_row(options, valid),
            CG.group_by_row(meta, grouping, groups),
            dcc.Store(id=CMP_GROUPS, data=groups),
            dcc.Store(id=ids.CMP_KEYS, data=catalog),
            dcc.Store(id=ids.CMP_META, data=meta),
            scalars.section(controls[0], controls[1], x, smooth_v, log, band,
                            scalars.first_charts(controls[1], x, smooth_v, log, meta, groups, band)),
            ttt.section(controls[2], controls[3], target_v, direction, controls[4], controls[5]),
            why_section.section(),
            CL.section(lt, lt_x),
            matched.section(controls[6], controls[7], source, match, at_v),
            config_diff_section.section(),
            html.Div(id=ids.CMP_URL_SINK, hidden=True),
        ]
    )


for _module in (picker, state, CG, scalars, ttt, why_section, matched, config_diff_section, url):
    _module.register(dash)
CL.register(dash, groups_id=CMP_GROUPS, band_id=CMP_BAND)  # re-run with this module, per app
