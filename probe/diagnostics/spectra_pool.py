"""Many spectra at once: same-shape matrices batched, CPU ones spread over single-threaded worker threads.

Why not one call after another on the training thread: the symmetric eigensolver behind every CPU
spectrum (LAPACK ``syevd`` via MKL) does not scale *down*. On this project's 128x128 Gram matrices
its multi-threaded path ran up to 10x slower than its single-threaded one (2-core machine, measured
when the call came from a thread other than the one that set the thread count), and at best it gains
nothing. The matrices of a model are independent, so pieces of them go to ``workers`` threads that
each run torch with one intra-op thread (``thread_limit``: per thread, never ``torch.set_num_threads``,
whose process-wide side effects slowed every later training step), and the cores are shared across
matrices instead of inside each one. torch releases the GIL inside its ops, so Python threads suffice.
Where the per-thread limit is not available, everything is computed on the calling thread as it is.

Matrices with the same smaller side (whatever their longer side and orientation) go to one batched
eigensolver call, split into pieces of about equal work, one per worker. Tried and dropped, measured on the 2-core machine: forming the Gram
products on the calling thread with torch's own threads and only the eigensolvers on the workers
(no faster: the training loop's OpenMP threads spin-wait for milliseconds after each parallel
region and then compete with the workers either way), and smaller pieces (no better balanced).

The training thread waits for the results (it is inside the optimizer's post-step hook), so the
workers never race the optimizer step that next rewrites the weights they read. Matrices on an
accelerator are computed in order on the calling thread: their kernels queue on the device anyway.
Randomized top-k estimates draw from a generator seeded per request, so the values do not depend on
which worker ran first, and the global RNG is never touched.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from probe.diagnostics import thread_limit
from probe.diagnostics.spectra import Spectrum, exact_spectra, singular_values, spectrum_stats

__all__ = ["SpectrumRequest", "SpectrumResult", "SpectraPool", "default_workers"]

_MAX_WORKERS = 8
_STACK_MAX_ELEMENTS = 1 << 25
"""Most matrix elements measured in one batched call (128 MiB of float32)."""


@dataclass(frozen=True)
class SpectrumRequest:
    """One matrix to measure: exact spectrum when ``min(shape) <= full_max_dim``, else the top ``top_k``."""

    mat: Tensor
    full_max_dim: int
    top_k: int
    seed: int

    def __post_init__(self) -> None:
        if self.mat.ndim != 2:
            raise ValueError(f"a spectrum needs a 2-D matrix, got shape {tuple(self.mat.shape)}")


@dataclass(frozen=True)
class SpectrumResult:
    """The spectrum of a request and its derived measures (``spectrum_stats``), as device tensors."""

    spectrum: Spectrum
    stats: dict[str, Tensor]


def default_workers() -> int:
    """As many workers as torch has intra-op threads (the cores training uses), at most 8."""
    return max(1, min(torch.get_num_threads(), _MAX_WORKERS))


def _measure(request: SpectrumRequest) -> SpectrumResult:
    mat = request.mat
    generator = None
    if min(mat.shape) > request.full_max_dim:  # only the randomized estimate draws
        generator = torch.Generator(device=mat.device)
        generator.manual_seed(request.seed)
    spec = singular_values(mat, full_max_dim=request.full_max_dim, top_k=request.top_k, generator=generator)
    return SpectrumResult(spec, spectrum_stats(spec))


def _measure_group(requests: Sequence[SpectrumRequest]) -> list[SpectrumResult]:
    """Exact spectra of matrices with one smaller side in one batched call (a single request may be top-k)."""
    if len(requests) == 1:
        return [_measure(requests[0])]
    spec = exact_spectra([r.mat for r in requests])
    stats = spectrum_stats(spec)
    return [
        SpectrumResult(Spectrum(spec.values[b], spec.frob_sq[b], False), {q: v[b] for q, v in stats.items()})
        for b in range(len(requests))
    ]


def _measure_group_single_threaded(requests: Sequence[SpectrumRequest]) -> tuple[list[SpectrumResult], bool]:
    limited = thread_limit.limit_this_thread()
    return _measure_group(requests), limited


def _tasks(requests: Sequence[SpectrumRequest], indices: Sequence[int], parts: int) -> list[list[int]]:
    """Indices grouped into batched calls: one smaller side (exact), split into at least ``parts``
    pieces of about equal work so that every worker gets a share; each top-k request alone."""
    groups: dict[tuple[object, ...], list[int]] = {}
    tasks: list[list[int]] = []
    for i in indices:
        mat = requests[i].mat
        if min(mat.shape) > requests[i].full_max_dim:
            tasks.append([i])
        else:
            groups.setdefault((min(mat.shape), mat.dtype, mat.device), []).append(i)
    for members in groups.values():
        numel = sum(requests[i].mat.numel() for i in members)
        pieces = min(len(members), max(parts, math.ceil(numel / _STACK_MAX_ELEMENTS)))
        split: list[list[int]] = [[] for _ in range(pieces)]
        load = [0] * pieces
        for i in sorted(members, key=lambda i: _cost(requests, [i]), reverse=True):  # longest first
            j = load.index(min(load))
            split[j].append(i)
            load[j] += _cost(requests, [i])
        tasks += split
    return tasks


def _cost(requests: Sequence[SpectrumRequest], task: Sequence[int]) -> int:
    """Work estimate of a task, for scheduling: the Gram product (m·n² a matrix) and the eigensolver (n³)."""
    return sum(max(m.shape) * min(m.shape) ** 2 + min(m.shape) ** 3 for m in (requests[i].mat for i in task))


class SpectraPool:
    """Spectra of many matrices: same-shape ones batched, CPU ones in parallel on single-threaded workers.

    Args:
        workers: worker threads for CPU matrices (default :func:`default_workers`); 1 computes on the
            calling thread and starts no thread (as does a process where ``thread_limit`` is unavailable).

    The threads start on the first CPU batch and end with :meth:`close`.
    """

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"Invalid workers: {workers} (must be >= 1)")
        self.workers = workers if workers is not None else default_workers()
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._limit_works = True

    def compute(self, requests: Sequence[SpectrumRequest]) -> list[SpectrumResult]:
        """Results in the order of ``requests``; an exception of any request is raised here."""
        results: list[SpectrumResult | None] = [None] * len(requests)

        def keep(task: Sequence[int], found: Sequence[SpectrumResult]) -> None:
            for i, result in zip(task, found):
                results[i] = result

        accelerated = [i for i, r in enumerate(requests) if r.mat.device.type != "cpu"]
        for task in _tasks(requests, accelerated, parts=1):
            keep(task, _measure_group([requests[i] for i in task]))
        cpu = [i for i, r in enumerate(requests) if r.mat.device.type == "cpu"]
        if not cpu:
            return results  # type: ignore[return-value]
        parallel = self.workers > 1 and self._limit_works and thread_limit.available()
        tasks = sorted(_tasks(requests, cpu, self.workers if parallel else 1),
                       key=lambda t: _cost(requests, t), reverse=True)
        if not parallel or len(tasks) < 2:
            for task in tasks:
                keep(task, _measure_group([requests[i] for i in task]))
            return results  # type: ignore[return-value]
        pool = self._executor_or_start()
        futures = [(t, pool.submit(_measure_group_single_threaded, [requests[i] for i in t])) for t in tasks]
        for task, future in futures:
            found, limited = future.result()
            keep(task, found)
            self._limit_works &= limited  # a worker stayed multi-threaded: the calling thread from now on
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the worker threads (a later :meth:`compute` starts new ones)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _executor_or_start(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="optiscope-spectra")
            return self._pool
