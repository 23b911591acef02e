"""Run page ("/runs/<run_id>"): every diagnostic of one run, live while it runs.

Shape: a header (``header``), a controls bar shared by every tab (``controls``: one source of
truth, mirrored into the URL), and one body per tab (``tabs/<tab>.py``: its graphs and callbacks);
a tab's body enters the page when the tab is first opened (``tab_bodies``). Tabs the run logged
nothing for are left out of the strip, and a note names the ``probe.attach`` option that turns each
one on.

Live: a ``dcc.Interval`` drives the scalar charts' ``Patch`` appends (``tabs/scalars``) and, on a
slower beat, the header and data version the heavier panels listen to (``live``); those panels
are redrawn whole and keep the user's zoom (``keep_view``).

The page's callbacks register when this module runs (the app re-executes it per app, see
``dashboard.app._load_pages``), so each submodule exposes ``register`` instead of decorating at
import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dash
from dash import dcc, html

from ... import ids
from ...api import ApiError, NotFound
from ...components import message
from ...queries import Catalog
from ...series import X_CHOICES, X_STEP
from ...state import current_api, current_config
from . import catalog_store, controls, keep_view, live, tab_bodies
from .header import created_ts, header
from .tabs import MODULES, TAB_IDS, TABS, Tab
from .tabs import scalars as scalars_tab

TITLE = "Optiscope · run"


def _float_or(value: str | None, default: float, lo: float, hi: float) -> float:
    try:
        return min(max(float(value), lo), hi) if value else default
    except ValueError:
        return default


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def visible_tabs(catalog: Catalog, run: Mapping[str, Any], wanted: str) -> list[Tab]:
    """Tabs with data for this run (and the one the URL asks for, so a shared link still opens)."""
    return [t for t in TABS if t.has_data(catalog) or t.id == wanted]


def hidden_note(catalog: Catalog, shown: Sequence[Tab]) -> str:
    """Which tabs are left out for lack of data, and the option that turns each on."""
    left_out = [t for t in TABS if t not in shown and t.enable]
    if not left_out:
        return ""
    return "Not logged for this run: " + "; ".join(
        f"{t.label} (probe.attach(..., {t.enable}))" for t in left_out) + "."


def layout(run_id: str | None = None, tab: str | None = None, layer: str | None = None, step: str | None = None,
           x: str | None = None, smooth: str | None = None, log: str | None = None, source: str | None = None,
           metric: str | None = None, keys: str | None = None, rows: str | None = None, **_: Any) -> html.Div:
    """Fetch the run and its key catalog once; a missing run or server is a message, not a traceback."""
    api = current_api()
    try:
        run = api.get_run(run_id or "")
        catalog = Catalog.from_keys(api.keys(run["id"]))
    except NotFound:
        return html.Div([
            message("Run not found", f"There is no run with id “{run_id}”. It may have been deleted, or the "
                    "link is mistyped.", kind="error", id="run-not-found"),
            dcc.Link("← all runs", href="/"),
        ])
    except ApiError as exc:
        return message("Cannot load this run", str(exc), kind="error")

    cfg = current_config()
    tab = tab if tab in TAB_IDS else "scalars"
    x = x if x in X_CHOICES else X_STEP
    smooth_v = _float_or(smooth, 0.0, 0.0, 0.99)
    chosen = [k for k in (keys.split(",") if keys else []) if k in catalog.globals]
    chosen = chosen or scalars_tab.default_keys(catalog.global_scalars)
    log_y = log in ("1", "true", "log")
    # A "crashed" run (no heartbeat for a while) may resume sending, so only finished runs stop polling.
    live_run = run.get("status") != "finished"
    # The first scalar charts are drawn here, in the page's own response: one round trip less
    # before the page is useful (draw_scalars takes over for later changes).
    first, cursor = ([], None)
    if tab == "scalars":
        first, cursor = scalars_tab.first_graphs(api, run["id"], chosen, x=x, smooth=smooth_v, log_y=log_y,
                                                 origin=created_ts(run), points=cfg.series_points)
    shown = visible_tabs(catalog, run, tab)
    bodies, mounted = tab_bodies.bodies(tab, scalars_tab.body(first, chosen))
    return html.Div(
        [
            dcc.Store(id=ids.RUN_ID, data=run["id"]),
            dcc.Store(id=ids.RUN_KEYS, data=catalog_store.panel_store(catalog)),
            dcc.Store(id=catalog_store.ALL_KEYS, data=catalog_store.all_keys(catalog)),
            dcc.Store(id=ids.RUN_CURSOR, data=cursor),
            dcc.Store(id=ids.RUN_STATE, data={"status": run.get("status"), "last_step": run.get("last_step"),
                                              "version": 0, "created_at": created_ts(run)}),
            dcc.Interval(id=ids.RUN_INTERVAL, interval=cfg.poll_interval_ms, disabled=not live_run),
            html.Div(id=ids.RUN_HEADER, children=header(run), className="run-header"),
            dcc.Tabs(id=ids.RUN_TABS, value=tab, children=[
                dcc.Tab(label=t.label_for(run) if t.label_for else t.label, value=t.id) for t in shown]),
            html.Div(hidden_note(catalog, shown), id=ids.RUN_TAB_NOTE, className="hint"),
            controls.controls_bar(catalog=catalog, keys=chosen, x=x, smooth=smooth_v, log_y=log_y, metric=metric,
                                  rows=rows, view=controls.initial_view(catalog, tab, layer, source,
                                                                        _int_or_none(step))),
            bodies,
            mounted,
            html.Div(id=ids.RUN_URL_SINK, hidden=True),
        ]
    )


controls.register(dash)
live.register(dash)
keep_view.register(dash)
tab_bodies.register(dash)
for _module in MODULES:
    _module.register(dash)
