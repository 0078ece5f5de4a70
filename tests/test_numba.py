"""Tests of :mod:`smoothtopk._numba`: the launch of the parallel CPU kernels, and the
compile options.

Each launch case runs in a subprocess: what they guard against ends a process (numba aborts
on concurrent work-queue launches and terminates a forked child that launches GNU OpenMP
kernels after its parent), and the threading layer is chosen once per process. The
options are tested in this process, importing numba there only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

LAYERS = ["default", "workqueue"]  # default: OpenMP on Linux, when numba can load it

_SETUP = """
import numpy as np
import torch
from smoothtopk import hinge_cpu, perturbed_cpu
x = np.random.default_rng(0).standard_normal((64, 1081)).astype(np.float32)
def kernel(seed, threads):
    return perturbed_cpu.kth_draws(x, 6, 1.0, 5, 14, seed, threads=threads)
serial = [kernel(seed, 1) for seed in range(8)]
"""


def _run(code: str, layer: str, **env: str) -> str:
    environ = {**os.environ, **env}
    environ.pop("NUMBA_THREADING_LAYER", None)
    if layer != "default":
        environ["NUMBA_THREADING_LAYER"] = layer
    done = subprocess.run([sys.executable, "-c", _SETUP + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=300, env=environ)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("layer", LAYERS)
def test_concurrent_launches_from_python_threads(layer):
    """Four Python threads launch 2-thread kernels at once: no abort, and each result is
    the serial kernel's (a thread that finds the pool busy runs the serial kernel)."""
    out = _run("""
        import threading
        bad = []
        def work():
            for seed in range(8):
                got = kernel(seed, 2)
                bad.extend(s for s in range(2) if not np.array_equal(got[s], serial[seed][s]))
        workers = [threading.Thread(target=work) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        import numba
        print("mismatches", len(bad), "layer", numba.threading_layer())
    """, layer)
    assert "mismatches 0" in out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("layer", LAYERS)
def test_forked_child_after_a_parallel_parent(layer):
    """The parent launches a parallel kernel, then forks; the child's kernels (serial under
    GNU OpenMP, which numba would otherwise terminate) give the same results."""
    out = _run("""
        import os
        assert all(np.array_equal(a, b) for a, b in zip(kernel(0, 2), serial[0]))
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = 0 if all(np.array_equal(a, b) for seed in range(3)
                                for a, b in zip(kernel(seed, 2), serial[seed])) else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print("child status", status)
    """, layer)
    assert "child status 0" in out


@pytest.mark.parametrize("layer", LAYERS)
def test_torch_thread_count_survives_the_first_launch(layer):
    """numba's OpenMP layer sets the OpenMP thread count to its pool's size (3 here) when
    it starts, which torch reads when its own count was never set (2 here, from
    ``OMP_NUM_THREADS``): torch's count is kept, for both kernels."""
    out = _run("""
        before = torch.get_num_threads()
        kernel(0, 2)
        after_kernel = torch.get_num_threads()
        grad = np.ones(64, np.float32)
        indices = np.zeros((64, 5), np.int64)
        hinge_cpu.hinge_grad(grad, grad, None, indices, indices[:, 0], 5000, threads=2)
        print("threads", before, after_kernel, torch.get_num_threads())
    """, layer, NUMBA_NUM_THREADS="3", OMP_NUM_THREADS="2")
    assert "threads 2 2 2" in out


def test_parallel_threads_grants_sets_and_releases():
    """A block gets the requested threads (numba's count set to them, only when it
    differs); a nested block, the launch lock held, gets 1; a block that raised released
    the lock; a request of 1 is granted without the lock."""
    out = _run("""
        import numba
        from smoothtopk._numba import parallel_threads
        sets = []
        real_set = numba.set_num_threads
        numba.set_num_threads = lambda n: (sets.append(n), real_set(n))[1]
        real_set(1)
        with parallel_threads(2) as a:
            inside = numba.get_num_threads()
            with parallel_threads(2) as nested:
                pass
        with parallel_threads(2) as b:
            pass
        try:
            with parallel_threads(2):
                raise KeyError
        except KeyError:
            pass
        with parallel_threads(2) as c, parallel_threads(1) as d:
            pass
        print("granted", a, inside, nested, b, c, d, "sets", sets)
    """, "default", NUMBA_NUM_THREADS="2")
    assert "granted 2 2 1 2 2 1 sets [2]" in out


def _view_sums(options: dict):
    """A compiled ``f(a, n)`` passing ``n`` views of ``a`` to another compiled function."""
    from numba import njit

    first = njit(inline="never", **options)(lambda a: a[0])

    def view_sums(a, n):
        total = 0.0
        for i in range(n):
            total += first(a[i:])
        return total

    return njit(**options)(view_sums)


@pytest.mark.parametrize("allocating", [False, True])
def test_reference_counting_only_where_arrays_are_allocated(allocating):
    """Functions compiled with ``JIT`` count no references to the arrays they receive or
    view (an atomic increment and decrement each otherwise) and cannot allocate; those
    compiled with ``JIT_ALLOCATING`` can, and count them. The kernels that loop over rows
    use ``JIT``."""
    import numpy as np
    from numba import njit
    from numba.core.errors import TypingError

    from smoothtopk import hinge_cpu, perturbed_cpu
    from smoothtopk._numba import JIT, JIT_ALLOCATING

    options = {**(JIT_ALLOCATING if allocating else JIT), "cache": False}
    view_sums = _view_sums(options)
    assert view_sums(np.ones(5), 3) == 3.0
    llvm = view_sums.inspect_llvm(view_sums.signatures[0])
    assert ("NRT_incref" in llvm) == allocating
    empty = njit(**options)(lambda n: np.empty(n))
    if allocating:
        assert empty(3).shape == (3,)
    else:
        with pytest.raises(TypingError):
            empty(3)
    for kernel in (perturbed_cpu._block_rows, perturbed_cpu._reveal_buckets,
                   hinge_cpu._rows_parallel, hinge_cpu._selected_parallel):
        assert kernel.targetoptions["_nrt"] is False
