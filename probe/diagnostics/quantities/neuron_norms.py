"""``neuron.{cv,min,max,q50,frozen_frac}/L``: how evenly a step moves each layer's output neurons."""

from __future__ import annotations

import torch
from torch import Tensor

from probe.diagnostics.measures import as_matrix, row_norms, spread_stats
from probe.diagnostics.quantity import Needs, PostStep, Quantity, Records, option_error
from probe.diagnostics.schedule import Schedule

_STATS = ("cv", "min", "max", "q50", "frozen_frac")


class NeuronNorms(Quantity):
    """The spread of the per-neuron update norms ‖ΔW_i,:‖ of each matrix (NorMuon's claim: more even).

    The neuron axis is the layer's (``Layer.neuron_axis``: the rows, embedding tables' columns,
    GPT-2 ``Conv1D``'s columns). The full per-neuron norms are logged as ``neuron.update_norm`` arrays
    on ``vectors_every``. Layers with as many neurons are reduced as one batch.

    Args:
        frozen_rel_tol: a neuron is frozen when its update norm ≤ this × the layer's mean norm.
    """

    name = "neuron"
    priority = 20

    def __init__(self, every: int | Schedule | None = 10, *, vectors_every: int | Schedule | None = 200,
                 frozen_rel_tol: float = 1e-3) -> None:
        super().__init__(every, vectors_every=vectors_every)
        if not frozen_rel_tol >= 0:
            raise option_error(self.name, "frozen_rel_tol", frozen_rel_tol, "must be >= 0")
        self.frozen_rel_tol = frozen_rel_tol

    def needs(self, step: int) -> Needs:
        return Needs.DELTA_MATRICES

    def measure(self, ctx: PostStep, out: Records, *, meanwhile=None) -> None:  # type: ignore[no-untyped-def]
        vectors = self.name in ctx.vectors
        by_width: dict[tuple[int, torch.device], list[tuple[str, Tensor]]] = {}
        for layer, delta in zip(ctx.captured, ctx.deltas):
            if not layer.is_matrix:
                continue
            norms = row_norms(as_matrix(delta, layer.neuron_axis))
            by_width.setdefault((norms.numel(), norms.device), []).append((layer.name, norms))
            if vectors:
                out.array("neuron.update_norm", layer.name, norms)
        for group in by_width.values():
            stats = spread_stats(torch.stack([norms for _, norms in group]), frozen_rel_tol=self.frozen_rel_tol)
            out.scalars([f"neuron.{q}/{name}" for q in _STATS for name, _ in group],
                        torch.cat([stats[q] for q in _STATS]))
