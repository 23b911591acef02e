"""Deferred exchange of InfoBatch's (index, loss) pairs between DDP ranks, once per epoch plan.

Why deferred: gathering every step's pairs needs every rank's batch size to size the receive buffer,
and reading a gathered size (``int(size)``) waits for the device -- a pipeline stall between forward
and backward on every step. Instead each rank keeps its own pairs on its device (:class:`PendingPairs`,
no host read, no collective) and :func:`exchange` gathers all of them when the scores are next needed
(planning an epoch, or reading the scores), where one wait is due anyway.

Same result as the per-step exchange: pairs carry the number of the ``update``/``record`` call that
produced them, counted from the last exchange (so the ranks' k-th training steps share a number even if
one rank made extra ``record`` calls in an earlier epoch), and :func:`exchange` orders the gathered
pairs by (call, rank, position) -- the order in which the per-step all-gather applied them -- and keeps
the last finite loss per index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Exchanged", "PendingPairs", "exchange"]


@dataclass
class PendingPairs:
    """One rank's (index, loss) pairs since the last exchange, left where the losses are (no host sync)."""

    indices: list[Tensor] = field(default_factory=list)
    losses: list[Tensor] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    count: int = 0  # pairs held: a host number (batch sizes are known on the host)

    def add(self, call: int, idx: Tensor, losses: Tensor) -> None:
        """Keep a batch: ``idx`` (CPU, validated) is copied to the losses' device without waiting."""
        self.indices.append(idx.to(device=losses.device, non_blocking=True, copy=True))
        # a copy in float32 (the scores' dtype): the caller may reuse its loss buffer
        self.losses.append(losses.detach().to(torch.float32, copy=True))
        self.calls.append(call)
        self.count += int(idx.numel())

    def latest_local(self) -> tuple[Tensor, Tensor]:
        """This rank's pending pairs reduced on the CPU (a host read: for the non-collective reads):
        the indices and their last finite losses."""
        if not self.count:
            return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.float32)
        idx = torch.cat([t.cpu() for t in self.indices]).to(torch.int64)
        vals = torch.cat([t.cpu() for t in self.losses]).to(torch.float32)
        finite = torch.isfinite(vals)
        return _last_per_index(idx[finite], vals[finite])

    def nonfinite_local(self) -> int:
        """Non-finite losses among this rank's pending pairs (a host read)."""
        return sum(int((~torch.isfinite(t)).sum()) for t in self.losses)

    def clear(self) -> None:
        self.indices.clear()
        self.losses.clear()
        self.calls.clear()
        self.count = 0


@dataclass
class Exchanged:
    """All ranks' pairs, on the CPU: the latest finite loss per index and the counts."""

    indices: Tensor  # int64, unique
    values: Tensor  # float32, the last finite loss of each index in ``indices``
    total: int  # pairs received from all ranks, finite or not
    nonfinite: int  # of which non-finite


def _packed(pending: PendingPairs, device: torch.device) -> Tensor:
    """(3, count) float64 rows: index, call number, loss. float64 holds every index below 2**53 exactly."""
    if not pending.count:
        return torch.zeros(3, 0, dtype=torch.float64, device=device)
    idx = torch.cat([t.to(device) for t in pending.indices]).to(torch.float64)
    calls = torch.cat([torch.full((t.numel(),), c, dtype=torch.float64, device=device)
                       for c, t in zip(pending.calls, pending.indices)])
    vals = torch.cat([t.to(device) for t in pending.losses]).to(torch.float64)
    return torch.stack([idx, calls, vals])


def exchange(pending: PendingPairs, device: torch.device, group: Any) -> Exchanged:
    """Gather every rank's pending pairs (a collective: every rank of ``group`` must call it) and reduce.

    Two all-gathers on ``device`` (NCCL needs device tensors): the pair counts, then the pairs padded to
    the largest count. ``pending`` is cleared.
    """
    world = dist.get_world_size(group)
    local = _packed(pending, device)
    pending.clear()
    size = torch.tensor([local.shape[1]], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    counts = [int(s) for s in torch.cat(sizes).cpu()]  # the one wait, at planning time
    width = max(counts)
    if width == 0:
        empty = torch.empty(0, dtype=torch.int64)
        return Exchanged(empty, torch.empty(0, dtype=torch.float32), 0, 0)
    padded = torch.zeros(3, width, dtype=torch.float64, device=device)
    padded[:, : local.shape[1]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    flat = torch.cat([p[:, :c] for p, c in zip(parts, counts)], dim=1).cpu()  # rank-major
    # (call, rank, position): a stable sort by call keeps rank-major order within a call
    order = torch.sort(flat[1], stable=True).indices
    idx, vals = flat[0, order].to(torch.int64), flat[2, order].to(torch.float32)
    finite = torch.isfinite(vals)
    total = int(vals.numel())
    nonfinite = total - int(finite.sum())
    idx, vals = _last_per_index(idx[finite], vals[finite])
    return Exchanged(idx, vals, total, nonfinite)


def _last_per_index(idx: Tensor, vals: Tensor) -> tuple[Tensor, Tensor]:
    """Last write wins, deterministically: the value at the largest position of each index."""
    pos = torch.arange(idx.numel(), dtype=torch.int64)
    n = int(idx.max()) + 1 if idx.numel() else 0
    last = torch.full((n,), -1, dtype=torch.int64).scatter_reduce_(0, idx, pos, reduce="amax")
    keep = last[last >= 0]
    return idx[keep], vals[keep]
