"""Compiled CPU parts of the fused noised hinge (numba): one pass each way.

:class:`smoothtopk.perturbed._NoisedHinge` defines, with torch operations, the per-row loss
``scale · relu(margin + (1/B) Σ_b values[r, b] − scores[r, target[r]])`` and its gradient
``grad_scores[r] = g_r · ((1/B) Σ_b onehot(indices[r, b]) − onehot(target[r]))`` with
``g_r = scale · grad[r] · 1{hinge[r] > 0}``. On CPU tensors, :func:`hinge_forward` computes
the loss in one pass over the rows, and :func:`hinge_grad` writes each row of the ``(N, C)``
gradient once (zeros, then the ``B + 1`` entries), instead of a dozen small torch
operations each way. The arithmetic is the torch operations', in the same dtype and order,
except the sum of the ``B`` draws, which torch adds in an order of its own:
:func:`weighted_row_sums` adds them left to right, and
:class:`smoothtopk.ops._SelectedSum` uses it too, so that the fused hinge and the composed
operators stay bitwise equal (the tests check both against the torch formulas).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from smoothtopk._numba import JIT as _JIT

__all__ = ["hinge_forward", "hinge_grad", "weighted_row_sums"]

#: Below this many gradient entries one thread writes them all.
_PARALLEL_ENTRIES = 2**18


@njit(inline="always", **_JIT)
def _row_sum(values, r):
    total = values[r, 0]
    for b in range(1, values.shape[1]):
        total += values[r, b]
    return total


@njit(**_JIT)
def _weighted_sums(values, weight, out):
    for r in range(values.shape[0]):
        out[r] = _row_sum(values, r) * weight


def weighted_row_sums(values: np.ndarray, weight: float) -> np.ndarray:
    """``weight · Σ_m values[r, m]`` per row of ``values (R, M)`` (float32 or float64, the
    result's dtype, ``weight`` rounded to it), added left to right."""
    rows, width = values.shape
    if width == 0:
        return np.zeros(rows, dtype=values.dtype)
    out = np.empty(rows, dtype=values.dtype)
    _weighted_sums(values, values.dtype.type(weight), out)
    return out


@njit(**_JIT)
def _hinge_rows(scores, target, margins, per_row, values, weight, scale, hinge, out):
    for r in range(scores.shape[0]):
        h = (margins[r * per_row] + _row_sum(values, r) * weight) - scores[r, target[r]]
        if h < 0.0:
            h = scores.dtype.type(0.0)
        hinge[r] = h
        out[r] = scale * h


def hinge_forward(
    scores: np.ndarray, target: np.ndarray, margin: float | np.ndarray, values: np.ndarray,
    scale: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(hinge, loss)``, each ``(N,)`` in the dtype of ``scores``: ``hinge = relu(margin +
    weighted_row_sums(values, 1/B) − scores[r, target[r]])`` (NaN stays NaN) and ``loss =
    scale · hinge`` (``hinge`` itself for ``scale=None``).

    ``scores (N, C)`` float32 or float64; ``target (N,)`` int64 in ``[0, C)`` (not
    checked); ``margin``: a float or ``(N,)`` array of the dtype of ``scores``; ``values
    (N, B)`` of that dtype, ``B >= 1``."""
    dtype = scores.dtype.type
    rows = scores.shape[0]
    per_row = isinstance(margin, np.ndarray)
    margins = margin if per_row else np.full(1, margin, dtype=scores.dtype)
    hinge = np.empty(rows, dtype=scores.dtype)
    out = hinge if scale is None else np.empty(rows, dtype=scores.dtype)
    _hinge_rows(scores, target, margins, int(per_row), values, dtype(1.0 / values.shape[1]),
                dtype(1.0 if scale is None else scale), hinge, out)
    return hinge, out


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
