"""Many spectra at once: same-shape matrices batched, CPU ones spread over single-threaded worker threads.

Why not one call after another on the training thread: the symmetric eigensolver behind every CPU
spectrum (LAPACK ``syevd`` via MKL) does not scale *down*. On this project's 128x128 Gram matrices
its multi-threaded path ran up to 10x slower than its single-threaded one (2-core machine, measured
when the call came from a thread other than the one that set the thread count), and at best it gains
nothing. The matrices of a model are independent, so pieces of them go to ``workers`` threads that
each run torch with one intra-op thread (``thread_limit``: per thread, never ``torch.set_num_threads``,
whose process-wide side effects slowed every later training step), and the cores are shared across
matrices instead of inside each one. torch releases the GIL inside its ops, so Python threads suffice.
The calling thread, which has to wait for the results anyway, computes one share itself, made
single-threaded only for that while (``thread_limit.limited_here``, which puts its counts back).
Where the per-thread limit is not available, everything is computed on the calling thread as it is.

Matrices with the same smaller side (whatever their longer side and orientation) go to one batched
eigensolver call, split into pieces of about equal work; the pieces (and the top-k estimates) are
dealt out as one share per worker, so a worker pays its per-task set-up once. Before the workers
start, the training thread's idle OpenMP threads are released (``thread_limit.release_idle_threads``):
they would otherwise spin-wait for milliseconds on the cores the workers need. Tried and dropped,
measured on the 2-core machine: forming the Gram products on the calling thread with torch's own
threads and only the eigensolvers on the workers (no faster); one batched product per shape instead
of one product per matrix (slower: the stacked float64 copies cost more than the calls they save);
and the training thread measuring updates and neurons while the workers compute (no gain that
stood out of the machine's noise).

The training thread waits for the results (it is inside the optimizer's post-step hook), so the
workers never race the optimizer step that next rewrites the weights they read. Matrices on an
accelerator are computed in order on the calling thread: their kernels queue on the device anyway.
Randomized top-k estimates draw from a generator seeded per request, so the values do not depend on
which worker ran first, and the global RNG is never touched.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from probe.diagnostics import thread_limit
from probe.diagnostics.spectra import Spectrum, exact_spectra, singular_values, spectrum_stats

__all__ = ["SpectrumGroup", "SpectrumRequest", "SpectrumResult", "SpectraPool", "default_workers"]

_MAX_WORKERS = 8
_I = TypeVar("_I")
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


@dataclass(frozen=True)
class SpectrumGroup:
    """Spectra of requests measured in one call: row ``b`` of ``spectrum`` (values ``(B, k)``,
    ``frob_sq`` ``(B,)``) and of each stat (``(B,)``) belongs to request ``indices[b]``."""

    indices: list[int]
    spectrum: Spectrum
    stats: dict[str, Tensor]


def _measure_batch(requests: Sequence[SpectrumRequest], batch: list[int]) -> SpectrumGroup:
    """Exact spectra of matrices with one smaller side in one batched call (a lone request may be top-k)."""
    if len(batch) > 1:
        spec = exact_spectra([requests[i].mat for i in batch])
        return SpectrumGroup(batch, spec, spectrum_stats(spec))
    request = requests[batch[0]]
    mat = request.mat
    generator = None
    if min(mat.shape) > request.full_max_dim:  # only the randomized estimate draws
        generator = torch.Generator(device=mat.device)
        generator.manual_seed(request.seed)
    lone = singular_values(mat, full_max_dim=request.full_max_dim, top_k=request.top_k, generator=generator)
    spec = Spectrum(lone.values[None], lone.frob_sq[None], lone.truncated)
    return SpectrumGroup(batch, spec, spectrum_stats(spec))


def _measure_share(requests: Sequence[SpectrumRequest], share: list[list[int]]) -> list[SpectrumGroup]:
    """A share of the work: its batched calls one after another, on the thread that runs it.

    Groups stay batched: splitting them per request would take a tensor call per value, and every
    call from a worker first competes for the GIL.
    """
    return [_measure_batch(requests, batch) for batch in share]


def _worker_share(
    requests: Sequence[SpectrumRequest], share: list[list[int]]
) -> tuple[list[SpectrumGroup], bool]:
    """:func:`_measure_share` on a pool thread, made single-threaded first (it stays so: the pool owns it)."""
    limited = thread_limit.limit_this_thread()
    return _measure_share(requests, share), limited


def _batches(requests: Sequence[SpectrumRequest], indices: Sequence[int], parts: int) -> list[list[int]]:
    """Indices grouped into batched calls: one smaller side (exact), split into at least ``parts``
    pieces of about equal work so that every worker gets a share; each top-k request alone."""
    groups: dict[tuple[object, ...], list[int]] = {}
    batches: list[list[int]] = []
    for i in indices:
        mat = requests[i].mat
        if min(mat.shape) > requests[i].full_max_dim:
            batches.append([i])
        else:
            groups.setdefault((min(mat.shape), mat.dtype, mat.device), []).append(i)
    for members in groups.values():
        numel = sum(requests[i].mat.numel() for i in members)
        pieces = min(len(members), max(parts, math.ceil(numel / _STACK_MAX_ELEMENTS)))
        batches += _balanced(members, pieces, lambda i: _cost(requests, [i]))
    return batches


def _balanced(items: Sequence[_I], bins: int, cost: Callable[[_I], int]) -> list[list[_I]]:
    """``items`` in ``bins`` lists of about equal total cost (longest first, each to the lightest bin)."""
    split: list[list[_I]] = [[] for _ in range(bins)]
    load = [0] * bins
    for weight, item in sorted(((cost(item), item) for item in items), key=lambda pair: pair[0], reverse=True):
        j = load.index(min(load))
        split[j].append(item)
        load[j] += weight
    return [s for s in split if s]


def _cost(requests: Sequence[SpectrumRequest], batch: Sequence[int]) -> int:
    """Work estimate of a batch, for scheduling: Gram products (m·n² a matrix) and eigensolves (n³)."""
    return sum(max(m.shape) * min(m.shape) ** 2 + min(m.shape) ** 3 for m in (requests[i].mat for i in batch))


class SpectraPool:
    """Spectra of many matrices: same-shape ones batched, CPU ones in parallel on single-threaded workers.

    Args:
        workers: threads that compute CPU matrices side by side, the calling thread one of them
            (default :func:`default_workers`); 1 computes on the calling thread alone and starts no
            thread (as does a process where ``thread_limit`` is unavailable).

    The other ``workers - 1`` threads start on the first CPU batch and end with :meth:`close`.
    """

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"Invalid workers: {workers} (must be >= 1)")
        self.workers = workers if workers is not None else default_workers()
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._limit_works = True

    def compute(self, requests: Sequence[SpectrumRequest]) -> list[SpectrumResult]:
        """One result per request, in the order of ``requests``; an exception of any is raised here."""
        results: list[SpectrumResult | None] = [None] * len(requests)
        for group in self.compute_groups(requests):
            spec = group.spectrum
            for b, i in enumerate(group.indices):
                row = Spectrum(spec.values[b], spec.frob_sq[b], spec.truncated)
                results[i] = SpectrumResult(row, {q: v[b] for q, v in group.stats.items()})
        return results  # type: ignore[return-value]

    def compute_groups(self, requests: Sequence[SpectrumRequest]) -> list[SpectrumGroup]:
        """Every request's spectrum, in the groups they were measured in (each request in exactly one).

        The cheap way to consume many spectra: a group's rows come as one tensor per measure, so the
        caller needs no tensor call per request. An exception of any request is raised here.
        """
        accelerated = [i for i, r in enumerate(requests) if r.mat.device.type != "cpu"]
        groups = [_measure_batch(requests, batch) for batch in _batches(requests, accelerated, parts=1)]
        cpu = [i for i, r in enumerate(requests) if r.mat.device.type == "cpu"]
        parallel = self.workers > 1 and self._limit_works and thread_limit.available()
        batches = _batches(requests, cpu, self.workers if parallel else 1)
        if not parallel or len(batches) < 2:
            return groups + [_measure_batch(requests, batch) for batch in batches]
        # One share per worker, of about equal work: the calls of a share run one after another. The
        # calling thread takes the first share itself instead of sleeping until the others are done:
        # one thread less to wake, measured 3.5-4.5 ms faster per step of the benchmark GPT.
        shares = _balanced(batches, self.workers, lambda batch: _cost(requests, batch))
        thread_limit.release_idle_threads()  # the training's OpenMP threads would spin on the workers' cores
        pool = self._executor_or_start()
        futures: list[Future[tuple[list[SpectrumGroup], bool]]] = []
        try:
            for share in shares[1:]:
                futures.append(pool.submit(_worker_share, requests, share))
            with thread_limit.limited_here() as limited:
                groups += _measure_share(requests, shares[0])
            self._limit_works &= limited
            for future in futures:
                measured, limited = future.result()
                groups += measured
                self._limit_works &= limited  # multi-threaded still: the calling thread alone from now on
        finally:  # on an error, still wait: the workers must not outlive the caller's optimizer hook
            for future in futures:
                future.cancel() or future.exception()
        return groups

    def close(self) -> None:
        """Stop the worker threads (a later :meth:`compute` starts new ones)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _executor_or_start(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:  # the calling thread is the other worker
                self._pool = ThreadPoolExecutor(self.workers - 1, thread_name_prefix="optiscope-spectra")
            return self._pool
