"""Process pools for the data side: forked workers that start at once, run single-threaded, and die
with their parent.

A worker of a killed ``ich3d build-series`` must not keep running (and writing cache files) on its
own: on Linux each worker asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``)
and exits at once if the parent is already gone. Workers also keep glibc's malloc from handing big
buffers back to the OS: the page faults that follow cost a 3x slowdown of preprocessing on this
project's VMs (docs/design.md §7).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1
_MALLOC_OPTIONS = ((-1, 256 << 20), (-2, 64 << 20), (-3, 32 << 20))  # M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD


def _die_with(parent: int) -> None:
    """Linux: SIGKILL this process when ``parent`` exits (and exit now if it already has)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def init_worker(parent: int) -> None:
    """Pool initializer: die with ``parent``, one BLAS thread, glibc malloc thresholds raised."""
    _die_with(parent)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        for option, value in _MALLOC_OPTIONS:
            libc.mallopt(option, value)


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[Executor | None]:
    """A pool of ``workers`` processes (fork on Linux: instant start, nothing re-imported), or None
    for one worker (the caller then works in its own process)."""
    if workers <= 1:
        yield None
        return
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else None)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker,
                             initargs=(os.getpid(),)) as executor:
        executor.submit(int).result()  # start the workers now, before any progress-bar thread exists
        yield executor
