"""InfoBatch's DDP path with CUDA losses under ``set_sync_debug_mode("error")`` (issue #22; needs CUDA).

One GPU is enough: a one-process NCCL group while the sampler is told ``num_replicas=2`` takes the DDP
path (pairs kept on the device, exchanged over NCCL at the plan) exactly as a rank of a 2-GPU run does.
The multi-rank ordering and equality with one process are checked on CPU in
``test_infobatch_ddp_sync_free.py``.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist

from probe.data.infobatch import InfoBatch

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and dist.is_available() and dist.is_nccl_available()),
    reason="needs CUDA and NCCL",
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(120)
def test_ddp_update_on_cuda_is_sync_free_and_matches_cpu() -> None:
    n = 64
    data = list(range(n))
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randperm(n, generator=gen)[:16], torch.rand(16, generator=gen)) for _ in range(8)]
    batches[2][1][3] = float("nan")
    cpu = InfoBatch(data, num_epochs=4, seed=3)
    for idx, losses in batches:
        cpu.update(idx, losses.clone().requires_grad_())

    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                            device_id=torch.device("cuda", torch.cuda.current_device()))
    try:
        gpu = InfoBatch(data, num_epochs=4, seed=3, num_replicas=2, rank=0)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for idx, losses in batches:
                gpu.update(idx, losses.cuda().requires_grad_()).backward()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert torch.equal(gpu.scores, cpu.scores) and torch.equal(gpu.scored, cpu.scored)
        assert gpu.nonfinite_count == cpu.nonfinite_count == 1
        gpu.set_epoch(1)
        cpu.set_epoch(1)
        assert torch.equal(gpu.epoch_indices, cpu.epoch_indices)
    finally:
        dist.destroy_process_group()
