"""The run page's slow beat: header, data version and key catalog refreshed while the run is live.

The scalar charts append on every poll (``tabs/scalars``); the heavier panels listen to the data
version in ``RUN_STATE``, bumped here only when the run's last step or status moved.
"""

from __future__ import annotations


from dash import Input, Output, State, no_update
from dash.exceptions import PreventUpdate

from ... import ids
from ...api import ApiError
from ...queries import Catalog
from ...state import current_api
from .catalog_store import ALL_KEYS, all_keys, panel_store
from .header import header
from .tabs.base import Registrar

HEAVY_REFRESH_TICKS = 5  # heavy panels refresh at most every 5 polls while live


def poll_state(n, run_id, state):
    """Every few polls: refresh the header, bump the data version when the run advanced (heavy panels
    listen to it), and stop polling once the run finished."""
    if (n or 0) % HEAVY_REFRESH_TICKS:
        raise PreventUpdate
    try:
        run = current_api().get_run(run_id)
    except ApiError:
        raise PreventUpdate
    state = dict(state or {})
    changed = run.get("last_step") != state.get("last_step") or run.get("status") != state.get("status")
    if not changed:
        raise PreventUpdate
    state.update(status=run.get("status"), last_step=run.get("last_step"), version=int(state.get("version", 0)) + 1)
    return state, header(run), run.get("status") == "finished"


def refresh_catalog(_state, run_id, old):
    """New layers/keys appear while a run is live: refresh the catalog when the run advanced (the
    full key list only when the number of keys changed)."""
    try:
        catalog = Catalog.from_keys(current_api().keys(run_id))
    except ApiError:
        raise PreventUpdate
    new = panel_store(catalog)
    if new == old:
        raise PreventUpdate
    keys = all_keys(catalog) if new.get("n_globals") != (old or {}).get("n_globals") else no_update
    return new, keys


def register(app: Registrar) -> None:
    """``app``: a Dash app or the ``dash`` module (its global ``callback``)."""
    app.callback(
        Output(ids.RUN_STATE, "data"), Output(ids.RUN_HEADER, "children"), Output(ids.RUN_INTERVAL, "disabled"),
        Input(ids.RUN_INTERVAL, "n_intervals"), State(ids.RUN_ID, "data"), State(ids.RUN_STATE, "data"),
        prevent_initial_call=True,
    )(poll_state)
    app.callback(
        Output(ids.RUN_KEYS, "data"), Output(ALL_KEYS, "data"),
        Input(ids.RUN_STATE, "data"), State(ids.RUN_ID, "data"), State(ids.RUN_KEYS, "data"),
        prevent_initial_call=True,
    )(refresh_catalog)
