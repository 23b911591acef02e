"""``update_ratio/L`` = ‖ΔW‖/‖W‖ and ``nonfinite/L`` (NaN/inf in the gradient and in ΔW) of every layer."""

from __future__ import annotations

import torch
from torch import Tensor

from probe.diagnostics.measures import nonfinite_counts, stack_f32
from probe.diagnostics.quantity import Needs, PostStep, PreStep, Quantity, Records
from probe.diagnostics.schedule import Schedule


class UpdateRatio(Quantity):
    """The relative size of each layer's step, and where non-finite values entered.

    Needs ΔW (the Monitor's one batched weight copy before the step). The gradients' non-finite check
    reuses their norms (``Needs.GRAD_NORMS``: a finite norm means nothing to count), two passes over
    every gradient fewer than counting without them; ΔW's check likewise reuses ‖ΔW‖.
    """

    name = "update"
    priority = 10

    def __init__(self, every: int | Schedule | None = 1) -> None:
        super().__init__(every)
        self._grad_counts: dict[int, Tensor] = {}  # optimizer index -> the gradients' counts of this step

    def needs(self, step: int) -> Needs:
        return Needs.DELTA | Needs.GRAD_NORMS

    def before_step(self, ctx: PreStep, out: Records) -> None:
        self._grad_counts.pop(ctx.index, None)
        grads = [layer.grad() for layer in ctx.captured]
        if ctx.captured and all(g is not None for g in grads):
            known = ctx.grad_norms_of(ctx.captured)
            self._grad_counts[ctx.index] = nonfinite_counts(
                grads, stack_f32(known) if known is not None else None)  # type: ignore[arg-type]

    def measure(self, ctx: PostStep, out: Records, *, meanwhile=None) -> None:  # type: ignore[no-untyped-def]
        grad_counts = self._grad_counts.pop(ctx.index, None)
        if not ctx.captured or len(ctx.deltas) != len(ctx.captured):
            return
        norms = stack_f32(torch._foreach_norm([*ctx.deltas, *ctx.before]))  # type: ignore[misc]  # one kernel
        dn, wn = norms[:len(ctx.deltas)], norms[len(ctx.deltas):]
        out.scalars([f"update_ratio/{layer.name}" for layer in ctx.captured], dn / wn)
        counts = nonfinite_counts(ctx.deltas, dn)
        if grad_counts is not None and grad_counts.shape == counts.shape:
            counts = counts + grad_counts  # absent when a closure left a captured layer gradient-less
        out.scalars([f"nonfinite/{layer.name}" for layer in ctx.captured], counts)
