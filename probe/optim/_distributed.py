"""Distributed execution of the Muon family (torch.distributed; DDP-style replicated parameters).

Round-robin ownership (ALGORITHMS.md §1.5, §2.5, Keller's ``Muon``): gradients are already averaged
(DDP), so every rank could compute every update; instead each matrix has one *owner* rank that runs
Newton–Schulz for it, the NS outputs are all-gathered, and every rank applies every update.

Details and decisions:
* Ownership: inside a group the matrices are bucketed by (shape, dtype, device) in parameter order;
  matrix i of the running sequence over buckets is owned by rank i mod world_size. A rank's share of a
  bucket is still orthogonalized by one batched NS. Buckets are balanced to within one matrix per rank.
* State is FULL on every rank (unlike Keller's and the official NorMuon's DDP classes, which keep
  each matrix's state on its owner only): every rank advances every matrix's momentum (elementwise on
  the already averaged gradient, bitwise the same on all ranks), the skip counters and, from the
  gathered NS outputs, NorMuon's v. So ``state_dict()`` on rank 0 -- what HF Trainer and Lightning
  save -- resumes exactly when loaded on every rank. Cost: the elementwise update work of every matrix
  on every rank, and a full-size momentum buffer per rank (as plain Muon has).
* ONE ``all_gather`` per step (per NS dtype and device) of every bucket's NS outputs, packed flat in
  NS's working dtype: bf16 on CUDA, half the traffic of gathering fp32 weights, and lossless.
* All ranks must see the same parameters with gradients (true under DDP); a parameter whose grad is
  None on every rank is skipped everywhere.
* ``introspect`` fills ``last_internals`` on rank 0 of the group for EVERY matrix, and on no other rank.
  Nothing extra is communicated: the NS input U is identical on all ranks and the gathered NS outputs
  hold each owner's result bit for bit (same dtype). So a probe on rank 0 (the only one that logs by
  default) stores every matrix's ``sv.pre_orth/post_orth``, ``orth_err`` and ``normuon.v*`` under the
  layer's own key, and with ``log_all_ranks=True`` no ``rank<r>.`` copy of them is stored. Cost: rank 0
  computes the spectra of every matrix (as a single process would); the NS work stays split.
* AdamW (``use_muon=False``) groups are stepped redundantly on every rank (cheap elementwise work).

Row-sharded parameters (FSDP2 ``fully_shard``; any DTensor on a 1-D mesh with placement Shard(0)),
ALGORITHMS.md §2.5. These take the row-shard path whether or not ``distributed=True`` was passed:
* momentum, NorMuon's v and the weight update act on this rank's rows only (v's state is local per
  row shard);
* the finiteness test is all-reduced (all shards of a matrix skip together);
* the NS input U is all-gathered (one collective per shape bucket, rows padded to torch.chunk
  sizes); each rank orthogonalizes only its round-robin share of the bucket's matrices (one batched
  NS), and a second all-gather distributes the results, from which each rank keeps its rows;
* NorMuon's Frobenius rescale is exact: one all-reduce of 2 scalars per matrix (‖O‖², ‖Ô‖²), where
  dion's reference approximates it per shard. The same all-reduce carries every rank's rows of v
  (zeros elsewhere: :meth:`RowShard.reduce_sum_with_rows`), so each rank has the whole v of every
  matrix on every step, whether or not anyone introspects: no extra collective, and none whose
  schedule depends on ``introspect`` (each rank's probe sets it, after its own overhead budget; a rank
  that does not log never sets it), which would deadlock. Cost: ``rows`` scalars per matrix per step,
  1/cols of what the U gather alone moves.
* ``introspect`` fills ``last_internals`` on rank 0 of the mesh only, for every matrix and for the
  whole matrix: ``pre_orth``/``post_orth`` are the gathered U and O, NorMuon's ``v`` and ``normalized``
  (Ô) come from the whole v (the row factors are recomputed from it with the reduced norms, by the
  same formula every rank used for its rows). So a run shared by all ranks stores each matrix's
  ``sv.*``, ``orth_err`` and ``normuon.*`` once, under the layer's own key, as under DDP.
State for DTensor parameters is stored as plain local tensors (this rank's rows), so each rank saves
its own ``state_dict``; torch.distributed.checkpoint resharding of that state is not supported.

Not implemented (stated precisely):
* dion's all-to-all communication: we move whole matrices with two all-gathers per bucket (every rank
  receives all of U and all of O) where two all-to-alls would move 1/world of that. The compute split
  is the same; the communication volume is world× larger (fine for a few ranks, not for large jobs).
* Sharding on another dim, 2-D meshes (HSDP) and other placements raise ``NotImplementedError``.
* DDP + FSDP2 mixed in one optimizer (``distributed=True`` with DTensor parameters) is not tested.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from probe.optim._orthogonalize import default_ns_dtype

if TYPE_CHECKING:
    from probe.optim.muon import Muon

__all__ = [
    "RowShard",
    "any_nonfinite_across_mesh",
    "check_initialized",
    "is_dtensor",
    "owner_of",
    "row_shard_of",
    "step_buckets_round_robin",
]


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
    """NS on the owned matrices of every bucket, ONE all-gather of the NS outputs, then every rank
    applies every update.

    Every rank advances every matrix's momentum (elementwise on the averaged gradient, identical on
    all ranks); only Newton–Schulz, the expensive part, is split. The NS outputs of all buckets are
    packed into one flat tensor in NS's working dtype (bf16 on CUDA: half the bytes of fp32 weights,
    and lossless, since that is the dtype NS produced them in) and gathered by one collective per
    (dtype, device) -- one per step in practice. Each rank then applies the direction (NorMuon: its v
    update too) to every matrix, so weights and the full optimizer state agree bitwise on all ranks
    and ``state_dict()`` on rank 0 resumes everywhere.
    """
    rank = dist.get_rank(process_group)
    world = dist.get_world_size(process_group)
    works = [opt._prepare_bucket(group, params) for params in buckets]
    owned_of: list[list[int]] = []
    outputs: list[Tensor | None] = []
    offset = 0
    for work in works:
        count = len(work.params)
        first = [(r - offset) % world for r in range(world)]
        owned_of.append([list(range(first[r], count, world)) for r in range(world)])
        mine = owned_of[-1][rank]
        if mine:
            pick = torch.as_tensor(mine, device=work.U.device)
            outputs.append(opt._ns(group, work.U)(work.U.index_select(0, pick), work.ok.index_select(0, pick)))
        else:
            outputs.append(None)
        offset += count
    # Pack: per (dtype, device), bucket b takes slots_b = ceil(B_b / W) matrices of rows*cols entries.
    packs: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for b, work in enumerate(works):
        dtype = group["ns_dtype"] or default_ns_dtype(work.U.device, work.U.dtype)
        packs.setdefault((dtype, work.U.device), []).append(b)
    gathered_O: list[Tensor] = [torch.empty(0)] * len(works)
    for (dtype, device), members in packs.items():
        sizes = [math.ceil(len(works[b].params) / world) * works[b].rows * works[b].cols for b in members]
        local = torch.zeros(sum(sizes), dtype=dtype, device=device)
        for b, part in zip(members, torch.split(local, sizes)):
            out = outputs[b]
            if out is not None:
                part[: out.numel()].copy_(out.reshape(-1))
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local, group=process_group)
        for b, size_start in zip(members, _starts(sizes)):
            work = works[b]
            mn = work.rows * work.cols
            O = torch.empty((len(work.params), work.rows, work.cols), dtype=dtype, device=device)
            for r in range(world):
                for j, i in enumerate(owned_of[b][r]):
                    O[i] = parts[r][size_start + j * mn : size_start + (j + 1) * mn].view(work.rows, work.cols)
            gathered_O[b] = O
    for b, work in enumerate(works):
        # Rank 0 of the group reports every matrix: U is the same on every rank (momentum of the averaged
        # gradient) and row i of the gathered O is the owner's NS output, copied losslessly. No other rank
        # reports, so a shared run (log_all_ranks) stores each matrix once, under its own key.
        reports = rank == 0 and opt.introspect
        introspected = {i: (work.U[i], gathered_O[b][i]) for i in range(len(work.params))} if reports else {}
        opt._apply_bucket(group, work, gathered_O[b], introspected)


def _starts(sizes: Sequence[int]) -> list[int]:
    out, acc = [], 0
    for n in sizes:
        out.append(acc)
        acc += n
    return out


def is_dtensor(t: Tensor) -> bool:
    """True for a ``torch.distributed.tensor.DTensor``.

    Cheap when DTensor was never imported: then no tensor can be one, and nothing is imported.
    """
    if "torch.distributed.tensor" not in sys.modules:
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


@dataclass(frozen=True)
class RowShard:
    """This rank's slice of a bucket of same-shape DTensor parameters sharded on dim 0 (1-D mesh)."""

    group: Any
    world: int
    rank: int
    rows: int
    chunk: int
    start: int
    local_rows: int

    def local(self, t: Tensor) -> Tensor:
        """The local shard of a DTensor (an alias: in-place updates reach the parameter)."""
        return t.to_local()  # type: ignore[attr-defined, no-any-return]

    def reduce_sum(self, x: Tensor) -> Tensor:
        """Sum ``x`` over the shards (in place; returned for chaining)."""
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=self.group)
        return x

    def reduce_sum_with_rows(self, x: Tensor, local_rows: Tensor) -> tuple[Tensor, Tensor]:
        """Sum ``x`` over the shards and assemble per-row values, in ONE all-reduce.

        ``local_rows`` is (B, local_rows), this rank's rows of B matrices; every rank gets (B, rows),
        the whole matrices' rows. Each rank contributes its rows at its offset and zeros elsewhere, so
        the sum assembles them bit for bit (x + 0 = x exactly). Riding on a reduction that runs anyway
        (NorMuon's Frobenius norms) costs ``B·rows`` more scalars and no extra collective; and because
        the payload does not depend on whether anyone introspects, every rank joins the same
        collective on every step (``introspect`` is set per rank, by each rank's probe and budget).
        ``x`` and ``local_rows`` must share a dtype.
        """
        count = local_rows.shape[0]
        placed = local_rows.new_zeros((count, self.rows))
        placed[:, self.start : self.start + self.local_rows] = local_rows
        packed = self.reduce_sum(torch.cat([x.reshape(-1), placed.reshape(-1)]))
        return packed[: x.numel()].view(x.shape), packed[x.numel() :].view(count, self.rows)

    def gather_rows(self, U: Tensor) -> Tensor:
        """(B, local_rows, n) on every rank → (B, rows, n) full matrices on every rank."""
        padded = U.new_zeros((U.shape[0], self.chunk, U.shape[2]))
        padded[:, : self.local_rows] = U
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded, group=self.group)
        pieces = [part[:, : max(0, min(self.chunk, self.rows - r * self.chunk))] for r, part in enumerate(parts)]
        return torch.cat(pieces, dim=1)

    def orthogonalize(self, U_full: Tensor, keep: Tensor, ns: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """NS of a (B, m, n) bucket with the work split round-robin: rank r runs ``ns`` on matrices
        r, r+W, … (one batched call), then an all-gather gives every rank all B results."""
        count = U_full.shape[0]
        slots = math.ceil(count / self.world)
        mine = ns(U_full[self.rank :: self.world], keep[self.rank :: self.world])
        padded = mine.new_zeros((slots, *U_full.shape[1:]))
        padded[: mine.shape[0]] = mine
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded, group=self.group)
        out = padded.new_empty(U_full.shape)
        for r, part in enumerate(parts):
            out[r :: self.world] = part[: len(range(r, count, self.world))]
        return out


def row_shard_of(params: Sequence[Tensor]) -> RowShard:
    """Describe the row sharding of a bucket; ``NotImplementedError`` for any other layout."""
    from torch.distributed.tensor import Shard

    p0 = params[0]
    mesh = p0.device_mesh  # type: ignore[attr-defined]
    placements = tuple(p0.placements)  # type: ignore[attr-defined]
    if mesh.ndim != 1 or placements != (Shard(0),):
        raise NotImplementedError(
            f"Muon-family DTensor support covers parameters sharded on dim 0 of a 1-D mesh (FSDP2); "
            f"got mesh of ndim {mesh.ndim} with placements {placements}"
        )
    for p in params:
        if tuple(p.placements) != placements or p.device_mesh != mesh:  # type: ignore[attr-defined]
            raise NotImplementedError("same-shape DTensor parameters must share mesh and placements")
    group = mesh.get_group(0)
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    rows = p0.shape[0]
    chunk = math.ceil(rows / world)  # torch.chunk semantics, as Shard(0) and FSDP2 use
    start = min(rank * chunk, rows)
    local_rows = p0.to_local().shape[0]  # type: ignore[attr-defined]
    if local_rows != max(0, min(chunk, rows - start)):
        raise NotImplementedError(f"unexpected uneven row sharding: {local_rows} local rows of {rows}")
    return RowShard(group=group, world=world, rank=rank, rows=rows, chunk=chunk, start=start, local_rows=local_rows)


def any_nonfinite_across_mesh(bad: Tensor, p: Tensor) -> Tensor:
    """OR a 0-d (or 1-D, one flag per parameter: a bucketed all-reduce) bool over every dim of ``p``'s device
    mesh (so all shards agree to skip)."""
    mesh = p.device_mesh  # type: ignore[attr-defined]
    count = bad.to(torch.int32)
    for dim in range(mesh.ndim):
        dist.all_reduce(count, op=dist.ReduceOp.SUM, group=mesh.get_group(dim))
    return count > 0
