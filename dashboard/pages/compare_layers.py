"""The compare page's per-layer comparison over time: one per-layer diagnostic, one layer or an
all-layer aggregate, every selected run (or group) against step or samples seen.

The matched-step panels answer "how do the spectra differ at step 400"; this one answers "when did
NorMuon's neuron norms become more even than Muon's, and in which layers" — the question issue 19
found could only be asked one step at a time. An aggregate is taken per run and per logged step over
the layers that logged the diagnostic at that step (median, or max: the worst layer), optionally over
one block (``blocks.3``) or one layer role (``blocks.*.fc.weight``) only.

Pure builders; the callback lives in ``compare.py``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import figures as F
from ..series import block_of

__all__ = ["AGG_MEDIAN", "AGG_MAX", "ALL_LAYERS", "PREFERRED", "quantity_options", "default_quantity",
           "layer_options", "scope_options", "layers_in_scope", "aggregate", "role_of"]

AGG_MEDIAN = "~median"
AGG_MAX = "~max"
AGGREGATES = {AGG_MEDIAN: "median over layers", AGG_MAX: "max over layers"}
ALL_LAYERS = "~all"
# the diagnostics issue 19 names, offered first; any other per-layer quantity follows
PREFERRED = ("neuron.", "sv.", "update_ratio", "gdiff.", "kfac.")


def _rank(quantity: str) -> tuple[int, str]:
    return next((i for i, p in enumerate(PREFERRED) if quantity.startswith(p)), len(PREFERRED)), quantity


def quantity_options(quantities: Mapping[str, Sequence[str]]) -> list[str]:
    """Per-layer quantities any picked run logged, the named diagnostics first."""
    return sorted(quantities, key=_rank)


def default_quantity(quantities: Mapping[str, Sequence[str]], wanted: str | None) -> str | None:
    options = quantity_options(quantities)
    return wanted if wanted in options else (options[0] if options else None)


def role_of(layer: str) -> str:
    """``blocks.3.fc.weight`` -> ``blocks.*.fc.weight`` (layers of one kind across blocks)."""
    return re.sub(r"(^|\.)\d+(?=\.|$)", r"\1*", layer)


def layer_options(layers: Sequence[str]) -> list[dict[str, str]]:
    """The aggregates, then every layer that logged the quantity (model order)."""
    return [{"label": label, "value": v} for v, label in AGGREGATES.items()] + \
        [{"label": layer, "value": layer} for layer in layers]


def scope_options(layers: Sequence[str]) -> list[dict[str, str]]:
    """Which layers an aggregate runs over: all, one layer role (``blocks.*.fc.weight``), or one block."""
    roles = [r for r in dict.fromkeys(role_of(layer) for layer in layers) if "*" in r]
    blocks = [b for b in dict.fromkeys(block_of(layer) for layer in layers)]
    return ([{"label": "all layers", "value": ALL_LAYERS}] + [{"label": f"role {r}", "value": f"role:{r}"} for r in roles]
            + ([{"label": f"block {b}", "value": f"block:{b}"} for b in blocks] if len(blocks) > 1 else []))


def layers_in_scope(layers: Sequence[str], scope: str | None) -> list[str]:
    if not scope or scope == ALL_LAYERS:
        return list(layers)
    kind, _, name = scope.partition(":")
    if kind == "role":
        return [layer for layer in layers if role_of(layer) == name]
    if kind == "block":
        return [layer for layer in layers if block_of(layer) == name]
    return list(layers)


def aggregate(per_layer: Sequence[tuple[Sequence[int], Sequence[float]]], agg: str) -> tuple[list[int], list[float]]:
    """(steps, value) of the median or max over layers at each step any layer logged, over the layers
    with a finite value there (a layer logging every 25 steps does not blank the others' steps)."""
    steps = sorted({int(s) for st, _ in per_layer for s in st})
    if not steps:
        return [], []
    index = {s: i for i, s in enumerate(steps)}
    grid = np.full((len(per_layer), len(steps)), np.nan)
    for row, (st, ys) in enumerate(per_layer):
        for s, y in zip(st, ys):
            grid[row, index[int(s)]] = y
    grid[~np.isfinite(grid)] = np.nan
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step where no layer has a finite value
        vals = np.nanmax(grid, axis=0) if agg == AGG_MAX else np.nanmedian(grid, axis=0)
    return steps, [float(v) for v in vals]


def title(quantity: str, layer: str, scope: str | None, n: int, unit: str) -> str:
    what = AGGREGATES.get(layer)
    if what:
        where = "" if not scope or scope == ALL_LAYERS else f" ({scope.replace(':', ' ', 1)})"
        return f"{quantity}: {what}{where} — {n} {unit}"
    return f"{quantity} — {layer} — {n} {unit}"


def series_lines(series: Sequence[Mapping[str, Any]], meta: Mapping[str, Mapping[str, Any]], quantity: str,
                 layer: str, layers: Sequence[str], colors: Mapping[str, tuple[str, str]]
                 ) -> list[tuple[str, F.Line]]:
    """(run id, line) per run that logged it: the layer's series, or the aggregate over ``layers``; ``colors``: run id ->
    (colour, dash). ``x`` is the step; the caller converts to samples seen."""
    by_run: dict[str, dict[str, Mapping[str, Any]]] = {}
    for s in series:
        by_run.setdefault(s["run_id"], {})[s["key"]] = s
    lines = []
    for rid, m in meta.items():
        got = by_run.get(rid, {})
        if layer in AGGREGATES:
            per = [(got[k]["steps"], got[k]["y"]) for k in (f"{quantity}/{lay}" for lay in layers) if k in got]
            steps, ys = aggregate(per, layer)
        else:
            s = got.get(f"{quantity}/{layer}")
            steps, ys = (list(s["steps"]), list(s["y"])) if s else ([], [])
        if steps:
            color, dash = colors[rid]
            lines.append((rid, F.Line(m["name"], [float(v) for v in steps], ys, color=color, steps=steps, dash=dash)))
    return lines
