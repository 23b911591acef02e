"""True (global) gradient norms of sharded parameters (FSDP2 ``fully_shard``, DTensors with ``Shard``).

A rank holds only its rows of a sharded gradient, so the norm of its local shard is not the layer's norm
(issue 17: FSDP2's ``grad_norm`` was rank 0's shard norm, 0.159 against the true 0.191). The layer's
squared norm is the sum of its shards' squared norms: one ``all_reduce`` of a vector of squared local
norms per device mesh (and per mesh dimension that shards) gives every rank every layer's true norm.

Why this is safe to run from a step hook, although the probe otherwise never communicates (see
``measures.local_shard``): every rank must join the same collectives in the same order. So

* the caller decides *whether* to reduce from the step index and the ``scalars_every`` schedule alone
  (identical on every rank), never from the overhead budget, which is measured per rank;
* the parameters reduced are listed from the optimizer's ``param_groups`` (the same on every rank), not
  from the rank's measured layers (a rank with no rows of a small matrix does not measure it, but still
  adds its zero to the sum);
* the probe must be attached on every rank, as ``clip_grad_norm_`` must be called on every rank under
  FSDP2 (the transformers and Lightning integrations do attach on every rank).

What remains rank-dependent, and would leave a peer waiting: a Monitor whose hooks failed on one rank
only (it disables itself there), or a user ``scalars_every`` callable that answers differently per rank.

Placements other than ``Shard`` and ``Replicate`` (``Partial``: a pending sum, not a shard) are not
reduced: :func:`global_norms` leaves such parameters out, and their local norm is what gets logged.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["dtensor_parameters", "sharded_parameters", "global_norms"]


def dtensor_parameters(params: Iterable[Tensor]) -> list[Tensor]:
    """The DTensor parameters among ``params`` (once, at attach: a parameter's type does not change, so
    a model without any costs :func:`sharded_parameters` nothing per step)."""
    if "torch.distributed.tensor" not in sys.modules:
        return []
    from torch.distributed.tensor import DTensor

    return [p for p in params if isinstance(p, DTensor)]


def sharded_parameters(params: Iterable[Tensor]) -> list[Tensor]:
    """The DTensor parameters among ``params`` whose gradient is sharded (``Shard`` on some mesh dim) and
    otherwise replicated, in the order given; empty (and nothing imported) when DTensor is not in use."""
    if "torch.distributed.tensor" not in sys.modules:
        return []
    from torch.distributed.tensor import DTensor, Replicate, Shard

    out = []
    for p in params:
        grad = p.grad
        if not isinstance(p, DTensor) or not isinstance(grad, DTensor):
            continue
        placements = tuple(grad.placements)
        if any(isinstance(pl, Shard) for pl in placements) and all(
                isinstance(pl, (Shard, Replicate)) for pl in placements):
            out.append(p)
    return out


def global_norms(params: Sequence[Tensor]) -> dict[int, Tensor]:
    """``id(param) -> ‖grad‖₂`` of the whole (unsharded) gradient of each of ``params`` (from
    :func:`sharded_parameters`), on every rank: one ``all_reduce`` of squared local norms per device
    mesh and sharding mesh dimension. A collective: every rank of the mesh must call it with the same
    parameters in the same order."""
    from torch.distributed.tensor import Shard

    by_mesh: dict[tuple[int, tuple[object, ...]], list[Tensor]] = {}
    for p in params:
        grad = p.grad
        key = (id(grad.device_mesh), tuple(grad.placements))  # type: ignore[union-attr]
        by_mesh.setdefault(key, []).append(p)
    out: dict[int, Tensor] = {}
    for members in by_mesh.values():
        grads = [p.grad for p in members]
        mesh, placements = grads[0].device_mesh, grads[0].placements  # type: ignore[union-attr]
        locals_ = [g.to_local() for g in grads]  # type: ignore[union-attr]
        squares = torch.stack([n.float() for n in torch._foreach_norm(locals_)]).square()
        for dim, placement in enumerate(placements):
            if isinstance(placement, Shard):
                dist.all_reduce(squares, op=dist.ReduceOp.SUM, group=mesh.get_group(dim))
        for p, norm in zip(members, squares.sqrt().unbind(0)):
            out[id(p)] = norm
    return out
