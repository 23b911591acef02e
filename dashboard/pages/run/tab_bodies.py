"""Which tab bodies the run page holds, and which one shows.

A tab's body (its graphs, and the stores its server callbacks fill) enters the page the first time
the tab is opened, and stays. Why not every body at once: a body in the page is drawn even while
hidden — plotly lays out axes and ticks for each empty graph — and each of its callbacks makes a
round trip only to find its tab hidden. On a run that logs everything that was 23 hidden graphs
and 15 empty round trips on every page load. The scalars body is always in the page: its charts
are drawn in the page's own response, and its callbacks only fire on a change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dash import Input, Output, State, dcc, html, no_update
from dash.development.base_component import Component

from ... import ids
from . import keep_view
from .tabs import BY_ID, TAB_IDS, TABS
from .tabs.base import Registrar

MOUNTED = "run-tabs-mounted"  # ids of the tabs whose body is in the page
ALWAYS = "scalars"
LAZY = tuple(t for t in TAB_IDS if t != ALWAYS)


def body(tab: str) -> list[Any]:
    """A lazily mounted tab's body with the stores its keep-view panels are filled through."""
    content = BY_ID[tab].body()
    return [content, *keep_view.stores_in(content)]


def bodies(active: str, scalars_body: Component) -> tuple[html.Div, dcc.Store]:
    """Every tab's container, for the page layout: the scalars body and the active tab's filled,
    the rest empty until opened; and the store naming the mounted ones."""
    mounted = [ALWAYS] if active == ALWAYS else [ALWAYS, active]
    divs = [html.Div(scalars_body if t.id == ALWAYS else (body(t.id) if t.id in mounted else []),
                     id=ids.tab_body_id(t.id), style={"display": "block" if t.id == active else "none"})
            for t in TABS]
    return html.Div(divs, id=ids.RUN_TAB_BODY), dcc.Store(id=MOUNTED, data=mounted)


def show_tab(tab: str, mounted: Sequence[str] | None) -> tuple[Any, ...]:
    """Show the active tab's body, mounting it the first time it is opened."""
    mounted = list(mounted or [ALWAYS])
    styles = [{"display": "block" if t == tab else "none"} for t in TAB_IDS]
    if tab not in LAZY or tab in mounted:
        return (*styles, *(no_update for _ in LAZY), no_update)
    children = [body(t) if t == tab else no_update for t in LAZY]
    return (*styles, *children, [*mounted, tab])


def register(app: Registrar) -> None:
    """``app``: a Dash app or the ``dash`` module (its global ``callback``)."""
    app.callback(
        *(Output(ids.tab_body_id(t), "style") for t in TAB_IDS),
        *(Output(ids.tab_body_id(t), "children") for t in LAZY),
        Output(MOUNTED, "data"),
        Input(ids.RUN_TABS, "value"), State(MOUNTED, "data"),
        prevent_initial_call=True,  # the layout already shows and holds the tab it opens on
    )(show_tab)
