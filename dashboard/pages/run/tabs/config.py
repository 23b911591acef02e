"""Config tab: the run's config (flattened, dotted keys), its bookkeeping and tags."""

from __future__ import annotations

from dash import Input, Output, State, html

from .... import ids
from ....components import flatten, key_value_table, message
from ....state import current_api
from .base import Registrar, Tab, only_on


def body() -> html.Div:
    return html.Div(id=ids.RUN_CONFIG)


TAB = Tab("config", "Config", frozenset(), "", body)


def show_config(tab, run_id):
    """The run's config (flattened, dotted keys) and its bookkeeping."""
    only_on(tab, "config")
    run = current_api().get_run(run_id)
    meta = [(k, run.get(k)) for k in ("id", "project", "name", "optimizer", "status", "host", "world_size", "rank",
                                       "created_at", "finished_at", "last_step")]
    cfg = sorted(flatten(run.get("config")).items())
    return html.Div([
        html.H3("config"),
        key_value_table(cfg, id="run-config-table") if cfg else message("No config logged",
                                                                          "pass config={...} to probe.init"),
        html.H3("run"),
        key_value_table(meta),
        html.H3("tags"),
        html.Div(", ".join(run.get("tags") or []) or "—"),
    ])


def register(app: Registrar) -> None:
    app.callback(Output(ids.RUN_CONFIG, "children"), Input(ids.RUN_TABS, "value"),
                 State(ids.RUN_ID, "data"))(show_config)
