"""What each panel asks of the query API, shaped for ``figures.py``.

Pages stay small (controls in, figure out) and the run and compare pages share one way of turning
``/series`` and ``/arrays`` answers into lines, matrices and layer grids. Large data stays on the
server: series are downsampled there (min/max, spikes kept) and array steps subsampled there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .api import ApiClient
from .figures import Line
from .series import X_SAMPLES, X_TIME, layer_grid, relative_time, split_layer_key, steps_to_samples, Grid

SV_SOURCES = ("weight", "update", "pre_orth", "post_orth")
SV_METRICS = ("cond", "stable_rank", "spectral_norm", "eff_rank")


def natural_key(name: str) -> list[Any]:
    """Sort key that orders embedded numbers numerically (``blocks.2`` < ``blocks.10``), which is how
    ``named_parameters()`` lists layers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@dataclass(slots=True)
class Catalog:
    """What one run has logged (from ``/runs/{id}/keys``), indexed the ways the pages ask.

    Kept compact because it rides in a ``dcc.Store`` that several callbacks receive as State: a
    48-layer run has ~300 per-layer series, but the pages only need which layers have which quantity.
    """

    globals: dict[str, int] = field(default_factory=dict)  # scalar key without a layer -> last step
    quantities: dict[str, list[str]] = field(default_factory=dict)  # per-layer quantity -> layers
    arrays: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # key -> layer -> [first, last step]
    last_step: int | None = None  # over every scalar series

    @classmethod
    def from_keys(cls, keys: Mapping[str, Sequence[Mapping[str, Any]]]) -> "Catalog":
        cat = cls()
        for row in keys.get("scalars", []):
            last = int(row.get("last_step") or 0)
            cat.last_step = last if cat.last_step is None else max(cat.last_step, last)
            quantity, layer = split_layer_key(row["key"])
            if layer is None:
                cat.globals[row["key"]] = last
            else:
                cat.quantities.setdefault(quantity, []).append(layer)
        for row in keys.get("arrays", []):
            cat.arrays.setdefault(row["key"], {})[row.get("layer") or ""] = [int(row.get("first_step") or 0),
                                                                             int(row.get("last_step") or 0)]
        # model order, not the server's alphabetical order: block2 before block10
        cat.quantities = {q: sorted(layers, key=natural_key) for q, layers in cat.quantities.items()}
        cat.arrays = {k: dict(sorted(v.items(), key=lambda kv: natural_key(kv[0]))) for k, v in cat.arrays.items()}
        return cat

    @classmethod
    def from_store(cls, data: Mapping[str, Any] | None) -> "Catalog":
        """Rebuild from the JSON kept in a ``dcc.Store``."""
        data = data or {}
        return cls(dict(data.get("globals", {})), {k: list(v) for k, v in data.get("quantities", {}).items()},
                   {k: dict(v) for k, v in data.get("arrays", {}).items()}, data.get("last_step"))

    def to_store(self) -> dict[str, Any]:
        return {"globals": self.globals, "quantities": self.quantities, "arrays": self.arrays,
                "last_step": self.last_step}

    @property
    def global_scalars(self) -> list[str]:
        """Scalar keys without a layer, ``loss`` first, then alphabetical (what the scalars tab lists)."""
        return sorted(self.globals, key=lambda k: (k != "loss", not k.startswith(("acc", "val")),
                                                   k.startswith("infobatch."), k))

    def layers_with(self, quantity: str) -> list[str]:
        return list(self.quantities.get(quantity, []))

    def layers_with_prefix(self, prefix: str) -> list[str]:
        seen: dict[str, None] = {}
        for q, layers in self.quantities.items():
            if q.startswith(prefix):
                seen.update(dict.fromkeys(layers))
        return list(seen)

    def array_layers(self, key: str) -> list[str]:
        return list(self.arrays.get(key, {}))

    def sv_sources(self, layer: str | None = None) -> list[str]:
        """Spectrum sources logged (for one layer, or any)."""
        return [s for s in SV_SOURCES if f"sv.{s}" in self.arrays and (layer is None or layer in self.arrays[f"sv.{s}"])]

    def array_range(self, key: str, layer: str | None) -> tuple[int, int] | None:
        rng = self.arrays.get(key, {}).get(layer or "")
        return (int(rng[0]), int(rng[1])) if rng else None


def x_lines(
    api: ApiClient,
    run_id: str,
    keys: Sequence[str],
    *,
    x: str,
    names: Mapping[str, str] | None = None,
    origin: float | None = None,
    points: int | None = None,
    after_step: int | None = None,
) -> list[Line]:
    """One :class:`Line` per key, x in the chosen unit.

    ``x="time"`` asks the server for times and shows seconds since ``origin`` (run start);
    ``x="samples"`` asks for steps and maps them through the run's ``samples_seen`` series.
    Keys with no points are returned as empty lines so traces keep a fixed order.
    """
    wire_x = "time" if x == X_TIME else "step"
    found = {s["key"]: s for s in api.series([run_id], list(keys), x=wire_x, points=points, after_step=after_step)}
    ref: tuple[list[int], list[float]] | None = None
    if x == X_SAMPLES:
        ss = api.series([run_id], ["samples_seen"], x="step", points=5000)
        ref = (ss[0]["steps"], ss[0]["y"]) if ss else ([], [])
    lines = []
    for key in keys:
        s = found.get(key) or {"x": [], "y": [], "steps": []}
        if x == X_TIME:
            xs = relative_time(s["x"], origin)
        elif x == X_SAMPLES and ref is not None:
            xs = steps_to_samples(s["steps"], *ref)
        else:
            xs = [float(v) for v in s["x"]]
        lines.append(Line((names or {}).get(key, key), xs, s["y"], steps=s["steps"]))
    return lines


def array_matrix(api: ApiClient, run_id: str, key: str, layer: str, *, max_steps: int) -> tuple[list[int], list[list[float]]]:
    """(steps, rows) of one layer's arrays over time, rows padded with NaN to a common length
    (a spectrum's top-k may grow when the probe switches from top-k to a full SVD)."""
    records = api.arrays(run_id, key, layer=layer, max_steps=max_steps)
    if not records:
        return [], []
    width = max(len(r["values"]) for r in records)
    rows = [list(r["values"]) + [math.nan] * (width - len(r["values"])) for r in records]
    return [int(r["step"]) for r in records], rows


def array_at(api: ApiClient, run_id: str, key: str, layer: str, step: int | None) -> tuple[int, list[float]] | None:
    """The record nearest at-or-before ``step`` (or the latest when ``step`` is None)."""
    records = api.arrays(run_id, key, layer=layer, at_step=step if step is not None else 2**62)
    if not records:
        return None
    rec = records[-1]
    return int(rec["step"]), list(rec["values"])


def quantity_grid(api: ApiClient, run_id: str, quantity: str, layers: Sequence[str], *, bins: int) -> Grid:
    """Layer x step grid of one per-layer scalar quantity, for every layer in one request."""
    if not layers:
        return Grid([], [], [])
    keys = [f"{quantity}/{layer}" for layer in layers]
    series = api.series([run_id], keys, x="step", points=max(2 * bins, 200))
    by_key = {s["key"]: s for s in series}
    data = {layer: (by_key[k]["steps"], by_key[k]["y"]) for layer, k in zip(layers, keys) if k in by_key}
    return layer_grid(data, bins, agg="max")


@dataclass(slots=True)
class RunPage:
    """One page of the runs table as the server filtered, sorted and paged it."""

    runs: list[dict[str, Any]]
    count: int
    changed: int
    as_of: str | None
    facets: dict[str, list[str]]


def run_page(api: ApiClient, *, project: str | None, status: str | None, tag: str | None, q: str | None,
             filters: Sequence[str], sort: str | None, limit: int, offset: int,
             updated_since: str | None = None, facets: bool = False) -> RunPage:
    """``GET /runs`` with the server-side filter/sort/paging parameters (``server.store.run_query``).

    Goes through the client's ``_get`` because ``ApiClient.list_runs`` predates ``filter``/``sort``/
    ``updated_since``/``facets`` (and ``dashboard/api.py`` is outside this page's change)."""
    from .api import _decode_run

    body = api._get("/runs", project=project or None, status=status or None, tag=[tag] if tag else None,
                    q=q or None, filter=list(filters) or None, sort=sort, limit=limit, offset=offset,
                    updated_since=updated_since, facets=facets or None)
    runs = [_decode_run(r) for r in body.get("data", [])]
    return RunPage(runs, int(body.get("count", len(runs))), int(body.get("changed", len(runs))),
                   body.get("as_of"), dict(body.get("facets") or {}))
