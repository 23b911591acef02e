"""The compare page's URL: every control mirrored into the query string (``history.replaceState``),
so a link restores the selection; defaults are left out to keep links short.
"""

from __future__ import annotations

from typing import Any

from dash import Input, Output

from ... import ids
from .page_ids import CMP_BAND, CMP_GROUP_BY


def register(app: Any) -> None:
    """Register the URL sync (a clientside callback: no server round trip per change)."""
    app.clientside_callback(
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
