"""KFAC factor all-reduce and FOP's dual-gradient all-reduce with 2 gloo processes on CPU.

Rank r trains on examples r, r+2, r+4, ... of the batch, so rank 0 holds FOP's first half (H1) and rank 1
the second: the distributed run must reproduce the single-process run on the full batch.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

from probe.optim import FOP, KFAC

#: float64 runs; the two sides differ only in summation order (per-rank partial sums, then all-reduce).
DIST_RTOL = 1e-9
DIST_ATOL = 1e-12
STEPS = 4
KW = dict(lr=0.2, factor_update_interval=1, inv_update_interval=2, kl_clip=1e-2)

pytestmark = pytest.mark.distributed


def _model() -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(48, 4)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return model


def _batch() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(16, 2, 4, 4, generator=gen, dtype=torch.float64),
            torch.randn(16, 4, generator=gen, dtype=torch.float64))


def _run(cls: type[KFAC], world: int, rank: int) -> tuple[list[Tensor], dict[str, Tensor]]:
    model = _model()
    opt = cls(model, **KW)
    opt.introspect = True
    x, y = _batch()
    x, y = x[rank::world], y[rank::world]
    for _ in range(STEPS):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        if world > 1:  # what DDP would do for the gradients
            for p in model.parameters():
                dist.all_reduce(p.grad)
                p.grad /= world
        opt.step()
    info = {k: v.clone() for k, v in opt.last_internals[model[3].weight].items()}
    return [p.detach().clone() for p in model.parameters()], info


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results = {name: _run(cls, 2, rank) for name, cls in (("kfac", KFAC), ("fop", FOP))}
        if rank == 0:
            torch.save(results, out)
        dist.barrier()  # no rank tears gloo down while its peer still communicates
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_single_process(tmp_path: Path) -> None:
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    results = torch.load(out)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, cls in (("kfac", KFAC), ("fop", FOP)):
            params, info = _run(cls, 1, 0)
            d_params, d_info = results[name]
            for p, q in zip(params, d_params):
                assert torch.allclose(p, q, rtol=DIST_RTOL, atol=DIST_ATOL), name
            for key in ("A_eig_max", "G_eig_max", "G_eig_min"):
                assert torch.allclose(info[key], d_info[key], rtol=DIST_RTOL, atol=DIST_ATOL), key
            if name == "fop":
                for key in ("g1_norm", "g2_norm", "gdiff_norm", "s_proj", "beta", "eta"):
                    assert torch.allclose(info[key], d_info[key], rtol=1e-7, atol=DIST_ATOL), key
                assert float(info["beta"]) != 0.0  # the projection is exercised, not the guard
    finally:
        torch.set_num_threads(previous)
