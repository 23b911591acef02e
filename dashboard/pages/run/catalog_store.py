"""What of a run's key catalog rides to the browser, and in which store.

The panels' callbacks get the catalog as State (layers, sources, array steps), so it is uploaded
with every one of them: with 10,000 scalar keys the full catalog was 150 kB per callback, ~15 of
them when the page opens. ``panel_store`` keeps only what the panels read (per-layer quantities,
arrays, and the few global keys the tabs look for); the full list of global keys sits in its own
store, read only by the key picker's search.
"""

from __future__ import annotations

from typing import Any

from ...queries import Catalog

ALL_KEYS = "run-all-keys"  # the run's global scalar keys, picker order
TAB_GLOBAL_PREFIXES = ("fop.", "gdiff.", "infobatch.")  # global keys a tab's panels look for


def panel_store(catalog: Catalog) -> dict[str, Any]:
    """The catalog the panels' callbacks receive (``Catalog.from_store`` reads it back)."""
    data = catalog.to_store()
    data["globals"] = {k: v for k, v in catalog.globals.items() if k.startswith(TAB_GLOBAL_PREFIXES)}
    data["n_globals"] = len(catalog.globals)  # so a refresh sees new keys without the full list
    return data


def all_keys(catalog: Catalog) -> list[str]:
    """Every global scalar key, in the order the key picker lists them."""
    return catalog.global_scalars
