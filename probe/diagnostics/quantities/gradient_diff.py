"""``gdiff.*/L``: the two-half-batch gradient-difference projections, on the user's request."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from probe.diagnostics.gradient_diff import NoiseScale, gradient_difference
from probe.diagnostics.layers import Layer
from probe.diagnostics.measures import local_shard
from probe.diagnostics.quantity import Quantity, Records, option_error
from probe.diagnostics.schedule import Schedule

FisherFactors = Callable[[Tensor], "tuple[Tensor, Tensor] | None"]


class GradientDiff(Quantity):
    """Projections of g₁ − g₂ (two half batches) against their mean, per layer, and the gradient noise
    scale ``gdiff.noise_scale`` (needs ``batch_size``).

    On demand: the two half-batch backward passes are the user's (``Monitor.measure_gradient_diff``),
    so this is not scheduled on the training steps; ``every`` only sets what
    :attr:`Monitor.wants_gradient_diff` advises (``None``: never advised, still measurable on request).

    Args:
        batch_size: the B the two halves split (for a distributed run, the global batch).
        fisher_factors: ``param -> (A, G) | None`` K-FAC factors for the Fisher-metric projections; by
            default the factors our KFAC/FOP keep in ``optimizer.state[weight]["A"/"G"]``.
    """

    name = "gdiff"
    on_demand = True

    def __init__(self, every: int | Schedule | None = None, *, batch_size: int | None = None,
                 fisher_factors: FisherFactors | None = None) -> None:
        super().__init__(every)
        if batch_size is not None and batch_size < 1:
            raise option_error(self.name, "batch_size", batch_size, "must be >= 1")
        self.batch_size = batch_size
        self.fisher_factors = fisher_factors
        self._noise = NoiseScale()
        self._layers: Sequence[Sequence[Layer]] = ()
        self._optimizers: Sequence[torch.optim.Optimizer] = ()

    def bind(self, layers: Sequence[Sequence[Layer]], optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self._layers, self._optimizers = layers, optimizers

    def record(self, g1: Mapping[Tensor, Tensor], g2: Mapping[Tensor, Tensor], out: Records) -> None:
        """Measure from the half-batch gradients (keyed by parameter) of the upcoming step."""
        keys: list[str] = []
        values: list[Tensor] = []
        avg_norms: list[Tensor] = []
        diff_norms: list[Tensor] = []
        for group in self._layers:
            for layer in group:
                a, b = g1.get(layer.param), g2.get(layer.param)
                if a is None or b is None:
                    continue
                found = gradient_difference(local_shard(a), local_shard(b), factors=self._factors_of(layer.param))
                for q, v in found.items():
                    keys.append(f"gdiff.{q}/{layer.name}")
                    values.append(v)
                avg_norms.append(found["gavg_norm"])
                diff_norms.append(found["gdiff_norm"])
        if avg_norms and self.batch_size is not None:
            keys.append("gdiff.noise_scale")
            values.append(self._noise.update(avg_norms, diff_norms, self.batch_size))
        out.scalars(keys, values)

    def _factors_of(self, param: Tensor) -> tuple[Tensor, Tensor] | None:
        if self.fisher_factors is not None:
            return self.fisher_factors(param)
        for opt in self._optimizers:
            st = opt.state.get(param)
            if st and isinstance(st.get("A"), Tensor) and isinstance(st.get("G"), Tensor):
                return st["A"], st["G"]
        return None
