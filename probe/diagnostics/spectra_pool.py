"""Many spectra at once: batched per smaller side, CPU ones spread over single-threaded worker threads.

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

The requests are dealt out one by one, by their estimated cost, into one share per worker; within a
share, matrices with the same smaller side (whatever their longer side and orientation) go to one
batched eigensolver call, so a worker pays its per-call set-up once per shape. The calling thread may
have other work to do meanwhile (the Monitor's update and neuron measures, ≈2.5 ms a step on the
benchmark GPT): its share is then smaller by a running average of how long that takes. Before the
workers start, the training thread's idle OpenMP threads are released
(``thread_limit.release_idle_threads``): they would otherwise spin-wait for milliseconds on the cores
the workers need. Tried and dropped, measured on the 2-core machine: forming the Gram products on the
calling thread with torch's own threads and only the eigensolvers on the workers (no faster); one
batched product per shape instead of one product per matrix (slower: the stacked float64 copies cost
more than the calls they save); and the calling thread measuring updates and neurons while two
workers computed, before it had a share of its own (three busy threads on two cores: no gain that
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
import time
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
_SMOOTHING = 0.3
"""Weight of the newest measurement in the running averages that size the calling thread's share."""
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
) -> tuple[list[SpectrumGroup], bool, float]:
    """:func:`_measure_share` on a pool thread, made single-threaded first (it stays so: the pool owns
    it); also returns whether that worked and the seconds the share took."""
    limited = thread_limit.limit_this_thread()
    t0 = time.perf_counter()
    return _measure_share(requests, share), limited, time.perf_counter() - t0


def _batches(requests: Sequence[SpectrumRequest], indices: Sequence[int]) -> list[list[int]]:
    """Indices grouped into batched calls: one per smaller side for exact spectra (split when larger
    than ``_STACK_MAX_ELEMENTS``), each top-k request alone."""
    groups: dict[tuple[object, ...], list[int]] = {}
    batches: list[list[int]] = []
    for i in indices:
        mat = requests[i].mat
        if min(mat.shape) > requests[i].full_max_dim:
            batches.append([i])
        else:
            groups.setdefault((min(mat.shape), mat.dtype, mat.device), []).append(i)
    for members in groups.values():
        pieces = max(1, math.ceil(sum(requests[i].mat.numel() for i in members) / _STACK_MAX_ELEMENTS))
        pieces_of = _balanced(members, [0.0] * pieces, lambda i: _cost(requests, i))
        batches += [piece for piece in pieces_of if piece]
    return batches


def _shares(
    requests: Sequence[SpectrumRequest], indices: Sequence[int], workers: int, preload: float
) -> list[list[list[int]]]:
    """The requests dealt out to ``workers`` threads by their cost, each share in batched calls.

    Dealt one by one, so shares come out within one matrix of each other (a share still makes one
    batched call per smaller side). The first share is the calling thread's, which has ``preload``
    of other work to do first (in cost units).
    """
    loads = [preload] + [0.0] * (workers - 1)
    return [_batches(requests, share) for share in _balanced(indices, loads, lambda i: _cost(requests, i))]


def _balanced(items: Sequence[_I], loads: list[float], cost: Callable[[_I], float]) -> list[list[_I]]:
    """``items`` in ``len(loads)`` lists of about equal total cost, the lists starting at ``loads``
    (longest first, each to the lightest list); some lists may stay empty."""
    split: list[list[_I]] = [[] for _ in loads]
    load = list(loads)
    weighed = sorted(((cost(item), item) for item in items), key=lambda pair: pair[0], reverse=True)
    for weight, item in weighed:
        j = load.index(min(load))
        split[j].append(item)
        load[j] += weight
    return split


def _cost(requests: Sequence[SpectrumRequest], i: int) -> float:
    """Work estimate of a request, for scheduling. Exact: its Gram product (m·n²) and eigensolve (n³;
    measured 3x a product's cost per n³ for 128x128 on the dev machine, LAPACK's per-call overhead
    included). Top-k: the range finder's products with m x n (six of them with ``singular_values``'
    two power iterations, each m·n·(k + 16))."""
    request = requests[i]
    m, n = max(request.mat.shape), min(request.mat.shape)
    if n > request.full_max_dim:
        return float(6 * m * n * (request.top_k + 16))
    return float(m * n * n + 3 * n**3)


def _average(old: float, new: float) -> float:
    """Running average; 0 means none yet (the first measurement is taken as it is)."""
    return new if not old else old + _SMOOTHING * (new - old)


class SpectraPool:
    """Spectra of many matrices: batched per smaller side, CPU ones in parallel on single-threaded workers.

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
        self._meanwhile_s = 0.0  # running average of the calling thread's other work (``meanwhile``)
        self._s_per_cost = 0.0  # running average of its seconds per unit of ``_cost``

    def compute(self, requests: Sequence[SpectrumRequest]) -> list[SpectrumResult]:
        """One result per request, in the order of ``requests``; an exception of any is raised here."""
        results: list[SpectrumResult | None] = [None] * len(requests)
        for group in self.compute_groups(requests):
            spec = group.spectrum
            for b, i in enumerate(group.indices):
                row = Spectrum(spec.values[b], spec.frob_sq[b], spec.truncated)
                results[i] = SpectrumResult(row, {q: v[b] for q, v in group.stats.items()})
        return results  # type: ignore[return-value]

    def compute_groups(
        self, requests: Sequence[SpectrumRequest], meanwhile: Callable[[], object] | None = None
    ) -> list[SpectrumGroup]:
        """Every request's spectrum, in the groups they were measured in (each request in exactly one).

        The cheap way to consume many spectra: a group's rows come as one tensor per measure, so the
        caller needs no tensor call per request. An exception of any request is raised here.

        Args:
            meanwhile: other work for the calling thread, run once before this returns: while the
                pool threads compute their shares when there are any (single-threaded then, too; the
                calling thread's own share is smaller by a running average of its time), else after
                the spectra.
        """
        accelerated = [i for i, r in enumerate(requests) if r.mat.device.type != "cpu"]
        groups = [_measure_batch(requests, batch) for batch in _batches(requests, accelerated)]
        cpu = [i for i, r in enumerate(requests) if r.mat.device.type == "cpu"]
        parallel = self.workers > 1 and self._limit_works and thread_limit.available()
        preload = self._meanwhile_s / self._s_per_cost if meanwhile is not None and self._s_per_cost else 0.0
        shares = _shares(requests, cpu, self.workers if parallel else 1, preload)
        if not any(shares[1:]):  # nothing for the pool threads
            groups += [_measure_batch(requests, batch) for batch in shares[0]]
            if meanwhile is not None:
                meanwhile()
            return groups
        # One share per worker, of about equal work: the calls of a share run one after another. The
        # calling thread takes the first share itself instead of sleeping until the others are done:
        # one thread less to wake, measured 3.5-4.5 ms faster per step of the benchmark GPT.
        thread_limit.release_idle_threads()  # the training's OpenMP threads would spin on the workers' cores
        pool = self._executor_or_start()
        futures: list[Future[tuple[list[SpectrumGroup], bool, float]]] = []
        try:
            for share in shares[1:]:
                if share:
                    futures.append(pool.submit(_worker_share, requests, share))
            with thread_limit.limited_here() as limited:
                t0 = time.perf_counter()
                if meanwhile is not None:
                    meanwhile()
                t1 = time.perf_counter()
                groups += _measure_share(requests, shares[0])
                share_s = time.perf_counter() - t1
            self._limit_works &= limited
            for future in futures:
                measured, limited, seconds = future.result()
                groups += measured
                share_s += seconds
                self._limit_works &= limited  # multi-threaded still: the calling thread alone from now on
            meanwhile_s = t1 - t0 if meanwhile is not None else None
            self._learn(meanwhile_s, share_s, sum(_cost(requests, i) for i in cpu))
        finally:  # on an error, still wait: the workers must not outlive the caller's optimizer hook
            for future in futures:
                future.cancel() or future.exception()
        return groups

    def _learn(self, meanwhile_s: float | None, shares_s: float, cost: float) -> None:
        """Running averages of how long ``meanwhile`` takes and of the seconds per unit of cost (over
        every share: the calling thread's alone would stop learning once its share is empty)."""
        if meanwhile_s is not None:
            self._meanwhile_s = _average(self._meanwhile_s, meanwhile_s)
        if cost > 0:
            self._s_per_cost = _average(self._s_per_cost, shares_s / cost)

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
