"""What a run-page tab is: data (id, label, controls, hint, body) plus its module's ``register(app)``.

Keeping the tab list as data lets the shell derive its outputs (one style per tab, the controls a
tab shows) from ``TABS``, so adding a tab is one new module and one line in ``tabs/__init__``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dash.exceptions import PreventUpdate

from .... import figures as F
from ....queries import quantity_grid
from ....series import block_of, group_rows


@dataclass(frozen=True, slots=True)
class Tab:
    """One tab of the run page.

    ``has_data`` says from the run's key catalog (``Catalog``) whether the tab would show anything;
    tabs without data are hidden from the strip (``enable`` names the attach option that turns the
    measurement on, shown to the user instead of an empty tab).
    """

    id: str
    label: str
    controls: frozenset[str]
    hint: str
    body: Callable[..., Any]
    has_data: Callable[[Any], bool] = lambda catalog: True
    enable: str = ""
    label_for: Callable[[Mapping[str, Any]], str] | None = None


class Registrar(Protocol):
    """Where a module's callbacks go: a Dash app, or the ``dash`` module (its process-global
    ``callback`` list, which the app takes when it re-executes the page module)."""

    def callback(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]: ...


def only_on(tab: str, wanted: str) -> None:
    """Hidden tabs cost nothing: their panels' callbacks stop here."""
    if tab != wanted:
        raise PreventUpdate


ROWS_AUTO = "auto"
ROWS_LAYERS = "layers"
ROWS_BLOCKS = "blocks"
AUTO_BLOCKS_ABOVE = 40  # layers; more than this and "auto" shows one row per block


def layer_heatmap(api, run_id: str, quantity: str, layers: Sequence[str], *, rows: str | None, bins: int,
                  title: str, unit: str, log_color: bool = False,
                  z_range: tuple[float, float] | None = None, empty_message: str = "") -> Any:
    """An all-layer (layer x step) heatmap of one per-layer quantity, capped in height.

    ``rows``: ``layers`` (every layer), ``blocks`` (one row per block, max over its layers), a block
    name (only that block's layers) or ``auto`` (layers up to 40, blocks beyond): a 200-matrix model
    drawn one row per layer was 2,965 px tall.
    """
    rows = rows or ROWS_AUTO
    if rows not in (ROWS_AUTO, ROWS_LAYERS, ROWS_BLOCKS):
        subset = [layer for layer in layers if block_of(layer) == rows]
        layers = subset or layers
    grid = quantity_grid(api, run_id, quantity, layers, bins=bins)
    grouped = rows == ROWS_BLOCKS or (rows == ROWS_AUTO and len(grid.layers) > AUTO_BLOCKS_ABOVE)
    if grouped:
        grid = group_rows(grid, agg="max")
        title += " (max per block)"
    return F.heatmap_figure(grid.steps, grid.layers, grid.z, title=title, x_title="step",
                            y_title="block" if grouped else "layer", colorbar_title=unit, log_color=log_color,
                            uirevision=f"{run_id}:{quantity}:{rows}", z_range=z_range,
                            empty_message=empty_message, height=F.rows_height(len(grid.layers)))
