"""The compare page's shared state: the picked runs' metadata and the union of what they logged.

``cmp-meta`` and the merged catalog (``ids.CMP_KEYS``) are what every section reads; they are
computed once in the page's own response (``compare_state``) and again when the picked runs change
(``load_runs``), and the scalar / metric / baseline / layer choices follow them (``fill_controls``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dash import Input, Output, State

from ... import ids
from ...api import ApiClient, ApiError, NotFound
from ...components import message, parse_time
from ...queries import Catalog, natural_key
from ...state import current_api

MAX_RUNS = 50  # the server's /time-to-target takes up to 50 run ids


def parse_run_ids(runs: str | None) -> list[str]:
    """``"a,b,,a"`` -> ``["a", "b"]`` (order kept, duplicates and blanks dropped, capped)."""
    out: list[str] = []
    for part in (runs or "").split(","):
        part = part.strip()
        if part and part not in out:
            out.append(part)
    return out[:MAX_RUNS]


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


def load_runs(run_ids):
    """Per-run metadata and the merged key catalog when the picked runs change."""
    return compare_state(current_api(), run_ids or [])


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


def register(app: Any) -> None:
    """Register the section's callbacks on ``app`` (a Dash app, or the ``dash`` module's global list)."""
    app.callback(
        Output(ids.CMP_META, "data"),
        Output(ids.CMP_KEYS, "data"),
        Output(ids.CMP_MESSAGE, "children"),
        Input(ids.CMP_RUNS, "value"),
        prevent_initial_call=True,
    )(load_runs)
    app.callback(
        Output("cmp-keys-select", "options"),
        Output("cmp-keys-select", "value"),
        Output(ids.CMP_TTT_KEY, "options"),
        Output(ids.CMP_TTT_KEY, "value"),
        Output(ids.CMP_TTT_BASELINE, "options"),
        Output(ids.CMP_TTT_BASELINE, "value"),
        Output(ids.CMP_LAYER, "options"),
        Output(ids.CMP_LAYER, "value"),
        Input(ids.CMP_KEYS, "data"),
        State(ids.CMP_META, "data"),
        State("cmp-keys-select", "value"),
        State(ids.CMP_TTT_KEY, "value"),
        State(ids.CMP_TTT_BASELINE, "value"),
        State(ids.CMP_LAYER, "value"),
        prevent_initial_call=True,
    )(fill_controls)
