"""InfoBatch: the reference-check properties P21–P25 (ALGORITHMS.md §5.6), annealing, resume, sharding,
the ledger, and argument validation. Single process; the gloo test is in ``test_infobatch_distributed.py``.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from probe.data import InfoBatch
from probe.data.infobatch import EpochStats

# Monte Carlo acceptance: |mean − expectation| within this many standard errors. With a fixed seed the
# test is deterministic; 4.5 SE would be exceeded by chance with probability < 1e-5 per coordinate.
_Z_MAX = 4.5


def _with_scores(scores: torch.Tensor, **kwargs) -> InfoBatch:
    """A sampler over ``len(scores)`` samples whose every sample has been scored with ``scores``."""
    ib = InfoBatch(range(len(scores)), **{"num_epochs": 10, **kwargs})
    ib.record(torch.arange(len(scores)), scores)
    return ib


def _exp_scores(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.empty(n).exponential_(1.0, generator=g)


# ---------------------------------------------------------------------------------------------- P21
def test_equal_scores_prune_nothing() -> None:
    # 0.1 is not representable; its float32 mean over 1001 copies can round one ulp off the value
    ib = _with_scores(torch.full((1001,), 0.1))
    ib.set_epoch(1)
    stats = ib.last_epoch_stats()
    assert stats.pruned_count == 0 and len(ib) == 1001 and stats.d1_frac == 0.0
    assert torch.equal(ib.loss_weights(torch.arange(1001)), torch.ones(1001))


def test_first_epoch_without_scores_prunes_nothing() -> None:
    ib = InfoBatch(range(50), num_epochs=4)
    assert len(ib) == 50
    assert sorted(ib) == list(range(50))
    assert math.isnan(ib.last_epoch_stats().threshold)


@settings(max_examples=40, deadline=None)
@given(
    scores=st.lists(st.floats(0.0, 100.0, width=32), min_size=1, max_size=300),
    prune_ratio=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**31),
)
def test_pruned_count_is_exact(scores: list[float], prune_ratio: float, seed: int) -> None:
    s = torch.tensor(scores, dtype=torch.float32)
    ib = _with_scores(s, prune_ratio=prune_ratio, seed=seed)
    ib.set_epoch(1)
    d1 = s.double() < s.double().mean()
    n1 = int(d1.sum())
    expected_pruned = n1 - math.floor((1 - prune_ratio) * n1)
    kept = ib.epoch_indices
    assert ib.last_epoch_stats().pruned_count == len(s) - kept.numel() == expected_pruned
    keep_mask = torch.zeros(len(s), dtype=torch.bool)
    keep_mask[kept] = True
    assert keep_mask[~d1].all(), "a sample at or above the mean was pruned"
    assert kept.unique().numel() == kept.numel(), "an index repeats within an epoch"
    w = ib.loss_weights(kept)
    assert torch.allclose(w[d1[kept]], torch.tensor(1 / (1 - prune_ratio)))
    assert torch.equal(w[~d1[kept]], torch.ones(int((~d1[kept]).sum())))


# ---------------------------------------------------------------------------------------------- P22
def test_weighted_gradient_sum_is_unbiased() -> None:
    """Monte Carlo over epochs: E[Σ_kept w_i g_i] = Σ_D₂ g + c·Σ_D₁ g with c = ⌊(1−r)|D₁|⌋/((1−r)|D₁|)."""
    n, draws, r = 1000, 600, 0.5
    scores = _exp_scores(n)
    g = torch.Generator().manual_seed(1)
    grads = torch.randn(n, 3, generator=g, dtype=torch.float64) + 1.0  # stand-in per-sample gradients
    ib = _with_scores(scores, prune_ratio=r, num_epochs=draws + 1, delta=1.0, seed=3)
    sums = torch.empty(draws, 3, dtype=torch.float64)
    for e in range(draws):
        ib.set_epoch(e)
        kept = ib.epoch_indices
        sums[e] = (ib.loss_weights(kept).double()[:, None] * grads[kept]).sum(0)
    d1 = scores.double() < scores.double().mean()
    n1 = int(d1.sum())
    c = math.floor((1 - r) * n1) / ((1 - r) * n1)
    expected = grads[~d1].sum(0) + c * grads[d1].sum(0)
    se = sums.std(0) / math.sqrt(draws)
    z = (sums.mean(0) - expected) / se
    assert z.abs().max() < _Z_MAX, f"biased: z = {z.tolist()}"
    ratio = sums.mean(0) / grads.sum(0)
    assert torch.allclose(ratio, torch.ones(3, dtype=torch.float64), atol=1e-2)


# ---------------------------------------------------------------------------------------------- P23
@pytest.mark.parametrize(
    ("kind", "expected"),
    [("exponential", 0.5 * (1 - math.exp(-1))), ("uniform", 0.25)],
)
def test_pruned_fraction_matches_r_times_below_mean(kind: str, expected: float) -> None:
    n = 100_000
    uniform = torch.rand(n, generator=torch.Generator().manual_seed(0))
    scores = _exp_scores(n) if kind == "exponential" else uniform
    ib = _with_scores(scores, prune_ratio=0.5)
    ib.set_epoch(1)
    stats = ib.last_epoch_stats()
    assert stats.pruned_frac == pytest.approx(expected, abs=0.01)
    assert stats.pruned_frac == pytest.approx(0.5 * stats.d1_frac, abs=1e-4)
    assert stats.weight_sum == pytest.approx(n, abs=1.0)
    assert stats.rescale == 2.0 and not stats.annealing


# ---------------------------------------------------------------------------------------------- P24
def test_annealing_epochs_use_all_data_with_weight_one() -> None:
    n, epochs = 500, 200
    ib = _with_scores(_exp_scores(n), num_epochs=epochs, delta=0.875)
    assert ib.prune_epochs == 175
    ib.set_epoch(174)
    assert len(ib) < n and ib.loss_weights(torch.arange(n)).max() == 2.0
    for e in range(175, 200):
        ib.set_epoch(e)
        assert sorted(ib) == list(range(n))
        assert torch.equal(ib.loss_weights(torch.arange(n)), torch.ones(n))
        assert ib.last_epoch_stats().annealing and ib.last_epoch_stats().rescale == 1.0


def test_weights_reset_when_epochs_times_delta_is_fractional() -> None:
    """10 · 0.875 = 8.75: the official weight reset never fires; ours must, on epoch 8."""
    n = 300
    ib = _with_scores(_exp_scores(n), num_epochs=10, delta=0.875)
    assert ib.prune_epochs == 8
    ib.set_epoch(7)
    assert ib.loss_weights(ib.epoch_indices).max() == 2.0
    for e in (8, 9):
        ib.set_epoch(e)
        assert ib.epoch_indices.sort().values.tolist() == list(range(n))
        assert torch.equal(ib.loss_weights(torch.arange(n)), torch.ones(n))
    assert InfoBatch(range(3), num_epochs=100, delta=0.29).prune_epochs == 29  # 100·0.29 = 28.999…


# ---------------------------------------------------------------------------------------------- P25
def test_update_records_scores_and_returns_weighted_mean() -> None:
    n = 64
    ib = _with_scores(_exp_scores(n), num_epochs=5)
    ib.set_epoch(1)
    before = ib.scores
    idx = ib.epoch_indices[:8]
    w = ib.loss_weights(idx)
    assert w.max() == 2.0, "the batch should include a rescaled sample for this check to bite"
    theta = torch.randn(8, requires_grad=True)
    losses = theta.exp()
    out = ib.update(idx, losses)
    assert out.shape == () and out.requires_grad
    assert torch.allclose(out, (w * losses).mean())
    out.backward()
    assert torch.allclose(theta.grad, w * losses.detach() / 8)
    after = ib.scores
    assert torch.equal(after[idx], losses.detach())
    others = torch.ones(n, dtype=torch.bool)
    others[idx] = False
    assert torch.equal(after[others], before[others])
    assert ib.samples_seen == n + 8


def test_nonfinite_losses_are_excluded_counted_and_reported() -> None:
    ib = _with_scores(torch.arange(1.0, 11.0), num_epochs=5)
    losses = torch.tensor([float("nan"), float("inf"), 0.5])
    out = ib.update([0, 1, 2], losses)
    assert torch.isnan(out), "the loss to back-propagate is not silently cleaned"
    assert ib.scores[:3].tolist() == [1.0, 2.0, 0.5]
    assert ib.nonfinite_count == 2 and ib.samples_seen == 13
    ib.set_epoch(1)
    stats = ib.last_epoch_stats()
    expected = (1.0 + 2.0 + 0.5 + sum(range(4, 11))) / 10  # scores 0, 1 kept their old values
    assert stats.threshold == pytest.approx(expected) and stats.nonfinite == 2


# ---------------------------------------------------------------------------------------------- loop
def _fake_losses(indices: torch.Tensor, epoch: int) -> torch.Tensor:
    """Deterministic per-sample 'losses' that shrink with the epoch and differ between samples."""
    g = (indices * 7919 + epoch * 104729) % 1000
    return (g.float() / 1000 + 0.01) / (1 + epoch)


def _run_epochs(ib: InfoBatch, loader: DataLoader, epochs: range) -> list[tuple[list[int], list[float]]]:
    seen = []
    for epoch in epochs:
        ib.set_epoch(epoch)
        assert len(loader) == ib.steps_per_epoch(loader.batch_size) == math.ceil(len(ib) / loader.batch_size)
        idx_all, w_all = [], []
        for indices, (x,) in loader:
            assert torch.equal(x, indices.float() * 2)  # the item matches its index
            ib.update(indices, _fake_losses(indices, epoch))
            idx_all += indices.tolist()
            w_all += ib.loss_weights(indices).tolist()
        assert len(idx_all) == len(ib)
        seen.append((idx_all, w_all))
    return seen


def test_loader_yields_indices_and_len_shrinks() -> None:
    n = 200
    data = TensorDataset(torch.arange(n).float() * 2)
    ib = InfoBatch(data, num_epochs=4, delta=0.5, seed=5)
    loader = DataLoader(ib.dataset, batch_size=16, sampler=ib)
    seen = _run_epochs(ib, loader, range(4))
    sizes = [len(s[0]) for s in seen]
    assert sizes[0] == n and sizes[1] < n and sizes[2] == sizes[3] == n
    assert [r.epoch for r in ib.ledger] == [0, 1, 2, 3]
    assert [r.annealing for r in ib.ledger] == [False, False, True, True]
    assert ib.ledger[2].samples_seen == n + sizes[1]
    assert ib.samples_seen == sum(sizes)
    assert ib.ledger[-1].saved_frac_cum == pytest.approx((n - sizes[1]) / (4 * n))


def test_iterating_without_set_epoch_advances_the_epoch() -> None:
    ib = _with_scores(_exp_scores(100), num_epochs=3, delta=1.0)
    first = list(ib)
    second = list(ib)
    assert ib.epoch == 1 and len(first) == 100 and len(second) < 100


def test_resume_reproduces_the_same_epochs() -> None:
    n, epochs = 300, 8
    data = TensorDataset(torch.arange(n).float() * 2)

    def fresh() -> tuple[InfoBatch, DataLoader]:
        ib = InfoBatch(data, num_epochs=epochs, seed=11, labels=torch.arange(n) % 3)
        return ib, DataLoader(ib.dataset, batch_size=32, sampler=ib)

    ib_a, loader_a = fresh()
    reference = _run_epochs(ib_a, loader_a, range(epochs))

    ib_b, loader_b = fresh()
    head = _run_epochs(ib_b, loader_b, range(3))
    state = ib_b.state_dict()
    ib_c, loader_c = fresh()
    ib_c.load_state_dict(state)
    tail = _run_epochs(ib_c, loader_c, range(3, epochs))
    assert head + tail == reference
    assert ib_c.ledger == ib_a.ledger
    assert torch.equal(ib_c.scores, ib_a.scores) and ib_c.samples_seen == ib_a.samples_seen


def test_resume_mid_epoch_keeps_the_planned_order_and_weights() -> None:
    ib = _with_scores(_exp_scores(400), seed=2)
    ib.set_epoch(3)
    order, weights = ib.epoch_indices, ib.loss_weights(ib.epoch_indices)
    ib.update(order[:10], torch.zeros(10))  # changes scores after planning
    other = InfoBatch(range(400), num_epochs=10, seed=999)
    other.load_state_dict(ib.state_dict())
    assert other.epoch == 3 and torch.equal(torch.tensor(list(other)), order)
    assert torch.equal(other.loss_weights(order), weights)


def test_load_state_dict_rejects_other_dataset_size() -> None:
    with pytest.raises(ValueError, match="num_samples"):
        InfoBatch(range(5), num_epochs=2).load_state_dict(InfoBatch(range(6), num_epochs=2).state_dict())


# ---------------------------------------------------------------------------------------------- RNG
def test_seeding_is_deterministic_and_leaves_global_rng_alone() -> None:
    scores = _exp_scores(500)
    torch.manual_seed(123)
    random.seed(123)
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    a, b, c = (_with_scores(scores, seed=s) for s in (4, 4, 5))
    for ib in (a, b, c):
        ib.set_epoch(1)
    assert torch.equal(a.epoch_indices, b.epoch_indices)
    assert not torch.equal(a.epoch_indices, c.epoch_indices)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    d, e = _with_scores(scores, generator=g1), _with_scores(scores, generator=g2)
    d.set_epoch(2), e.set_epoch(2)
    assert torch.equal(d.epoch_indices, e.epoch_indices)
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state


def test_set_epoch_twice_gives_the_same_plan_and_one_ledger_record() -> None:
    ib = _with_scores(_exp_scores(300))
    ib.set_epoch(2)
    first = ib.epoch_indices
    ib.set_epoch(2)
    assert torch.equal(first, ib.epoch_indices)
    assert [r.epoch for r in ib.ledger] == [0, 2]


# ---------------------------------------------------------------------------------------------- shards
def test_ranks_get_disjoint_shards_of_the_same_kept_set() -> None:
    n = 257
    source = _with_scores(_exp_scores(n), seed=8)
    state = source.state_dict()
    for drop_last in (False, True):
        ranks = [
            InfoBatch(range(n), num_epochs=10, num_replicas=3, rank=r, drop_last=drop_last) for r in range(3)
        ]
        for ib in ranks:
            ib.load_state_dict(state)
            ib.set_epoch(1)
        kept = ranks[0].epoch_indices
        assert all(torch.equal(ib.epoch_indices, kept) for ib in ranks)
        shards = [list(ib) for ib in ranks]
        assert len({len(s) for s in shards}) == 1
        flat = sum(shards, [])
        if drop_last:
            assert len(set(flat)) == len(flat) == (kept.numel() // 3) * 3
        else:
            assert set(flat) == set(kept.tolist()) and len(flat) == math.ceil(kept.numel() / 3) * 3
            # shards are disjoint apart from the padding, which repeats the head of the list
            assert len(flat) - len(set(flat)) == len(flat) - kept.numel()


def test_record_without_process_group_refuses_when_sharded() -> None:
    ib = InfoBatch(range(10), num_epochs=2, num_replicas=2, rank=1)
    with pytest.raises(RuntimeError, match="not initialised"):
        ib.update([0, 1], torch.ones(2))


# ---------------------------------------------------------------------------------------------- ledger
def test_ledger_per_class_pruned_fraction_and_metrics() -> None:
    n = 3000
    labels = torch.arange(n) % 3
    # class 0 is well learned (low loss), class 2 is hard: only class 0 should be pruned
    scores = torch.where(labels == 0, 0.1, torch.where(labels == 1, 4.0, 5.0))
    data = TensorDataset(torch.zeros(n))
    data.targets = labels.tolist()
    ib = InfoBatch(data, num_epochs=10, labels="targets")
    ib.record(torch.arange(n), scores)
    ib.set_epoch(1)
    stats = ib.last_epoch_stats()
    assert stats.class_pruned_frac == pytest.approx((0.5, 0.0, 0.0))
    assert stats.scores_hist is not None and sum(stats.scores_hist) == n
    assert stats.scores_hist_range == pytest.approx((0.1, 5.0))
    metrics = stats.as_metrics()
    contract = "threshold d1_frac pruned_count pruned_frac rescale saved_frac_cum annealing samples_seen nonfinite"
    assert set(metrics) == {f"infobatch.{q}" for q in contract.split()}
    assert metrics["infobatch.pruned_count"] == 500.0 and metrics["infobatch.annealing"] == 0.0
    assert EpochStats.from_dict(stats.to_dict()) == stats


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prune_ratio": -0.1}, "prune_ratio"),
        ({"prune_ratio": 1.0}, "prune_ratio"),
        ({"prune_ratio": 1.5}, "prune_ratio"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.01}, "delta"),
        ({"num_epochs": 0}, "num_epochs"),
        ({"num_epochs": 2.5}, "num_epochs"),
        ({"seed": 1, "generator": torch.Generator()}, "seed"),
        ({"labels": [0, 1]}, "labels"),
        ({"labels": [-1] * 10}, "labels"),
        ({"labels": "nope"}, "labels"),
        ({"num_replicas": 0}, "num_replicas"),
        ({"num_replicas": 2, "rank": 2}, "rank"),
    ],
)
def test_bad_constructor_arguments_raise(kwargs: dict, match: str) -> None:
    args = {"num_epochs": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        InfoBatch(range(10), **args)


@pytest.mark.parametrize(
    ("indices", "losses", "match"),
    [
        (torch.tensor([[0, 1]]), torch.ones(2), "indices"),
        (torch.tensor([0.0, 1.0]), torch.ones(2), "indices"),
        (torch.tensor([0, 10]), torch.ones(2), "indices"),
        (torch.tensor([-1, 0]), torch.ones(2), "indices"),
        (torch.tensor([], dtype=torch.int64), torch.ones(0), "indices"),
        (torch.tensor([0, 1]), torch.ones(3), "losses"),
        (torch.tensor([0, 1]), torch.tensor(1.0), "losses"),
        (torch.tensor([0, 1]), torch.ones(2, 1), "losses"),
        (torch.tensor([0, 1]), torch.ones(2, dtype=torch.int64), "losses"),
    ],
)
def test_bad_update_arguments_raise(indices: torch.Tensor, losses: torch.Tensor, match: str) -> None:
    ib = InfoBatch(range(10), num_epochs=3)
    with pytest.raises(ValueError, match=match):
        ib.update(indices, losses)
    assert ib.samples_seen == 0


def test_bad_set_epoch_and_batch_size_raise() -> None:
    ib = InfoBatch(range(10), num_epochs=3)
    with pytest.raises(ValueError, match="epoch"):
        ib.set_epoch(-1)
    with pytest.raises(ValueError, match="batch_size"):
        ib.steps_per_epoch(0)


@pytest.fixture
def one_thread():
    """Tiny matmuls only lose to intra-op thread hand-off on a shared CPU; restore the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_update_works_with_a_real_model(one_thread: None) -> None:
    """A few steps of logistic regression: the weighted loss back-propagates into the parameters."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 5, generator=g), torch.randint(0, 2, (128,), generator=g)
    model = torch.nn.Linear(5, 2)
    ib = InfoBatch(TensorDataset(x, y), num_epochs=3, seed=0)
    loader = DataLoader(ib.dataset, batch_size=64, sampler=ib)
    losses_per_epoch = []
    for epoch in range(3):
        ib.set_epoch(epoch)
        total = 0.0
        for indices, (xb, yb) in loader:
            loss = ib.update(indices, F.cross_entropy(model(xb), yb, reduction="none"))
            model.zero_grad()
            loss.backward()
            with torch.no_grad():  # plain SGD by hand: torch.optim's first use costs seconds of imports
                for p in model.parameters():
                    p -= 0.5 * p.grad
            total += float(loss.detach())
        losses_per_epoch.append(total)
    assert ib.scored.all()
    assert ib.ledger[1].pruned_count > 0
    assert losses_per_epoch[-1] < losses_per_epoch[0]
