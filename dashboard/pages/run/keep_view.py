"""Redraws that keep the user's view: the run page's heavy panels (heatmaps, spectra, per-layer
lines) are redrawn whole while a run is live, and a zoom must survive that.

Why ``uirevision`` alone does not keep it: on a mouse zoom, Dash 4's ``dcc.Graph`` writes the
zoomed axis (``range``, ``autorange: false``) back into its own ``figure`` prop and re-plots with
it; plotly then sees an axis range *given by the figure* rather than a GUI edit, and drops the
pre-GUI record ``uirevision`` restores from. The next figure from the server leaves ``range`` unset,
so plotly autoranges: a heatmap zoomed to steps 39–117 was back at 0–400 on the next refresh. (The
scalar charts kept their zoom only because they are appended to with ``Patch``, which leaves the
written-back layout alone.)

So a panel's server callback fills a store (``output``), and a clientside callback hands the
figure to the graph, carrying over each zoomed axis (``autorange: false`` with a range in the
graph's current figure) when the new figure has the same ``uirevision`` — the same panel, layer and
run. A double-click (autorange) is written back as ``autorange: true`` and is not carried, so the
new data is autoranged again. Nothing extra travels to the server.
"""

from __future__ import annotations

from dash import Input, Output, State, dcc
from dash.development.base_component import Component

from ... import ids
from .tabs.base import Registrar

# The figure outputs of every tab but Scalars (whose charts are appended to with ``Patch``).
GRAPHS = (
    ids.RUN_SPEC_HEATMAP, ids.RUN_SPEC_AT_STEP, ids.RUN_SPEC_SUMMARY,
    ids.RUN_NEURON_DIST, ids.RUN_NEURON_V, ids.RUN_NEURON_CV, ids.RUN_NEURON_FROZEN, ids.RUN_NEURON_ROWS,
    ids.RUN_GDIFF_PARTS, ids.RUN_GDIFF_SPROJ, ids.RUN_GDIFF_BETA, ids.RUN_GDIFF_SUMMARY, ids.RUN_GDIFF_NOISE,
    ids.RUN_GDIFF_KL,
    ids.RUN_KFAC_EIGS, ids.RUN_KFAC_DAMPING, ids.RUN_KFAC_SPECTRUM,
    ids.RUN_IB_PRUNED, ids.RUN_IB_SAVED, ids.RUN_IB_THRESHOLD, ids.RUN_IB_CLASS,
    ids.RUN_LAYERS_HEATMAP, ids.RUN_LAYERS_LINE,
)

KEEP_VIEW_JS = """(fresh, current) => {
    if (!fresh) return window.dash_clientside.no_update;
    const layout = fresh.layout || {};
    const shown = (current && current.layout) || {};
    const rev = layout.uirevision;
    if (rev === undefined || rev === null || rev !== shown.uirevision) return fresh;
    const kept = {...layout};
    let carried = false;
    for (const [name, axis] of Object.entries(shown)) {
        const zoomed = axis && axis.autorange === false && Array.isArray(axis.range);
        if (!/^[xy]axis[0-9]*$/.test(name) || !zoomed) continue;
        kept[name] = {...(layout[name] || {}), range: axis.range.slice(), autorange: false};
        carried = true;
    }
    return carried ? {...fresh, layout: kept} : fresh;
}"""


def store_id(graph_id: str) -> str:
    """The store a panel's server callback fills with its new figure."""
    return f"{graph_id}-fresh"


def output(graph_id: str) -> Output:
    """Where a heavy panel's callback sends its figure (instead of the graph's ``figure``)."""
    if graph_id not in GRAPHS:
        raise ValueError(f"graph_id: {graph_id!r} is not a keep-view panel (add it to keep_view.GRAPHS)")
    return Output(store_id(graph_id), "data")


def stores_in(body: Component) -> list[dcc.Store]:
    """The stores of the keep-view panels in ``body``, to sit beside them: they enter the page with
    their tab's body, so a panel's callback has nothing to fill (and does not fire) before that."""
    found = set(body)  # a component iterates over the ids of everything inside it
    return [dcc.Store(id=store_id(g)) for g in GRAPHS if g in found]


def register(app: Registrar) -> None:
    """``app``: a Dash app or the ``dash`` module (its global ``callback``)."""
    for graph_id in GRAPHS:
        app.clientside_callback(KEEP_VIEW_JS, Output(graph_id, "figure"), Input(store_id(graph_id), "data"),
                                State(graph_id, "figure"))
