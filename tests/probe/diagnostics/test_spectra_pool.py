"""SpectraPool: batched and parallel spectra must equal the one-matrix-at-a-time results, in order."""

from __future__ import annotations

import threading

import pytest
import torch

from probe.diagnostics.spectra import singular_values, spectrum_stats
from probe.diagnostics.spectra_pool import SpectraPool, SpectrumRequest


def _requests() -> list[SpectrumRequest]:
    gen = torch.Generator().manual_seed(0)
    # same smaller side, different longer sides and orientations: one batched call
    shapes = [(48, 16), (16, 48), (48, 16), (20, 20), (16, 48), (20, 20), (9, 5), (32, 16), (16, 100), (60, 40)]
    mats = [torch.randn(*s, generator=gen) for s in shapes]
    mats[3][1, 1] = float("nan")  # one broken matrix in a batched group
    # the last one is measured by the randomized top-k (min side 40 > full_max_dim 30)
    return [SpectrumRequest(m, full_max_dim=30, top_k=6, seed=100 + i) for i, m in enumerate(mats)]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_results_equal_single_matrix_spectra_in_request_order(workers: int) -> None:
    requests = _requests()
    pool = SpectraPool(workers)
    try:
        results = pool.compute(requests)
    finally:
        pool.close()
    assert len(results) == len(requests)
    for request, result in zip(requests, results):
        gen = torch.Generator().manual_seed(request.seed)
        expected = singular_values(request.mat, full_max_dim=30, top_k=6, generator=gen)
        assert result.spectrum.truncated == expected.truncated
        torch.testing.assert_close(result.spectrum.values, expected.values, rtol=1e-5, atol=1e-6, equal_nan=True)
        for q, v in spectrum_stats(expected).items():
            torch.testing.assert_close(result.stats[q], v, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert results[-1].spectrum.truncated and results[-1].spectrum.values.shape == (6,)
    assert torch.isnan(results[3].spectrum.values).all() and not torch.isnan(results[5].spectrum.values).any()


def test_randomized_values_do_not_depend_on_the_worker_count() -> None:
    requests = _requests()
    one, three = SpectraPool(1), SpectraPool(3)
    try:
        a, b = one.compute(requests), three.compute(requests)
    finally:
        one.close()
        three.close()
    torch.testing.assert_close(a[-1].spectrum.values, b[-1].spectrum.values)


def test_thread_counts_are_left_alone_and_workers_stop_on_close(monkeypatch) -> None:
    def forbidden(n: int) -> None:
        raise AssertionError("torch.set_num_threads changes process-wide state; the pool must not call it")

    monkeypatch.setattr(torch, "set_num_threads", forbidden)
    before = torch.get_num_threads()
    pool = SpectraPool(2)
    pool.compute(_requests())
    assert torch.get_num_threads() == before
    assert any(t.name.startswith("optiscope-spectra") for t in threading.enumerate())
    pool.close()
    # a closed pool starts again on demand
    assert len(pool.compute(_requests()[:3])) == 3
    pool.close()


def test_an_error_in_a_worker_reaches_the_caller(monkeypatch) -> None:
    import probe.diagnostics.spectra_pool as spectra_pool

    def broken(mats):
        raise RuntimeError("eigensolver failed")

    monkeypatch.setattr(spectra_pool, "exact_spectra", broken)  # raised in a worker thread
    before = torch.get_num_threads()
    pool = SpectraPool(2)
    try:
        with pytest.raises(RuntimeError, match="eigensolver"):
            pool.compute(_requests())
    finally:
        pool.close()
    assert torch.get_num_threads() == before


def test_a_request_must_be_a_matrix() -> None:
    with pytest.raises(ValueError, match="2-D"):
        SpectrumRequest(torch.ones(3, 3, 3), full_max_dim=30, top_k=2, seed=0)


def test_rejects_zero_workers() -> None:
    with pytest.raises(ValueError, match="workers"):
        SpectraPool(0)


def test_requests_are_dealt_out_as_one_share_per_worker_of_about_equal_work(monkeypatch) -> None:
    import probe.diagnostics.spectra_pool as spectra_pool

    shares: list[list[list[int]]] = []
    real = spectra_pool._measure_share
    monkeypatch.setattr(spectra_pool, "_measure_share",
                        lambda requests, share: shares.append(share) or real(requests, share))
    requests = _requests()
    pool = SpectraPool(2)
    try:
        results = pool.compute(requests)
    finally:
        pool.close()
    assert len(results) == len(requests)
    if not spectra_pool.thread_limit.available():
        assert shares == []  # computed on the calling thread
        return
    assert len(shares) == 2  # several batched calls and top-k estimates, but one share per worker
    assert sorted(i for share in shares for batch in share for i in batch) == list(range(len(requests)))
    loads = [sum(spectra_pool._cost(requests, i) for batch in share for i in batch) for share in shares]
    biggest = max(spectra_pool._cost(requests, i) for i in range(len(requests)))
    assert abs(loads[0] - loads[1]) <= biggest  # the greedy deal is off by at most one request


def test_the_calling_threads_share_is_smaller_by_its_other_work() -> None:
    import probe.diagnostics.spectra_pool as spectra_pool

    gen = torch.Generator().manual_seed(3)
    requests = [SpectrumRequest(torch.randn(64, 16, generator=gen), 30, 4, i) for i in range(40)]
    one = spectra_pool._cost(requests, 0)
    for preload in (0.0, 10 * one):
        shares = spectra_pool._shares(requests, range(40), 2, preload)
        assert sorted(i for share in shares for batch in share for i in batch) == list(range(40))
        assert all(len(share) == 1 for share in shares)  # one smaller side: one batched call a share
        caller, worker = (sum(spectra_pool._cost(requests, i) for i in share[0]) for share in shares)
        assert abs(caller + preload - worker) <= one


def test_idle_openmp_threads_are_released_before_the_workers_start(monkeypatch) -> None:
    import probe.diagnostics.spectra_pool as spectra_pool

    order: list[str] = []
    real_release, real_task = spectra_pool.thread_limit.release_idle_threads, spectra_pool._measure_share
    monkeypatch.setattr(spectra_pool.thread_limit, "release_idle_threads",
                        lambda: order.append("release") or real_release())
    monkeypatch.setattr(spectra_pool, "_measure_share",
                        lambda requests, task: order.append("task") or real_task(requests, task))
    pool = SpectraPool(2)
    try:
        assert len(pool.compute(_requests())) == len(_requests())
    finally:
        pool.close()
    if not spectra_pool.thread_limit.available():
        assert order == []  # everything on the calling thread: no worker, nothing to release for
    else:
        assert order == ["release", "task", "task"]


def test_the_calling_thread_computes_one_share_single_threaded_and_gets_its_counts_back(monkeypatch) -> None:
    import probe.diagnostics.spectra_pool as spectra_pool

    if not spectra_pool.thread_limit.available():
        pytest.skip("needs torch's OpenMP runtime: without it everything runs on the calling thread")
    shares: list[tuple[int, int]] = []  # (thread, torch threads while computing) of each share
    real = spectra_pool._measure_share
    monkeypatch.setattr(spectra_pool, "_measure_share", lambda requests, share: shares.append(
        (threading.get_ident(), torch.get_num_threads())) or real(requests, share))
    before = torch.get_num_threads()
    pool = SpectraPool(2)
    try:
        assert len(pool.compute(_requests())) == len(_requests())
    finally:
        pool.close()
    caller = threading.get_ident()
    assert sorted(thread == caller for thread, _ in shares) == [False, True]  # one here, one on the pool
    assert [n for _, n in shares] == [1, 1]
    assert torch.get_num_threads() == before


def test_an_error_in_the_calling_threads_share_waits_for_the_workers_and_restores_its_counts(
    monkeypatch,
) -> None:
    import probe.diagnostics.spectra_pool as spectra_pool

    if not spectra_pool.thread_limit.available():
        pytest.skip("needs torch's OpenMP runtime: without it everything runs on the calling thread")
    caller = threading.get_ident()
    finished: list[int] = []
    real = spectra_pool._measure_share

    def share(requests, task):  # noqa: ANN001, ANN202
        if threading.get_ident() == caller:
            raise RuntimeError("eigensolver failed here")
        out = real(requests, task)
        finished.append(threading.get_ident())
        return out

    monkeypatch.setattr(spectra_pool, "_measure_share", share)
    before = torch.get_num_threads()
    pool = SpectraPool(2)
    try:
        with pytest.raises(RuntimeError, match="failed here"):
            pool.compute(_requests())
        assert len(finished) == 1  # the worker's share was done before compute() returned
    finally:
        pool.close()
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("workers", [1, 2])
def test_groups_hold_every_request_once_with_the_rows_of_its_per_request_result(workers: int) -> None:
    requests = _requests()
    pool = SpectraPool(workers)
    try:
        groups, results = pool.compute_groups(requests), pool.compute(requests)
    finally:
        pool.close()
    assert sorted(i for group in groups for i in group.indices) == list(range(len(requests)))
    for group in groups:
        assert group.spectrum.values.shape[0] == len(group.indices)
        for b, i in enumerate(group.indices):
            torch.testing.assert_close(group.spectrum.values[b], results[i].spectrum.values, equal_nan=True)
            assert group.stats.keys() == results[i].stats.keys()
            for q, v in group.stats.items():
                torch.testing.assert_close(v[b], results[i].stats[q], equal_nan=True)


@pytest.mark.parametrize("workers", [1, 2])
def test_other_work_runs_once_on_the_calling_thread_single_threaded(workers: int) -> None:
    import probe.diagnostics.spectra_pool as spectra_pool

    seen: list[tuple[int, int]] = []
    pool = SpectraPool(workers)
    try:
        groups = pool.compute_groups(_requests(), meanwhile=lambda: seen.append(
            (threading.get_ident(), torch.get_num_threads())))
    finally:
        pool.close()
    assert sorted(i for group in groups for i in group.indices) == list(range(len(_requests())))
    assert [thread for thread, _ in seen] == [threading.get_ident()]
    if workers > 1 and spectra_pool.thread_limit.available():
        assert seen[0][1] == 1  # while the pool threads compute, the calling thread is single-threaded too


def test_slow_other_work_moves_the_calling_threads_share_to_the_pool(monkeypatch) -> None:
    import time

    import probe.diagnostics.spectra_pool as spectra_pool

    if not spectra_pool.thread_limit.available():
        pytest.skip("needs torch's OpenMP runtime: without it everything runs on the calling thread")
    caller = threading.get_ident()
    mine: list[int] = []  # requests the calling thread measured, per call
    real = spectra_pool._measure_share

    def share_of(requests, share):  # noqa: ANN001, ANN202
        if threading.get_ident() == caller:
            mine.append(sum(map(len, share)))
        return real(requests, share)

    monkeypatch.setattr(spectra_pool, "_measure_share", share_of)
    gen = torch.Generator().manual_seed(5)
    requests = [SpectrumRequest(torch.randn(64, 16, generator=gen), 30, 4, i) for i in range(12)]
    pool = SpectraPool(2)
    try:
        for _ in range(2):
            groups = pool.compute_groups(requests, meanwhile=lambda: time.sleep(0.05))
            assert sorted(i for group in groups for i in group.indices) == list(range(12))
    finally:
        pool.close()
    assert mine[0] == 6  # nothing known yet: an even deal
    assert mine[1] == 0  # 50 ms of other work outweighs all twelve small spectra: the pool takes them
