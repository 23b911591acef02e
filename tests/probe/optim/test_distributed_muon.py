"""Distributed Muon/NorMuon (round-robin ownership + all-gather) equals the single-process result.

Two CPU processes, gloo backend, 127.0.0.1 on a free port (torch.multiprocessing spawn). Both ranks
see the same gradients, which is what DDP's averaged gradients give the optimizer.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from probe.optim import Muon, NorMuon

pytestmark = pytest.mark.distributed

WORLD = 2
# Same kernels, same inputs, same order inside a rank's batched NS: the owner computes exactly what the
# single process computes, except that a rank's share of a bucket is a smaller batch (bmm blocking).
DIST_ATOL = 1e-6
SHAPES = [(16, 8), (16, 8), (16, 8), (8, 24), (8, 24), (12, 12), (4, 2, 3, 3)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _build(cls: type, distributed: bool) -> tuple[list[nn.Parameter], torch.optim.Optimizer]:
    g = torch.Generator().manual_seed(0)
    mats = [nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    vec = nn.Parameter(torch.randn(5, generator=g))
    opt = cls(
        [{"params": mats}, {"params": [vec], "use_muon": False, "lr": 1e-2}],
        lr=0.05,
        weight_decay=0.01,
        distributed=distributed,
        introspect=distributed,
    )
    return mats + [vec], opt


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results: dict[str, object] = {}
        for cls in (Muon, NorMuon):
            dist_params, dist_opt = _build(cls, distributed=True)
            ref_params, ref_opt = _build(cls, distributed=False)
            g = torch.Generator().manual_seed(1)  # same on both ranks: the DDP-averaged gradient
            for _ in range(3):
                for p, q in zip(dist_params, ref_params):
                    grad = torch.randn(p.shape, generator=g)
                    p.grad, q.grad = grad.clone(), grad.clone()
                dist_opt.step()
                ref_opt.step()
            results[cls.__name__] = {
                "max_diff": max((p - q).abs().max().item() for p, q in zip(dist_params, ref_params)),
                "owned": sorted(i for i, p in enumerate(dist_params[:-1]) if "momentum_buffer" in dist_opt.state[p]),
                "introspected": sorted(i for i, p in enumerate(dist_params) if p in dist_opt.last_internals),
                "params": [p.detach().clone() for p in dist_params],
            }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_round_robin_equals_single_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    for name in ("Muon", "NorMuon"):
        assert r0[name]["max_diff"] < DIST_ATOL and r1[name]["max_diff"] < DIST_ATOL
        # every replica holds identical weights after the all-gather
        for a, b in zip(r0[name]["params"], r1[name]["params"]):
            assert torch.equal(a, b)
        # each matrix has exactly one owner, and the work is split evenly (7 matrices → 4 + 3)
        owned0, owned1 = set(r0[name]["owned"]), set(r1[name]["owned"])
        assert owned0.isdisjoint(owned1) and owned0 | owned1 == set(range(len(SHAPES)))
        assert abs(len(owned0) - len(owned1)) <= 1
        assert set(r0[name]["introspected"]) == owned0
