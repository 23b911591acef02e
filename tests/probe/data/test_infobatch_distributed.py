"""InfoBatch under a real gloo process group: 2 CPU processes (spawn) on a free 127.0.0.1 port.

Checks that both ranks plan the same kept set every epoch, see disjoint shards of it (apart from the
DistributedSampler-style padding), and end with identical score tables gathered from both ranks,
including batches of different sizes.
"""

from __future__ import annotations

import datetime
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

from probe.data import InfoBatch

N = 101
EPOCHS = 4
WORLD = 2


def _fake_losses(indices: torch.Tensor, epoch: int) -> torch.Tensor:
    return ((indices * 7919 + epoch * 104729) % 1000).float() / 1000 + 0.01


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        data = TensorDataset(torch.arange(N).float())
        ib = InfoBatch(data, num_epochs=EPOCHS, delta=0.75, seed=7)  # world and rank from the group
        loader = DataLoader(ib.dataset, batch_size=8, sampler=ib)
        shards, plans = [], []
        for epoch in range(EPOCHS):
            ib.set_epoch(epoch)
            seen: list[int] = []
            for indices, (x,) in loader:
                assert torch.equal(x, indices.float())
                ib.update(indices, _fake_losses(indices, epoch))
                seen += indices.tolist()
            shards.append(seen)
            plans.append(ib.epoch_indices)
        # batches of different sizes on the two ranks must still gather correctly
        extra = torch.tensor([0, 1, 2]) if rank == 0 else torch.tensor([50])
        ib.record(extra, torch.full((extra.numel(),), 100.0 + rank))
        ib.sync()  # reads never wait for the other ranks: bring their pairs in first (every rank calls it)
        torch.save(
            {
                "rank": ib.rank,
                "world": ib.num_replicas,
                "shards": shards,
                "plans": plans,
                "scores": ib.scores,
                "ledger": ib.ledger,
                "samples_seen": ib.samples_seen,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
        dist.barrier()  # no rank tears gloo down while its peer still communicates
    finally:
        dist.destroy_process_group()


def _comparable(ledger: list) -> list[dict]:
    """Ledger records as dicts with NaN (epoch 0's threshold) as None, since NaN != NaN."""
    return [{k: (None if v != v else v) for k, v in r.to_dict().items()} for r in ledger]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_two_gloo_ranks_prune_the_same_set_and_share_scores(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    assert (r0["rank"], r0["world"], r1["rank"], r1["world"]) == (0, 2, 1, 2)

    pruned_epochs = 0
    for epoch in range(EPOCHS):
        plan = r0["plans"][epoch]
        assert torch.equal(plan, r1["plans"][epoch]), f"ranks planned different sets in epoch {epoch}"
        s0, s1 = r0["shards"][epoch], r1["shards"][epoch]
        assert len(s0) == len(s1) == -(-plan.numel() // WORLD)
        assert set(s0) | set(s1) == set(plan.tolist())
        padding = len(s0) + len(s1) - plan.numel()
        assert len(set(s0) & set(s1)) == padding <= 1
        pruned_epochs += plan.numel() < N
    assert pruned_epochs >= 1, "the test should exercise a pruning epoch"
    assert r0["plans"][-1].numel() == N  # annealing epoch: everything

    assert torch.equal(r0["scores"], r1["scores"])
    expected = _fake_losses(torch.arange(N), EPOCHS - 1)
    expected[[0, 1, 2]] = 100.0
    expected[50] = 101.0
    assert torch.equal(r0["scores"], expected)
    assert _comparable(r0["ledger"]) == _comparable(r1["ledger"])
    assert r0["samples_seen"] == r1["samples_seen"] == sum(
        len(r0["shards"][e]) + len(r1["shards"][e]) for e in range(EPOCHS)
    ) + 4
