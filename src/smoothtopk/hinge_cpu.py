"""Compiled CPU backward of the fused noised hinge (numba): one pass over the gradient.

:func:`hinge_grad` computes what :class:`smoothtopk.perturbed._NoisedHinge`'s backward
defines with torch operations, ``grad_scores[r] = g_r · ((1/B) Σ_b onehot(indices[r, b]) −
onehot(target[r]))`` with ``g_r = scale · grad[r] · 1{hinge[r] > 0}``, but writes each row
of the ``(N, C)`` gradient once (zeros, then the ``B + 1`` entries) instead of zero-filling
it and scattering into it with a dozen small torch operations. The arithmetic is the torch
operations', in the dtype of ``grad`` and in the same order, so the result is bitwise the
same (the tests check it).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from smoothtopk._numba import JIT as _JIT

__all__ = ["hinge_grad"]

#: Below this many gradient entries one thread writes them all.
_PARALLEL_ENTRIES = 2**18


@njit(inline="always", **_JIT)
def _row(grad, hinge, scale, weight, indices, target, out, masked, r):
    g = grad[r] * scale
    g = g * (grad.dtype.type(1.0) if hinge[r] > 0 else grad.dtype.type(0.0))
    masked[r] = g
    row = out[r]
    row[:] = 0.0
    share = g * weight
    for b in range(indices.shape[1]):
        row[indices[r, b]] += share
    row[target[r]] += -g


@njit(**_JIT)
def _rows_serial(grad, hinge, scale, weight, indices, target, out, masked):
    for r in range(out.shape[0]):
        _row(grad, hinge, scale, weight, indices, target, out, masked, r)


@njit(parallel=True, **_JIT)
def _rows_parallel(grad, hinge, scale, weight, indices, target, out, masked):
    for r in prange(out.shape[0]):
        _row(grad, hinge, scale, weight, indices, target, out, masked, r)


def hinge_grad(
    grad: np.ndarray, hinge: np.ndarray, scale: float | None, indices: np.ndarray,
    target: np.ndarray, num_classes: int, threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """``(grad_scores (N, C), g (N,))`` in the dtype of ``grad``: the gradient of the
    scores and ``g = scale · grad · 1{hinge > 0}`` (the margin's gradient).

    ``grad``, ``hinge``: ``(N,)`` float32 or float64 (same dtype); ``indices``: ``(N, B)``
    int64 columns in ``[0, C)``; ``target``: ``(N,)`` int64 in ``[0, C)`` (not checked:
    the callers validated them); ``scale``: ``None`` for no factor; ``threads``: rows are
    shared among that many threads for large gradients (same result)."""
    dtype = grad.dtype.type
    rows = grad.shape[0]
    out = np.empty((rows, num_classes), dtype=grad.dtype)
    masked = np.empty(rows, dtype=grad.dtype)
    kernel = _rows_serial
    if threads > 1 and rows > 1 and rows * num_classes >= _PARALLEL_ENTRIES:
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        kernel = _rows_parallel
    kernel(grad, hinge, dtype(1.0 if scale is None else scale), dtype(1.0 / indices.shape[1]),
           indices, target, out, masked)
    return out, masked
