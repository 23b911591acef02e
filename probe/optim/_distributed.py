"""Distributed execution of the Muon family (torch.distributed; DDP-style replicated parameters).

Round-robin ownership (ALGORITHMS.md §1.5, §2.5, Keller's ``Muon``): gradients are already averaged
(DDP), so every rank could compute every update; instead each matrix has one *owner* rank that runs
momentum, Newton–Schulz (and NorMuon's v) for it, applies the update, and then the updated weights
are all-gathered so every replica holds the same values.

Details and decisions:
* Ownership: inside a group the matrices are bucketed by (shape, dtype, device) in parameter order;
  matrix i of the running sequence over buckets is owned by rank i mod world_size. A rank's share of a
  bucket is still orthogonalized by one batched NS. Buckets are balanced to within one matrix per rank.
* State (momentum, v, nonfinite_skips) exists only on the owner, as in Keller's and the official
  NorMuon's DDP classes: each rank's ``state_dict()`` holds its own share; save every rank's.
* One ``all_gather`` per bucket of a (ceil(B/W), m, n) tensor (padded), so the gather is one collective
  per distinct shape rather than per matrix.
* All ranks must see the same parameters with gradients (true under DDP); a parameter whose grad is
  None on every rank is skipped everywhere.
* ``introspect`` fills ``last_internals`` for the owned matrices only.
* AdamW (``use_muon=False``) groups are stepped redundantly on every rank (cheap elementwise work).

Not implemented (stated precisely): FSDP2 / DTensor row-sharded parameters. A DTensor parameter is
refused with ``NotImplementedError``; the dion-style all-to-all (rows → whole matrices → rows, with v on
local row shards and a 2-scalar all-reduce for the exact Frobenius rescale) is not written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

if TYPE_CHECKING:
    from probe.optim.muon import Muon

__all__ = ["check_initialized", "owner_of", "step_buckets_round_robin"]


def check_initialized(process_group: Any = None) -> None:
    """Raise ``RuntimeError`` unless torch.distributed is available and initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "distributed=True needs torch.distributed initialised (dist.init_process_group) before the optimizer is built"
        )


def owner_of(index: int, world_size: int) -> int:
    """Rank that owns matrix ``index`` of the running sequence (round-robin)."""
    return index % world_size


def step_buckets_round_robin(
    opt: Muon, group: dict[str, Any], buckets: Sequence[Sequence[Tensor]], process_group: Any = None
) -> None:
    """Update the owned matrices of every bucket, then all-gather the new weights bucket by bucket."""
    rank = dist.get_rank(process_group)
    world = dist.get_world_size(process_group)
    offset = 0
    for params in buckets:
        for p in params:
            if _is_dtensor(p):
                raise NotImplementedError(
                    "DTensor (FSDP2) parameters are not supported by the distributed Muon family yet; "
                    "use replicated (DDP) parameters"
                )
        count = len(params)
        first = [(r - offset) % world for r in range(world)]
        mine = list(params[first[rank] :: world])
        if mine:
            opt._update_bucket(group, mine)
        slots = math.ceil(count / world)
        p0 = params[0]
        local = torch.zeros((slots, *p0.shape), dtype=p0.dtype, device=p0.device)
        if mine:
            local[: len(mine)] = torch.stack([p.detach() for p in mine])
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local, group=process_group)
        dst: list[Tensor] = []
        src: list[Tensor] = []
        for r in range(world):
            for j, p in enumerate(params[first[r] :: world]):
                if r != rank:
                    dst.append(p.detach())
                    src.append(gathered[r][j])
        if dst:
            torch._foreach_copy_(dst, src)
        offset += count


def _is_dtensor(t: Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - old torch
        return False
    return isinstance(t, DTensor)
