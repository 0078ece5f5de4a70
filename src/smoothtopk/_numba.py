"""Shared numba settings of the compiled CPU kernels, and the launch of their parallel
versions.

Threading layer (unless ``NUMBA_THREADING_LAYER`` chooses one): on Linux, numba's OpenMP
layer first. torch's CPU build runs on GNU OpenMP too, and when both load the same runtime
the kernels' threads are torch's own: torch's workers, which keep spinning for a while
after each torch operation, pick up the kernel's rows at once. numba's own work queue
competes with those spinning workers for the cores, and inside a loss (torch operations
right before the kernel) a 2-thread kernel measured no faster than 1 thread on a 2-core
machine. Where torch carries a renamed copy of GNU OpenMP, numba loads the system's and
the two pools compete as before, the other points below still holding. The work queue
stays the fallback (and the layer elsewhere: macOS and Windows builds of torch use other
OpenMP runtimes, which must not be loaded twice).

:class:`parallel_threads` makes either layer safe to use from a library:

- the work queue aborts the process when two Python threads launch kernels at once: one
  launch at a time, the others run the serial kernel;
- numba terminates a forked child that launches GNU OpenMP kernels after its parent did:
  such a child runs the serial kernels;
- numba's OpenMP layer sets the OpenMP thread count when it starts, which is torch's:
  torch's count is put back.
"""

from __future__ import annotations

import os
import sys
import threading

import numba
import torch

#: Options of the compiled functions that allocate nothing (most of them): cached on disk,
#: numpy's error model (no Python exception checks in the arithmetic), and without numba's
#: reference counting (``_nrt``, a target option of numba's CPU target), which otherwise
#: increments and decrements, atomically, a count for every array that a function receives
#: or views: some 6% of the sampling kernel's time at C = 1081. An allocation in such a
#: function fails to compile.
JIT = {"cache": True, "error_model": "numpy", "_nrt": False}
#: Options of the functions that allocate arrays (or call one that does).
JIT_ALLOCATING = {"cache": True, "error_model": "numpy"}

if "NUMBA_THREADING_LAYER" not in os.environ:
    if sys.platform.startswith("linux"):
        numba.config.THREADING_LAYER = "default"
        numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]
    else:
        numba.config.THREADING_LAYER = "workqueue"

_LAUNCH = threading.Lock()
_owner_pid = os.getpid()  # the process whose launches are known to be safe


def _may_launch() -> bool:
    """Whether this process may launch a parallel kernel (see the module docstring)."""
    global _owner_pid
    pid = os.getpid()
    if pid == _owner_pid:
        return True
    try:
        layer = numba.threading_layer()
    except ValueError:  # not started before the fork: this process starts its own
        _owner_pid = pid
        return True
    return layer != "omp"


class parallel_threads:
    """Threads for a kernel launched in this block (``with parallel_threads(n) as
    threads``): ``n`` capped by numba's pool (numba's count set to it), or 1 (the caller
    runs its serial kernel) when another thread is launching one or a forked child must
    not; torch's thread count is the same after the block as before.

    A class rather than a generator-based context manager, and numba's count set only
    when it differs: this runs twice in every training step of the noised losses, where
    each microsecond of Python counts two to three times (caches cold after the step's
    tensor work)."""

    __slots__ = ("_threads", "_torch_threads")

    def __init__(self, requested: int) -> None:
        self._threads = max(1, min(requested, numba.config.NUMBA_NUM_THREADS))
        self._torch_threads = 0  # 0: nothing to release

    def __enter__(self) -> int:
        threads = self._threads
        if threads == 1 or not _may_launch() or not _LAUNCH.acquire(blocking=False):
            return 1
        self._torch_threads = torch.get_num_threads()
        try:
            if numba.get_num_threads() != threads:
                numba.set_num_threads(threads)
        except BaseException:
            self._release()
            raise
        return threads

    def __exit__(self, *exc_info: object) -> None:
        if self._torch_threads:
            self._release()

    def _release(self) -> None:
        torch_threads, self._torch_threads = self._torch_threads, 0
        _LAUNCH.release()
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
