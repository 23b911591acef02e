"""thread_limit: one intra-op thread for the calling thread, nothing changed for any other thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import torch

from probe.diagnostics import thread_limit


def _in_thread(fn):  # noqa: ANN001, ANN202
    out: list = []
    worker = threading.Thread(target=lambda: out.append(fn()))
    worker.start()
    worker.join()
    return out[0]


@pytest.mark.skipif(not thread_limit.available(), reason="needs torch's OpenMP runtime (and MKL where built in)")
@pytest.mark.parametrize("user_set_threads", [False, True], ids=["torch-default", "user-called-set_num_threads"])
def test_limits_only_the_calling_thread(user_set_threads: bool) -> None:
    before = torch.get_num_threads()
    if user_set_threads:
        torch.set_num_threads(before)  # torch's lazy per-thread set-up then re-applies it in new threads

    def limited() -> tuple[bool, int, float]:
        ok = thread_limit.limit_this_thread()
        x = torch.randn(64, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        return ok, torch.get_num_threads(), torch.linalg.eigvalsh(x.mT @ x)[-1].item()

    ok, inside, largest = _in_thread(limited)
    assert ok and inside == 1 and largest > 0
    assert torch.get_num_threads() == before  # the caller's thread
    assert _in_thread(torch.get_num_threads) == before  # and any new thread


def test_reports_failure_instead_of_raising_where_unavailable(monkeypatch) -> None:
    monkeypatch.setattr(thread_limit, "_runtime", lambda: None)  # e.g. a build with another OpenMP runtime
    assert not thread_limit.available()
    assert _in_thread(thread_limit.limit_this_thread) is False


def test_the_pool_computes_on_the_calling_thread_where_unavailable(monkeypatch) -> None:
    from probe.diagnostics.spectra_pool import SpectraPool, SpectrumRequest

    monkeypatch.setattr(thread_limit, "_runtime", lambda: None)
    gen = torch.Generator().manual_seed(1)
    requests = [SpectrumRequest(torch.randn(12, 5, generator=gen), 64, 4, i) for i in range(4)]
    pool = SpectraPool(2)
    results = pool.compute(requests)
    assert pool._pool is None  # no worker thread was started
    assert len(results) == 4 and all(r.spectrum.values.shape == (5,) for r in results)


_RELEASE_SCRIPT = """
import os, time, torch
from probe.diagnostics import thread_limit
torch.set_num_threads(2)
def threads():
    return len(os.listdir("/proc/self/task"))
x = torch.randn(1 << 20)
def parallel_op():
    return float((x * 2.0).sum())  # well above torch's grain size: a 2-thread OpenMP region
expected = parallel_op()
with_team = threads()
released = thread_limit.release_idle_threads()
# The runtime has joined the thread; the kernel may list it a moment longer while it tears it down.
deadline = time.monotonic() + 5
while threads() >= with_team and time.monotonic() < deadline:
    time.sleep(0.01)
after_release = threads()
again = parallel_op()
print(released, with_team, after_release, threads(), torch.get_num_threads(), again == expected)
"""


@pytest.mark.skipif(not thread_limit.available() or not os.path.isdir("/proc/self/task"),
                    reason="needs torch's OpenMP runtime and Linux's /proc")
def test_release_idle_threads_ends_the_idle_team_threads_and_the_next_region_restarts_them() -> None:
    # A fresh process: torch.set_num_threads(2) must not leak into the other tests.
    out = subprocess.run([sys.executable, "-c", _RELEASE_SCRIPT], capture_output=True, text=True, check=True,
                         timeout=120).stdout.split()
    released, with_team, after_release, restarted, num_threads, same = out
    assert released == "True"
    assert int(after_release) <= int(with_team) - 1  # the team's one idle thread ended
    assert int(restarted) >= int(after_release) + 1  # and the next parallel region started it again
    assert num_threads == "2" and same == "True"  # the settings stayed, results are unchanged


def test_release_idle_threads_reports_failure_instead_of_raising_where_unavailable(monkeypatch) -> None:
    monkeypatch.setattr(thread_limit, "_runtime", lambda: None)
    assert thread_limit.release_idle_threads() is False


@pytest.mark.skipif(not thread_limit.available(), reason="needs torch's OpenMP runtime")
def test_release_idle_threads_stops_at_the_process_wide_cap(monkeypatch) -> None:
    team = torch.get_num_threads() - 1
    if team < 1:
        pytest.skip("needs 2 or more torch threads")
    monkeypatch.setattr(thread_limit, "_released", thread_limit.RELEASED_THREADS_MAX - team)
    assert thread_limit.release_idle_threads() is True  # the last release that fits
    assert thread_limit._released == thread_limit.RELEASED_THREADS_MAX
    assert thread_limit.release_idle_threads() is False
    assert thread_limit._released == thread_limit.RELEASED_THREADS_MAX


_LIMITED_HERE_SCRIPT = """
import json, torch
from probe.diagnostics import thread_limit
torch.set_num_threads(2)
mkl = thread_limit._runtime().mkl
def counts():
    return [torch.get_num_threads(), mkl.max_threads() if mkl is not None else 1]
def own_mkl():  # the thread's local MKL count (0: none), read by setting it and putting it back
    own = mkl.set_local(0)
    mkl.set_local(own)
    return own
own_mkl_before = own_mkl() if mkl is not None else 0
with thread_limit.limited_here():  # the training thread as it is
    pass
own_mkl_after = own_mkl() if mkl is not None else 0
if mkl is not None:
    mkl.set_local(1)  # a thread-local MKL count unlike the OpenMP one, which the block must put back
before = counts()
with thread_limit.limited_here() as one:
    inside = counts()
after = counts()
try:
    with thread_limit.limited_here():
        raise RuntimeError("in the block")
except RuntimeError:
    pass
print(json.dumps([own_mkl_after - own_mkl_before, one, before, inside, after, counts(), mkl is not None]))
"""


@pytest.mark.skipif(not thread_limit.available(), reason="needs torch's OpenMP runtime, and MKL if built in")
def test_limited_here_limits_the_block_and_puts_the_thread_counts_back_even_after_an_error() -> None:
    # A fresh process: the counts set here must not leak into the other tests.
    out = subprocess.run([sys.executable, "-c", _LIMITED_HERE_SCRIPT], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    own_mkl_change, one, before, inside, after, after_error, has_mkl = json.loads(out)
    assert own_mkl_change == 0  # the thread's own MKL count (torch's, or none) is back as it was
    assert before == [2, 1]  # OpenMP's count and MKL's differ: each must come back as itself
    assert one is True and inside == [1, 1]
    assert after == before and after_error == before


def test_limited_here_yields_false_where_unavailable(monkeypatch) -> None:
    monkeypatch.setattr(thread_limit, "_runtime", lambda: None)
    before = torch.get_num_threads()
    with thread_limit.limited_here() as one:
        assert one is False and torch.get_num_threads() == before
