"""Properties of the spike-preserving downsampler (pure function, no database)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from server.downsample import downsample_indices


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3000, 60000), n_out=st.integers(100, 2000), spike_at=st.floats(0, 1),
       seed=st.integers(0, 2**16))
def test_single_spike_and_endpoints_always_survive(n: int, n_out: int, spike_at: float, seed: int) -> None:
    y = np.random.default_rng(seed).normal(size=n)
    i = min(n - 1, int(spike_at * n))
    y[i] = 1e9 if seed % 2 else -1e9
    idx = downsample_indices(y, n_out)
    assert i in idx and 0 in idx and n - 1 in idx
    assert np.all(np.diff(idx) > 0)
    assert len(idx) <= n_out + 3


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3000, 30000), runs=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 50),
                                                           st.sampled_from([np.nan, np.inf, -np.inf])),
                                                 max_size=5))
def test_every_nonfinite_run_is_visible(n: int, runs: list) -> None:  # noqa: ANN001
    y = np.sin(np.arange(n) / 100.0)
    for pos, length, value in runs:
        start = int(pos * (n - 1))
        y[start:start + length] = value
    idx = downsample_indices(y, 1000)
    kept = set(idx.tolist())
    bad = ~np.isfinite(y)
    # every maximal run of one non-finite kind has its first point kept
    code = np.where(np.isnan(y), 1, np.where(np.isposinf(y), 2, np.where(np.isneginf(y), 3, 0)))
    starts = [j for j in range(n) if bad[j] and (j == 0 or code[j - 1] != code[j])]
    assert all(j in kept for j in starts)


def test_short_series_is_returned_whole() -> None:
    y = np.array([1.0, np.nan, 3.0])
    assert downsample_indices(y, 2000).tolist() == [0, 1, 2]
