"""FOP's distributed half-batch gradients: one signed all-reduce of one gradient's size (issue #22).

Two gloo ranks on CPU, float32. The all-reduce that forms g_1 (even ranks) and g_2 (odd ranks) must
carry exactly the gradient's element count (the earlier (2, size) buffer, half zeros, carried twice
that), and g_1, g_2 must equal that earlier formulation -- each rank's local gradient placed in row
``rank % 2`` of a zero (2, size) buffer, summed, divided by the even/odd rank counts -- to 1e-6.
The end-to-end match with one process (float64) is in ``test_distributed_kfac.py``.
"""

from __future__ import annotations

import datetime
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from probe.optim import FOP

WORLD = 2
STEPS = 3
ATOL = 1e-6

pytestmark = pytest.mark.distributed


def _two_buffer_reference(fop: FOP, layers: list[Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """g_1, g_2 per layer as the (2, size) all-reduce computed them (the formulation replaced)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    n_even, n_odd = (world + 1) // 2, world // 2
    out = []
    for lay in layers:
        raw = lay.grad_matrix()
        local = lay.split_dense().to(raw.dtype) if lay.has_split() else torch.zeros_like(raw)
        buf = torch.zeros((2, *local.shape), dtype=local.dtype)
        buf[rank % 2] = local
        dist.all_reduce(buf)
        out.append((buf[0] / n_even, buf[1] / n_odd))
    return out


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
        opt = FOP(model, lr=0.1, factor_update_interval=1, inv_update_interval=1)
        sent: list[int] = []
        diffs: list[float] = []
        scale: list[float] = []
        real_all_reduce = dist.all_reduce
        real_dual = FOP._dual_all_reduce

        def dual(self: FOP, layers: list[Any]) -> None:
            reference = _two_buffer_reference(self, layers)

            def counting(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
                sent.append(tensor.numel())
                return real_all_reduce(tensor, *args, **kwargs)

            dist.all_reduce = counting
            try:
                real_dual(self, layers)
            finally:
                dist.all_reduce = real_all_reduce
            sizes = sum(lay.grad_matrix().numel() for lay in layers)
            sent.append(-sizes)  # marker: the gradient's element count this step
            for lay, (g1, g2) in zip(layers, reference):
                kind, got1, got2 = self._pairs[id(lay)]
                assert kind == "pair"
                diffs.append(max(float((got1 - g1).abs().max()), float((got2 - g2).abs().max())))
                scale.append(float(torch.maximum(g1.abs().max(), g2.abs().max())))

        FOP._dual_all_reduce = dual  # type: ignore[method-assign]
        gen = torch.Generator().manual_seed(1)
        for _ in range(STEPS):
            x = torch.randn(8 * WORLD, 5, generator=gen)[rank::WORLD]
            y = torch.randint(0, 3, (8 * WORLD,), generator=gen)[rank::WORLD]
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            for p in model.parameters():  # what DDP does
                real_all_reduce(p.grad)
                p.grad /= WORLD
            opt.step()
        if rank == 0:
            torch.save({"sent": sent, "diffs": diffs, "scale": scale}, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(180)
def test_one_signed_all_reduce_of_gradient_size_equals_the_two_buffer_form(tmp_path: Path) -> None:
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    res = torch.load(out)
    grad_elems = 4 * (5 + 1) + 3 * (4 + 1)  # the two layers' (d_out, in + bias) gradient matrices
    # per step: one all-reduce of exactly the gradient's size, then the marker
    assert res["sent"] == [grad_elems, -grad_elems] * STEPS
    assert len(res["diffs"]) == 2 * STEPS
    assert min(res["scale"]) > 1e-3  # the halves are exercised, not zero
    assert max(res["diffs"]) <= ATOL, res["diffs"]
