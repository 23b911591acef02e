"""InfoBatch resumed mid-epoch continues the saved plan exactly (the issue's N=3000, saved after 20 of 64 batches)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from probe.data import InfoBatch

N, BATCH, SAVED_AFTER = 3000, 47, 20  # 64 batches per unpruned epoch


def _loss(idx: torch.Tensor, epoch: int) -> torch.Tensor:
    """Deterministic per-sample losses that move between epochs, so a re-plan would differ."""
    return ((idx * 7919 + epoch * 104729) % 1000).float() / 1000 + 0.01


def _epoch(ib: InfoBatch, epoch: int, skip: int = 0, stop: int | None = None) -> list[int]:
    ib.set_epoch(epoch)
    loader = DataLoader(ib.dataset, batch_size=BATCH, sampler=ib)
    seen: list[int] = []
    for b, (idx, _x) in enumerate(loader):
        if b < skip:
            continue  # what a framework's skip-first-batches does: consumed before the checkpoint
        if stop is not None and b == stop:
            break
        ib.update(idx, _loss(idx, epoch))
        seen.extend(idx.tolist())
    return seen


def _sampler() -> InfoBatch:
    return InfoBatch(torch.zeros(N), num_epochs=6, prune_ratio=0.5, seed=3)


def test_resumed_mid_epoch_visits_every_planned_sample_once_as_uninterrupted() -> None:
    straight = _sampler()
    _epoch(straight, 0)
    straight.set_epoch(1)
    plan = straight.epoch_indices.tolist()
    visits_straight = _epoch(straight, 1)

    first = _sampler()
    _epoch(first, 0)
    head = _epoch(first, 1, stop=SAVED_AFTER)
    state = first.state_dict()

    resumed = _sampler()
    resumed.load_state_dict(state)
    tail = _epoch(resumed, 1, skip=SAVED_AFTER)

    assert len(plan) < N  # epoch 1 prunes: the test means something
    assert head + tail == visits_straight == plan  # same order, every planned sample once
    assert len(set(head + tail)) == len(plan)
    assert [r.epoch for r in resumed.ledger] == [0, 1]  # the epoch was not re-planned (no second record)
    assert torch.equal(resumed.scores, straight.scores)


def test_a_resumed_monitor_does_not_log_the_ledger_again() -> None:
    import probe
    from tests.probe.diagnostics.conftest import RecordingRun

    recording_run = RecordingRun()

    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def train(ib: InfoBatch, epochs: range, run) -> None:  # noqa: ANN001
        monitor = probe.attach(model, opt, run=run, infobatch=ib, log_every=1)
        for epoch in epochs:
            ib.set_epoch(epoch)
            for idx, x in DataLoader(ib.dataset, batch_size=500, sampler=ib):
                loss = ib.update(idx, (model(x.unsqueeze(1)).squeeze(1) - 1) ** 2)
                opt.zero_grad()
                loss.backward()
                opt.step()
        monitor.detach()

    first = _sampler()
    train(first, range(2), recording_run)
    resumed = _sampler()
    resumed.load_state_dict(first.state_dict())
    train(resumed, range(2, 4), recording_run)
    epochs = [step for step, m in recording_run.logs if "infobatch.pruned_frac" in m]
    assert epochs == [0, 1, 2, 3]  # each epoch's record once, not [0, 1, 0, 1, 2, 3]
