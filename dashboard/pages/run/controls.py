"""The run page's controls bar: one set of controls shared by every tab (layer, step, source, x
axis, smoothing, log scale, heatmap rows), the choices each offers for the active tab, and the URL
that mirrors them (``history.replaceState``: the view is shareable without the pages router
re-rendering on each change)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dash import Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from ... import ids
from ...components import control
from ...queries import Catalog
from ...series import X_CHOICES, X_TITLES, block_of
from .catalog_store import ALL_KEYS
from .tabs import TABS
from .tabs.base import ROWS_AUTO, ROWS_BLOCKS, ROWS_LAYERS, Registrar
from .tabs.spectra import SUMMARY_METRICS

CONTROL_NAMES = ("keys", "x", "smooth", "log", "layer", "source", "metric", "rows", "step")
CONTROL_WIDTHS = {"keys": "340px", "smooth": "220px", "layer": "300px", "metric": "170px", "rows": "200px",
                  "step": "400px"}
FOLLOW = "follow"
VIEW_NOTE = "run-view-note"  # a URL layer/step the run lacks, and what is shown instead
SOURCE_LABELS = {"weight": " W", "update": " ΔW", "pre_orth": " before orth.", "post_orth": " after orth."}


def row_options(catalog: Catalog) -> list[dict[str, str]]:
    """Rows of the all-layer heatmaps: automatic, every layer, one per block, or one block's layers."""
    layers: dict[str, None] = {}
    for quantity_layers in catalog.quantities.values():
        layers.update(dict.fromkeys(quantity_layers))
    blocks = list(dict.fromkeys(block_of(layer) for layer in layers))
    return ([{"label": "auto", "value": ROWS_AUTO}, {"label": "every layer", "value": ROWS_LAYERS},
             {"label": "one row per block", "value": ROWS_BLOCKS}]
            + [{"label": f"block {b}", "value": b} for b in blocks if len(blocks) > 1])


@dataclass(slots=True)
class InitialView:
    """Layer, source and step as the page opens, resolved against what the run logged.

    They are resolved on the server, in the page's own response, because Dash 4's dropdown drops a
    value missing from its options: a layout that opened the layer dropdown with no options and the
    slider on 0..1 lost ``?layer=`` and ``?step=`` before any callback saw them. A layer
    or step the run does not have falls back to the first layer / the nearest logged step, and
    ``note`` says so.
    """

    layers: list[str]
    layer: str | None
    sources: list[dict[str, str]]
    source: str | None
    step_min: int = 0
    step_max: int = 1
    step: int | None = None
    marks: dict[int, str] = field(default_factory=dict)
    note: str = ""


def initial_view(catalog: Catalog, tab: str, layer: str | None, source: str | None,
                 step: int | None) -> InitialView:
    """What the controls show first for the URL's tab/layer/source/step (see :class:`InitialView`)."""
    notes = []
    layers = layer_choices(catalog, tab)
    chosen = layer
    if layers and layer not in layers:
        chosen = layers[0]
        if layer:
            notes.append(f"layer “{layer}” is not logged in this run for this tab — showing {chosen}")
    sources = catalog.sv_sources(chosen)
    src = (source if source in sources else sources[0]) if sources else source
    view = InitialView(layers, chosen, [{"label": SOURCE_LABELS[s], "value": s} for s in sources], src, step=step)
    rng = step_range(catalog, tab, chosen, src)
    if rng is not None:
        lo, hi = rng
        view.step_min, view.step_max = lo, (max(hi, lo + 1) if hi == lo else hi)
        view.marks = {lo: str(lo), hi: str(hi)} if hi > lo else {hi: str(hi)}
        if step is None:
            view.step = hi
        else:
            view.step = max(lo, min(step, hi))
            if view.step != step:
                notes.append(f"step {step} is outside the steps logged here ({lo}–{hi}) — "
                             f"showing step {view.step}")
    view.note = "; ".join(notes)
    return view


KEY_OPTIONS_SHOWN = 200  # the key picker lists this many; typing searches every key on the server


def key_options(all_keys: Sequence[str], chosen: Sequence[str], search: str | None = None) -> list[str]:
    """What the key picker offers: the chosen keys, then up to ``KEY_OPTIONS_SHOWN`` keys matching
    ``search`` (a case-insensitive substring; every key when empty). A run with 10,000 keys never
    rendered its page while the picker held all of them as options; the chosen keys stay listed
    because Dash 4's dropdown drops a value missing from its options."""
    needle = (search or "").strip().lower()
    out = list(dict.fromkeys(chosen))
    seen = set(out)
    for key in all_keys:
        if len(out) >= KEY_OPTIONS_SHOWN + len(chosen):
            break
        if key not in seen and (not needle or needle in key.lower()):
            out.append(key)
            seen.add(key)
    return out


def search_keys(search: str | None, all_keys: Sequence[str] | None, chosen: Sequence[str] | None,
                current: Sequence[Any] | None):
    """Server-side key search for the picker (the options follow what the user types)."""
    options = key_options(list(all_keys or []), list(chosen or []), search)
    if options == list(current or []):
        raise PreventUpdate
    return options


def controls_bar(*, catalog: Catalog, keys: Sequence[str], x: str, smooth: float, log_y: bool,
                 view: InitialView, metric: str | None, rows: str | None) -> html.Div:
    """Every control, each in a wrapper ``run-control-<name>`` that the active tab shows or hides."""
    widgets = {
        "keys": ("scalars", dcc.Dropdown(id=ids.RUN_KEYS_SELECT, options=key_options(catalog.global_scalars, keys),
                                         value=list(keys), multi=True,
                                         placeholder=f"pick scalars ({len(catalog.globals)}: type to search)")),
        "x": ("x axis", dcc.RadioItems(id=ids.RUN_X, value=x, inline=True,
                                       options=[{"label": " " + X_TITLES[c].split(" (")[0], "value": c}
                                                for c in X_CHOICES])),
        "smooth": ("smoothing (EMA)", dcc.Slider(id=ids.RUN_SMOOTH, min=0, max=0.99, step=0.01, value=smooth,
                                                 marks={0: "0", 0.5: "0.5", 0.9: "0.9"},
                                                 tooltip={"placement": "bottom"})),
        "log": ("y scale", dcc.Checklist(id=ids.RUN_LOG, options=[{"label": " log", "value": "log"}],
                                         value=["log"] if log_y else [])),
        "layer": ("layer", dcc.Dropdown(id=ids.RUN_LAYER, options=view.layers, value=view.layer, clearable=False,
                                        placeholder="layer")),
        "source": ("spectrum of", dcc.RadioItems(id=ids.RUN_SOURCE, options=view.sources, value=view.source,
                                                 inline=True)),
        "metric": ("all-layer metric", dcc.Dropdown(
            id=ids.RUN_SPEC_METRIC, clearable=False, value=metric if metric in SUMMARY_METRICS else "cond",
            options=[{"label": m.replace("_", " "), "value": m} for m in SUMMARY_METRICS])),
        "rows": ("heatmap rows", dcc.Dropdown(id=ids.RUN_ROWS, clearable=False, options=row_options(catalog),
                                              value=rows or ROWS_AUTO)),
        "step": ("step", html.Div([
            dcc.Slider(id=ids.RUN_STEP, min=view.step_min, max=view.step_max, step=1, value=view.step,
                       marks=view.marks or None, updatemode="mouseup",
                       tooltip={"placement": "bottom", "always_visible": True}),
            dcc.Checklist(id=ids.RUN_FOLLOW, options=[{"label": " follow newest", "value": FOLLOW}], value=[]),
        ])),
    }
    wrappers = []
    for name in CONTROL_NAMES:
        label, widget = widgets[name]
        wrappers.append(control(label, widget, width=CONTROL_WIDTHS.get(name, "auto"), id=ids.control_id(name)))
    return html.Div([html.Div(wrappers, className="controls", id="run-controls"),
                     html.Div(view.note, id=VIEW_NOTE, className="hint")])


def show_controls(tab: str):
    """Show only the controls the active tab uses (hidden ones keep their values)."""
    wanted = next((t.controls for t in TABS if t.id == tab), frozenset())
    return [{"display": "flex" if name in wanted else "none", "minWidth": CONTROL_WIDTHS.get(name, "auto")}
            for name in CONTROL_NAMES]


def layer_choices(catalog: Catalog, tab: str) -> list[str]:
    """Layers that have data for the tab."""
    if tab == "spectra":
        seen: dict[str, None] = {}
        for src in catalog.sv_sources():
            seen.update(dict.fromkeys(catalog.array_layers(f"sv.{src}")))
        return list(seen)
    if tab == "neurons":
        layers = catalog.array_layers("neuron.update_norm")
        return layers or catalog.layers_with("neuron.cv")
    if tab == "gdiff":
        return catalog.layers_with_prefix("fop.") or catalog.layers_with_prefix("gdiff.")
    if tab == "kfac":
        return catalog.layers_with_prefix("kfac.") or catalog.array_layers("kfac.A_eigs")
    if tab == "layers":
        return catalog.layers_with_prefix("")
    return []


def step_range(catalog: Catalog, tab: str, layer: str | None, source: str | None) -> tuple[int, int] | None:
    """The slider's range: the steps at which the tab's array for this layer was logged."""
    key = {"spectra": f"sv.{source}", "neurons": "neuron.update_norm", "kfac": "kfac.A_eigs",
           "infobatch": "infobatch.class_pruned_frac"}.get(tab)
    if key is None:
        return None
    return catalog.array_range(key, "" if tab == "infobatch" else layer)


def layer_options(tab: str, keys: Mapping[str, Any], layer: str | None, current: list[str] | None):
    """Layers with data for the tab; keep the chosen layer when it has data here too. Unchanged
    options and value are not re-sent: every panel listening to the layer would redraw for nothing."""
    options = layer_choices(Catalog.from_store(keys), tab)
    value = (layer if layer in options else options[0]) if options else layer
    if options == (current or []) and value == layer:
        raise PreventUpdate
    return options, value


def source_options(layer: str | None, keys: Mapping[str, Any], source: str | None, current: list | None):
    """Spectrum sources logged for the layer (weight, update, and for Muon pre/post orthogonalization);
    nothing is sent when they did not change (switching layer must not redraw the all-layer panel)."""
    sources = Catalog.from_store(keys).sv_sources(layer)
    options = [{"label": SOURCE_LABELS[s], "value": s} for s in sources]
    value = (source if source in sources else sources[0]) if sources else None
    if options == (current or []) and value == source:
        raise PreventUpdate
    return options, value


def step_slider(tab: str, layer: str | None, source: str | None, keys: Mapping[str, Any],
                follow: Sequence[str] | None, value: int | None, old_min: int, old_max: int,
                old_marks: Mapping[Any, str] | None = None):
    """Slider over the steps the array was logged at. It moves to the newest step only when it sat
    at the newest step before, or "follow newest" is ticked (or nothing is chosen yet): a user
    reading step 120 keeps step 120 while the run logs on. Sends nothing when range and value are
    unchanged (the panels at this step need no redraw)."""
    rng = step_range(Catalog.from_store(keys), tab, layer, source)
    if rng is None:
        raise PreventUpdate
    lo, hi = rng
    top = max(hi, lo + 1) if hi == lo else hi
    # the newest step shown so far: the slider's top mark (its max is lo + 1 for a single step)
    old_newest = max((int(k) for k in (old_marks or {})), default=old_max)
    at_newest = value is not None and int(value) >= old_newest
    to_newest = value is None or at_newest or FOLLOW in (follow or [])
    new_value = hi if to_newest else max(lo, min(int(value), hi))
    if (lo, top, new_value) == (old_min, old_max, value):
        raise PreventUpdate
    marks = {lo: str(lo), hi: str(hi)} if hi > lo else {hi: str(hi)}
    return lo, top, new_value, marks


URL_SYNC_JS = """(runId, tab, layer, step, x, smooth, log, source, metric, keys, rows) => {
    if (!runId || !window.location.pathname.startsWith('/runs/')) return '';
    const p = new URLSearchParams();
    if (tab && tab !== 'scalars') p.set('tab', tab);
    if (layer) p.set('layer', layer);
    if (step !== null && step !== undefined) p.set('step', step);
    if (x && x !== 'step') p.set('x', x);
    if (smooth) p.set('smooth', smooth);
    if (log && log.length) p.set('log', '1');
    if (source) p.set('source', source);
    if (metric && metric !== 'cond') p.set('metric', metric);
    if (keys && keys.length) p.set('keys', keys.join(','));
    if (rows && rows !== 'auto') p.set('rows', rows);
    const s = p.toString();
    window.history.replaceState(null, '', window.location.pathname + (s ? '?' + s : ''));
    return '';
}"""


def register(app: Registrar) -> None:
    """``app``: a Dash app or the ``dash`` module (its global ``callback``)."""
    app.callback([Output(ids.control_id(name), "style") for name in CONTROL_NAMES],
                 Input(ids.RUN_TABS, "value"))(show_controls)
    app.callback(
        Output(ids.RUN_KEYS_SELECT, "options"),
        Input(ids.RUN_KEYS_SELECT, "search_value"), Input(ALL_KEYS, "data"),
        State(ids.RUN_KEYS_SELECT, "value"), State(ids.RUN_KEYS_SELECT, "options"),
        prevent_initial_call=True,
    )(search_keys)
    app.callback(
        Output(ids.RUN_LAYER, "options"), Output(ids.RUN_LAYER, "value"),
        Input(ids.RUN_TABS, "value"), Input(ids.RUN_KEYS, "data"),
        State(ids.RUN_LAYER, "value"), State(ids.RUN_LAYER, "options"),
    )(layer_options)
    app.callback(
        Output(ids.RUN_SOURCE, "options"), Output(ids.RUN_SOURCE, "value"),
        Input(ids.RUN_LAYER, "value"), Input(ids.RUN_KEYS, "data"),
        State(ids.RUN_SOURCE, "value"), State(ids.RUN_SOURCE, "options"),
    )(source_options)
    app.callback(
        Output(ids.RUN_STEP, "min"), Output(ids.RUN_STEP, "max"), Output(ids.RUN_STEP, "value"),
        Output(ids.RUN_STEP, "marks"),
        Input(ids.RUN_TABS, "value"), Input(ids.RUN_LAYER, "value"), Input(ids.RUN_SOURCE, "value"),
        Input(ids.RUN_KEYS, "data"), Input(ids.RUN_FOLLOW, "value"),
        State(ids.RUN_STEP, "value"), State(ids.RUN_STEP, "min"), State(ids.RUN_STEP, "max"),
        State(ids.RUN_STEP, "marks"),
    )(step_slider)
    # the fallback note is about the link that opened the page: gone once the user picks a layer or step
    app.clientside_callback("() => ''", Output(VIEW_NOTE, "children"), Input(ids.RUN_LAYER, "value"),
                            Input(ids.RUN_STEP, "value"), prevent_initial_call=True)
    app.clientside_callback(
        URL_SYNC_JS, Output(ids.RUN_URL_SINK, "children"),
        Input(ids.RUN_ID, "data"), Input(ids.RUN_TABS, "value"), Input(ids.RUN_LAYER, "value"),
        Input(ids.RUN_STEP, "value"), Input(ids.RUN_X, "value"), Input(ids.RUN_SMOOTH, "value"),
        Input(ids.RUN_LOG, "value"), Input(ids.RUN_SOURCE, "value"), Input(ids.RUN_SPEC_METRIC, "value"),
        Input(ids.RUN_KEYS_SELECT, "value"), Input(ids.RUN_ROWS, "value"),
    )
