"""``grad_norm/L`` of every layer with a gradient, and the global ``grad_norm``: the fixed per-step part."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from probe.diagnostics.layers import Layer
from probe.diagnostics.quantity import PreStep, Quantity, Records
from probe.diagnostics.schedule import Schedule
from probe.diagnostics.shard_norms import dtensor_parameters, global_norms, sharded_parameters


class GradNorm(Quantity):
    """Per-layer gradient norms (one ``_foreach_norm``), read before ``step()`` because some optimizers
    rewrite ``.grad`` (our Muon writes its Nesterov blend there).

    The global ``grad_norm`` = √Σ‖g_L‖² is derived on the host at the flush from the per-layer values,
    so it costs no device work. Not budgeted: it is the cheap part every step shows; when it alone
    exceeds the budget the Monitor thins it (every k-th due step, k ≤ 10) and says so in an alert.

    Sharded (FSDP2) gradients get their true norm, one all-reduce of squared shard norms per mesh
    (``probe.diagnostics.shard_norms``), on every due step, thinned or not: a collective every rank
    joins follows this rank-independent schedule, never the per-rank budget.
    """

    name = "grad_norm"
    budgeted = False
    priority = 0

    def __init__(self, every: int | Schedule | None = 1) -> None:
        super().__init__(every)
        self._steps: list[int] = []  # steps whose global norm the flush derives
        self._dtensors: list[list[Tensor]] = []  # per optimizer, its DTensor parameters (a type never changes)
        self._key_names: tuple[str, ...] = ()
        self._key_list: list[str] = []

    def bind(self, layers: Sequence[Sequence[Layer]], optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self._dtensors = [dtensor_parameters(p for group in opt.param_groups for p in group["params"])
                          for opt in optimizers]

    def before_step(self, ctx: PreStep, out: Records) -> None:
        candidates = self._dtensors[ctx.index] if ctx.index < len(self._dtensors) else []
        sharded = sharded_parameters(candidates) if candidates else []
        full = global_norms(sharded) if sharded else {}
        if ctx.thinned or not ctx.layers:
            return
        local = torch._foreach_norm([layer.grad() for layer in ctx.layers])  # type: ignore[misc]
        norms = [full.get(id(layer.param), n) for layer, n in zip(ctx.layers, local)] if full else list(local)
        out.scalars(self._keys(ctx.layers), norms, fresh=True)
        ctx.grad_norms = norms
        if not self._steps or self._steps[-1] != ctx.step:
            self._steps.append(ctx.step)

    def _keys(self, layers: list[Layer]) -> list[str]:
        """The keys of ``layers``, built once per set of layers (most steps see the same list)."""
        names = tuple(layer.name for layer in layers)
        if self._key_names != names:
            self._key_names, self._key_list = names, [f"grad_norm/{name}" for name in names]
        return self._key_list

    def on_host(self, per_step: dict[int, dict[str, float]]) -> None:
        for step in self._steps:
            metrics = per_step.get(step)
            if metrics is not None:
                metrics["grad_norm"] = math.sqrt(sum(v * v for k, v in metrics.items() if k.startswith("grad_norm/")))
        self._steps.clear()
