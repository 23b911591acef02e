"""One intra-op thread for the *calling* thread only, without ``torch.set_num_threads``.

The spectra workers (``spectra_pool``) must each run torch single-threaded. ``torch.set_num_threads(1)``
would do it, but it also changes process-wide state (torch's default for new threads, the size of its
pthreadpool, MKL's dynamic mode): on the 2-core dev machine a single call, even one that set the count
it already had, made every later training step of the benchmark GPT about 6 % slower, in runs with and
without the probe alike. The OpenMP runtime and MKL keep thread counts per thread
(``omp_set_num_threads``, ``mkl_set_num_threads_local``), so :func:`limit_this_thread` sets those
directly and then checks that torch and MKL report one thread. Where a library is not found (another
OpenMP runtime, a build without MKL) :func:`available` is False and callers stay on their own thread.

:func:`release_idle_threads` is the other half of sharing the cores with the training thread: its
OpenMP team threads spin-wait after every parallel region, and the workers starting right after the
optimizer step would compete with that spinning (see the function).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["available", "limit_this_thread", "limited_here", "release_idle_threads"]


@dataclass(frozen=True)
class _Mkl:
    set_local: Callable[[int], int]  # returns the thread's previous local count (0: none, MKL's global)
    max_threads: Callable[[], int]


@dataclass(frozen=True)
class _Runtime:
    omp_set_num_threads: Callable[[int], None]
    mkl: _Mkl | None  # None in a build without MKL
    omp_pause_resource_all: Callable[[int], int] | None  # GNU OpenMP's, where torch ships it (see _gnu_pause)


def _mkl(torch_lib: Path) -> _Mkl | None:
    """MKL's per-thread setter from the torch library it is linked into, called with the right ABI."""
    for path in sorted(torch_lib.glob("libtorch_cpu.*")):
        try:
            lib = ctypes.CDLL(str(path))
            c_name, fortran_name, get_max = (
                lib.mkl_set_num_threads_local, lib.mkl_set_num_threads_local_, lib.mkl_get_max_threads
            )
        except (OSError, AttributeError):
            continue
        get_max.restype = ctypes.c_int
        get_max.argtypes = []
        c_name.restype = ctypes.c_int
        # In torch's wheels the C name is an alias of the Fortran entry point (same address), which takes
        # its argument by reference; a C entry point of its own takes it by value.
        by_reference = _address(c_name) == _address(fortran_name)

        def set_local(n: int, fn: ctypes._CFuncPtr = c_name, by_ref: bool = by_reference) -> int:
            return int(fn(ctypes.byref(ctypes.c_int(n))) if by_ref else fn(ctypes.c_int(n)))

        return _Mkl(set_local, get_max)
    return None


def _gnu_pause(torch_lib: Path) -> Callable[[int], int] | None:
    """``omp_pause_resource_all`` of the GNU OpenMP runtime torch ships, else None.

    Only GNU's is used: there it ends the calling thread's own idle team threads. Other runtimes
    (LLVM's, Intel's) pause the whole program's OpenMP, which is not ours to do.
    """
    for path in sorted(torch_lib.glob("libgomp*.so*")):
        try:
            pause = ctypes.CDLL(str(path)).omp_pause_resource_all  # the copy torch loaded: same handle
        except (OSError, AttributeError):
            continue
        pause.argtypes = [ctypes.c_int]
        pause.restype = ctypes.c_int
        return pause
    return None


def _address(fn: object) -> int | None:
    return ctypes.cast(fn, ctypes.c_void_p).value


@functools.cache
def _runtime() -> _Runtime | None:
    try:
        return _find_runtime()
    except Exception:  # noqa: BLE001 - an unusual platform must cost speed, never a training run
        return None


def _find_runtime() -> _Runtime | None:
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        omp = ctypes.CDLL(None).omp_set_num_threads  # torch loads its OpenMP runtime globally
    except (OSError, AttributeError, TypeError):  # TypeError: no process handle on Windows
        return None
    omp.argtypes = [ctypes.c_int]
    omp.restype = None
    torch_lib = Path(torch.__file__).parent / "lib"
    mkl = None
    if torch.backends.mkl.is_available():
        mkl = _mkl(torch_lib)
        if mkl is None:
            return None  # MKL would keep its own count in the worker: not single-threaded after all
    return _Runtime(omp, mkl, _gnu_pause(torch_lib))


def available() -> bool:
    """Whether :func:`limit_this_thread` can work in this process (the runtimes were found)."""
    return _runtime() is not None


def limit_this_thread() -> bool:
    """Make torch ops called from this thread use one intra-op thread; other threads are unaffected.

    Returns whether torch (and MKL, where present) now report one thread here. Meant for threads
    the caller owns (a worker pool): nothing is restored.
    """
    runtime = _runtime()
    if runtime is None:
        return False
    try:
        torch.get_num_threads()  # torch's lazy per-thread set-up runs first, or it would undo what follows
        _set_one_thread(runtime)
        return _reports_one_thread(runtime)
    except Exception:  # noqa: BLE001 - the caller then stops using worker threads
        return False


@contextlib.contextmanager
def limited_here() -> Iterator[bool]:
    """:func:`limit_this_thread` for the calling thread until the block ends, then its own counts again.

    For a thread the caller does not own (the training thread, which takes a share of the spectra
    instead of sleeping while the workers compute). Yields whether torch and MKL report one thread;
    the thread's OpenMP and MKL counts are put back even when the block raises.
    """
    runtime = _runtime()
    if runtime is None:
        yield False
        return
    before = torch.get_num_threads()  # also runs torch's lazy per-thread set-up first
    mkl_before: int | None = None
    try:
        try:
            mkl_before = _set_one_thread(runtime)
            one = _reports_one_thread(runtime)
        except Exception:  # noqa: BLE001 - the caller then computes with the thread's own counts
            one = False
        yield one
    finally:
        runtime.omp_set_num_threads(before)
        if mkl_before is not None:
            runtime.mkl.set_local(mkl_before)  # type: ignore[union-attr]


def _set_one_thread(runtime: _Runtime) -> int | None:
    """Set the calling thread's OpenMP and MKL counts to one; returns MKL's previous local count
    (None in a build without MKL)."""
    runtime.omp_set_num_threads(1)
    return runtime.mkl.set_local(1) if runtime.mkl is not None else None


def _reports_one_thread(runtime: _Runtime) -> bool:
    return torch.get_num_threads() == 1 and (runtime.mkl is None or runtime.mkl.max_threads() == 1)


_OMP_PAUSE_SOFT = 1
"""``omp_pause_soft`` of OpenMP 5.0's ``omp_pause_resource_t``: release threads, keep the settings."""

RELEASED_THREADS_MAX = 100_000
"""Most idle threads :func:`release_idle_threads` lets the runtime end in this process.

MKL keeps about 100 bytes for every thread that ever called it, so each release and restart of a
team thread costs that much memory for good (measured: 32 MB after 300,000 releases of a 2-thread
team). The cap bounds that to about 10 MB; past it, nothing is released."""

_released = 0
_released_lock = threading.Lock()


def release_idle_threads() -> bool:
    """Let the OpenMP runtime release the calling thread's idle team threads until its next parallel region.

    After each parallel region, GNU OpenMP's team threads spin-wait for the next one (300,000 spins:
    about 8 ms of CPU on the 2-core dev machine) before they sleep. The spectra workers start right
    after the optimizer step's last region, so on a machine whose cores the training uses, that
    spinning takes a core's share from them: measured there, the spectra of the benchmark GPT took
    19.3 ms instead of 16.4 ms. ``omp_pause_resource_all(omp_pause_soft)`` (OpenMP 5.0) is the
    runtime's own way to hand the cores to other work: in GNU OpenMP the calling thread's idle team
    threads end now (no other thread's team is touched), the settings stay, and the next parallel
    region starts them again (measured: the training step did not get slower). The process-wide
    count of released threads is capped (:data:`RELEASED_THREADS_MAX`).

    Call it on the training thread; inside a parallel region the runtime refuses. Returns whether
    threads were released; never raises (an unusual runtime only costs the speed-up).
    """
    global _released
    runtime = _runtime()
    if runtime is None or runtime.omp_pause_resource_all is None:
        return False
    try:
        team = torch.get_num_threads() - 1  # the threads one release ends (and the next region restarts)
        with _released_lock:
            if team < 1 or _released + team > RELEASED_THREADS_MAX:
                return False
            if runtime.omp_pause_resource_all(_OMP_PAUSE_SOFT) != 0:
                return False
            _released += team
        return True
    except Exception:  # noqa: BLE001
        return False
