"""Per-layer line charts shared by the neuron, gradient-difference and KFAC tabs."""

from __future__ import annotations

from collections.abc import Sequence

from .... import figures as F
from ....queries import x_lines
from ....state import current_api, current_config


def per_layer_lines(prefix: str, names: Sequence[str], layer: str, x: str, origin: float | None,
                    run_id: str) -> list[F.Line]:
    """``<prefix>.<name>/<layer>`` for each name, as lines named ``name``."""
    keys = [f"{prefix}.{n}/{layer}" for n in names]
    return x_lines(current_api(), run_id, keys, x=x, origin=origin, names=dict(zip(keys, names)),
                   points=current_config().series_points)
