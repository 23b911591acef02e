"""InfoBatch under DDP: ``update()`` reads nothing back to the host and runs no collective (issue #22).

Two gloo ranks on CPU. In each rank every host read of a tensor's value (``item``, ``tolist``,
``int(t)``, ``float(t)``, ``bool(t)``, ``cpu()``, ``numpy()``…) and every collective is counted while
``update()`` runs; the only reads allowed are the range check of the loader's CPU indices (which are
host data, not device values). On a GPU the same reads would each wait for the device. The old
per-step all-gather read the gathered batch sizes with ``int(...)`` on every step and fails this.

The scores must still be exactly those of one process fed the same batches in the per-step
exchange's order (step by step, rank 0's batch then rank 1's), including non-finite losses, the
padding duplicate, and uneven ``record()`` calls made by one rank only.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from probe.data.infobatch import InfoBatch

N = 37  # odd: the two shards are padded with one duplicate
EPOCHS = 4
WORLD = 2
BATCH = 5
KW: dict[str, Any] = dict(num_epochs=EPOCHS, prune_ratio=0.5, delta=0.75, seed=11)
_HOST_READS = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__", "cpu", "numpy")
_COLLECTIVES = ("all_gather", "all_gather_into_tensor", "all_reduce", "broadcast", "gather", "barrier")


def _losses(indices: torch.Tensor, epoch: int) -> torch.Tensor:
    out = ((indices * 7919 + epoch * 104729) % 1000).float() / 1000 + 0.01
    if epoch == 1:
        out[indices % 11 == 3] = float("nan")  # kept out of the scores, counted
    return out


class _Spy:
    """Counts host reads (outside the index range check) and collectives while armed."""

    def __init__(self) -> None:
        self.armed = False
        self.in_check = 0
        self.reads: list[str] = []
        self.collectives: list[str] = []

    def install(self) -> None:
        for name in _HOST_READS:
            setattr(torch.Tensor, name, self._wrap_read(name, getattr(torch.Tensor, name)))
        for name in _COLLECTIVES:
            setattr(dist, name, self._wrap_collective(name, getattr(dist, name)))
        check = InfoBatch._check_indices

        def checked(ib: InfoBatch, indices: Any) -> torch.Tensor:
            self.in_check += 1
            try:
                return check(ib, indices)
            finally:
                self.in_check -= 1

        InfoBatch._check_indices = checked  # type: ignore[method-assign]

    def _wrap_read(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def read(t: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if self.armed and not self.in_check:
                self.reads.append(f"{name} of {t.dtype} {tuple(t.shape)}")
            return real(t, *args, **kwargs)

        return read

    def _wrap_collective(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def collective(*args: Any, **kwargs: Any) -> Any:
            if self.armed:
                self.collectives.append(name)
            return real(*args, **kwargs)

        return collective


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        spy = _Spy()
        spy.install()
        ib = InfoBatch(list(range(N)), **KW)
        loader = DataLoader(ib.dataset, batch_size=BATCH, sampler=ib)
        batches, plans, seen_before_plan = [], [], []
        for epoch in range(EPOCHS):
            seen_before_plan.append(ib.samples_seen)  # this rank's estimate, before the exchange
            ib.set_epoch(epoch)
            plans.append(ib.epoch_indices)
            epoch_batches = []
            for indices, _ in loader:
                losses = _losses(indices, epoch).requires_grad_()
                spy.armed = True
                loss = ib.update(indices, losses)
                spy.armed = False
                loss.backward()
                epoch_batches.append(indices)
            batches.append(epoch_batches)
            if epoch == 0 and rank == 0:  # one rank alone, between epochs (e.g. an evaluation pass)
                ib.record(torch.tensor([0, 1]), torch.tensor([50.0, float("inf")]))
        # uneven calls: both ranks score index 6 in the same call (rank 1's is later in the exchange
        # order), then rank 0 alone makes one more call, which the old per-step gather could not do
        spy.armed = True
        if rank == 0:
            ib.record(torch.tensor([5, 6, 7]), torch.tensor([100.0, 100.0, 100.0]))
            ib.record(torch.tensor([7]), torch.tensor([300.0]))
        else:
            ib.record(torch.tensor([6]), torch.tensor([200.0]))
        spy.armed = False
        # a checkpoint saved on rank 0 alone must not wait for rank 1 (no collective in the reads):
        # rank 0's own pending pairs are in it, rank 1's (index 6 = 200) only after the exchange
        if rank == 0:
            alone = ib.state_dict()
            assert alone["scores"][[5, 6, 7]].tolist() == [100.0, 100.0, 300.0], alone["scores"][[5, 6, 7]]
        dist.barrier()
        ib.sync()  # every rank: the exchange brings rank 1's pairs in
        torch.save({
            "reads": spy.reads, "collectives": spy.collectives, "batches": batches, "plans": plans,
            "seen_before_plan": seen_before_plan, "scores": ib.scores, "scored": ib.scored,
            "nonfinite": ib.nonfinite_count, "samples_seen": ib.samples_seen, "ledger": ib.ledger,
        }, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # no rank tears gloo down while its peer still communicates
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _comparable(ledger: list) -> list[dict]:
    return [{k: (None if v != v else v) for k, v in r.to_dict().items()} for r in ledger]


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_ddp_update_has_no_host_read_or_collective_and_matches_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r, res in enumerate(ranks):
        assert res["reads"] == [], f"rank {r}: update()/record() read device values: {res['reads'][:5]}"
        assert res["collectives"] == [], f"rank {r}: collectives per step: {res['collectives'][:5]}"

    # one process, fed each step's batches rank-major: what the per-step all-gather computed
    ref = InfoBatch(list(range(N)), **KW)
    seen_before_plan = []
    for epoch in range(EPOCHS):
        seen_before_plan.append(ref.samples_seen)
        ref.set_epoch(epoch)
        assert torch.equal(ref.epoch_indices, ranks[0]["plans"][epoch]), epoch
        assert torch.equal(ref.epoch_indices, ranks[1]["plans"][epoch]), epoch
        steps = list(zip(ranks[0]["batches"][epoch], ranks[1]["batches"][epoch], strict=True))
        for b0, b1 in steps:
            assert b0.numel() == b1.numel()  # the loader's batches: same size on every rank
            ref.update(b0, _losses(b0, epoch))
            ref.update(b1, _losses(b1, epoch))
        if epoch == 0:
            ref.record(torch.tensor([0, 1]), torch.tensor([50.0, float("inf")]))
    ref.record(torch.tensor([5, 6, 7]), torch.tensor([100.0, 100.0, 100.0]))
    ref.record(torch.tensor([6]), torch.tensor([200.0]))
    ref.record(torch.tensor([7]), torch.tensor([300.0]))

    assert any(p.numel() < N for p in ranks[0]["plans"]), "the test should exercise a pruning epoch"
    assert ref.scores[[5, 6, 7]].tolist() == [100.0, 200.0, 300.0]
    assert ref.nonfinite_count > 0
    for r, res in enumerate(ranks):
        assert torch.equal(res["scores"], ref.scores), r
        assert torch.equal(res["scored"], ref.scored), r
        assert res["nonfinite"] == ref.nonfinite_count, r
        assert res["samples_seen"] == ref.samples_seen, r
        assert _comparable(res["ledger"]) == _comparable(ref.ledger), r
        # between exchanges a rank's estimate (its own count times the world) is exact for loader
        # batches; before epoch 1 rank 0 alone had recorded 2 more pairs, which only the exchange counts
        for epoch in range(EPOCHS):
            if epoch != 1:
                assert res["seen_before_plan"][epoch] == seen_before_plan[epoch], (r, epoch)
        assert res["seen_before_plan"][1] == seen_before_plan[1] + (2 if r == 0 else -2), r
