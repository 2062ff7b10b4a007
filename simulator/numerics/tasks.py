"""Memory and threads for the numba kernels (the simulator's, and any other caller's): the C
library told to reuse freed blocks, and a small pool of Python threads that runs serial
``nogil`` kernels over ranges of independent tasks.

Why threads and not a numba parallel region: on a loaded machine (and next to OpenBLAS, whose
workers spin after each call) OpenMP's spinning barriers made a 1 ms conv take
50 ms; blocked Python threads cost nothing while they wait, and the pool is safe to call from
several threads at once.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import platform
import threading
from concurrent.futures import ThreadPoolExecutor

import numba

PARALLEL_WORK = 1 << 20   # below this many scalar operations a kernel runs on the caller's thread


# ============================================================================ memory

def _reuse_freed_memory() -> None:
    """Ask glibc to keep freed blocks for reuse. By default a block over 128 KiB is mapped
    afresh at each allocation and unmapped when freed (the threshold adapts, but not to arrays
    of several sizes alive at once), so every layer's output is page-faulted in again: 0.65 ms
    per 1.6 MB array on a 2-core VM, longer than the 115 MMAC conv that wrote it. Blocks up to
    32 MiB now come from the heap, which keeps up to 128 MiB of free space before returning
    it. Left alone where the user set either threshold (MALLOC_*_THRESHOLD_) or the C library
    is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or any(
            f"MALLOC_{k}_THRESHOLD_" in os.environ for k in ("MMAP", "TRIM")):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    m_trim_threshold, m_mmap_threshold = -1, -3   # malloc.h
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 128 << 20)


_reuse_freed_memory()


# ============================================================================ threads

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _forget_pool_after_fork() -> None:
    """A forked child has none of the parent's threads: start a fresh pool there if needed."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def thread_count() -> int:
    """Threads the heavy kernels use: numba's own setting (NUMBA_NUM_THREADS), at least 1."""
    return max(1, int(numba.config.NUMBA_NUM_THREADS))


def _executor() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max(1, thread_count() - 1),
                                       thread_name_prefix="archnet-kernels")
        return _POOL


class _Pieces:
    """Task ranges claimed one at a time by whichever thread is free (the caller included)."""

    def __init__(self, fn, bounds, args):
        self.fn, self.bounds, self.args = fn, bounds, args
        self.claims = itertools.count()   # next() is atomic under the GIL
        self.lock = threading.Lock()
        self.finished = 0
        self.error: BaseException | None = None
        self.all_done = threading.Event()

    def work(self) -> None:
        pieces = len(self.bounds) - 1
        while True:
            i = next(self.claims)
            if i >= pieces:
                return
            try:
                if self.error is None:
                    self.fn(self.bounds[i], self.bounds[i + 1], *self.args)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
                self.error = exc
            with self.lock:
                self.finished += 1
                if self.finished == pieces:
                    self.all_done.set()


def run_tasks(fn, ntask: int, work: int, *args) -> None:
    """fn(t0, t1, *args) for task ranges covering [0, ntask), on the pool when it pays.

    ``fn`` is a serial ``nogil`` kernel whose tasks write disjoint outputs; ``work`` estimates
    the scalar operations of the whole call. The calling thread works too and the pool's
    threads join in as they wake, each claiming the next range: on a busy machine, where a
    sleeping thread may take milliseconds to be scheduled, the call never waits for a thread
    that has not started, and the ranges are finer than the threads (8 per thread) so that a
    thread slowed in the middle of one holds the others up as little as possible.
    """
    threads = thread_count()
    if threads == 1 or ntask < 2 or work < PARALLEL_WORK:
        fn(0, ntask, *args)
        return
    pieces = min(ntask, 8 * threads)
    job = _Pieces(fn, [ntask * i // pieces for i in range(pieces + 1)], args)
    for _ in range(threads - 1):
        _executor().submit(job.work)
    job.work()
    job.all_done.wait()
    if job.error is not None:
        raise job.error
