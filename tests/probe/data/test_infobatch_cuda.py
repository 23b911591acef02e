"""InfoBatch ``update`` with CUDA losses: no host sync per step, same scores as on the CPU (issue #22)."""

from __future__ import annotations

import pytest
import torch

from probe.data.infobatch import InfoBatch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_update_on_cuda_is_sync_free_and_matches_cpu() -> None:
    n = 64
    data = list(range(n))
    cpu, gpu = InfoBatch(data, num_epochs=4, seed=3), InfoBatch(data, num_epochs=4, seed=3)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randperm(n, generator=gen)[:16], torch.rand(16, generator=gen)) for _ in range(8)]
    batches[2][1][3] = float("nan")
    for idx, losses in batches:
        cpu.update(idx, losses.clone().requires_grad_())
    gpu.update(batches[0][0], batches[0][1].cuda().requires_grad_())  # first call allocates the device copy
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for idx, losses in batches[1:]:
            out = gpu.update(idx, losses.cuda().requires_grad_())
            out.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(gpu.scores, cpu.scores) and torch.equal(gpu.scored, cpu.scored)
    assert gpu.nonfinite_count == cpu.nonfinite_count == 1
    gpu.set_epoch(1)
    cpu.set_epoch(1)
    assert torch.equal(gpu.epoch_indices, cpu.epoch_indices)
