"""Compiled CPU parts of the fused noised hinge (numba): one pass each way.

:class:`smoothtopk.perturbed._NoisedHinge` defines, with torch operations, the per-row loss
``scale · relu(m_r + (1/B) Σ_b values[r, b] − scores[r, target[r]])``, its reduction, and
the gradient ``grad_scores[r] = g_r · ((1/B) Σ_b onehot(indices[r, b]) − onehot(target[r]))``
with ``g_r = scale · grad_r · 1{hinge[r] > 0}`` (``grad_r`` what the reduction's backward
passes row ``r``). On CPU tensors, :func:`hinge_forward` computes the loss in one pass over
the rows (indexing per-class margins, checking the range of ``target`` and reducing), and
:func:`hinge_grad` writes each row of the ``(N, C)`` gradient once (zeros, then the
``B + 1`` entries), instead of a dozen small torch operations each way. The arithmetic is
the torch operations', in the same dtype and order, except two sums that torch adds in an
order of its own: the ``B`` draws, which :func:`weighted_row_sums` adds left to right (and
:class:`smoothtopk.ops._SelectedSum` uses it too, so that the fused hinge and the composed
operators stay bitwise equal; the tests check both against the torch formulas), and a mean
or sum over the rows, added row by row in float64. :func:`noised_hinge_forward` runs the
sampler's kernel (:func:`smoothtopk.perturbed_cpu.kth_draws_float64`) and
:func:`hinge_forward`'s pass on its float64 draws, for the losses' node that also draws;
:func:`kth_mean_forward` likewise runs the kernel and :func:`weighted_row_sums`, for the
operator's node. :func:`selected_grad` is the backward of those composed operators
(``_SelectedSum``, and the operator's node): torch's zero-fill and scatter in one pass.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from smoothtopk._numba import JIT as _JIT
from smoothtopk._numba import parallel_threads
from smoothtopk.perturbed_cpu import kth_draws_float64

__all__ = ["hinge_forward", "hinge_grad", "kth_mean_forward", "noised_hinge_forward",
           "selected_grad", "weighted_row_sums"]

#: Below this many gradient entries one thread writes them all.
_PARALLEL_ENTRIES = 2**18


@njit(inline="always", **_JIT)
def _row_sum(values, r, like):
    """``Σ_b values[r, b]`` left to right in the dtype of the array ``like``, each value
    rounded to it first (a no-op when ``values`` has that dtype)."""
    total = like.dtype.type(values[r, 0])
    for b in range(1, values.shape[1]):
        total += like.dtype.type(values[r, b])
    return total


@njit(**_JIT)
def _weighted_sums(values, weight, out):
    """``out[r] = weight · Σ_m values[r, m]`` in the dtype of ``out``, each value and the
    Python float ``weight`` rounded to it first."""
    weight = out.dtype.type(weight)
    for r in range(values.shape[0]):
        out[r] = _row_sum(values, r, out) * weight


def weighted_row_sums(values: np.ndarray, weight: float) -> np.ndarray:
    """``weight · Σ_m values[r, m]`` per row of ``values (R, M)`` (float32 or float64, the
    result's dtype, ``weight`` rounded to it), added left to right."""
    rows, width = values.shape
    if width == 0:
        return np.zeros(rows, dtype=values.dtype)
    out = np.empty(rows, dtype=values.dtype)
    _weighted_sums(values, float(weight), out)
    return out


def kth_mean_forward(
    x: np.ndarray, k: int, epsilon: float, n_samples: int, n_candidates: int, seed: int,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, means)``: the draws of :func:`smoothtopk.perturbed_cpu.kth_draws` (same
    arguments; C-contiguous ``x``, ``epsilon > 0``) and :func:`weighted_row_sums` of their
    values with weight ``1/B``, the float64 draws rounded to the dtype of ``x`` inside its
    pass: the same columns and means, with one buffer less."""
    values, columns = kth_draws_float64(x, k, epsilon, n_samples, n_candidates, seed,
                                        threads=threads)
    means = np.empty(x.shape[0], dtype=x.dtype)
    _weighted_sums(values, 1.0 / n_samples, means)
    return columns, means


@njit(**_JIT)
def _hinge_rows(scores, target, margins, margin_kind, margin, values, scale, hinge, out,
                reduced, mean):
    """The hinge and loss of every row into ``hinge`` and ``out`` (the loss's mean or sum
    into ``reduced[0]``, in float64), in the dtype of ``scores``: ``values`` (any float
    dtype) are rounded to it, and so are ``1/B``, ``margin`` (kind 0) and ``scale``
    (Python floats). Returns the first row whose target is out of range, else −1."""
    weight = scores.dtype.type(1.0 / values.shape[1])
    factor = scores.dtype.type(scale)
    common = scores.dtype.type(margin)
    total = 0.0
    for r in range(scores.shape[0]):
        label = target[r]
        if not 0 <= label < scores.shape[1]:
            return r
        m = common if margin_kind == 0 else margins[r if margin_kind == 1 else label]
        h = (m + _row_sum(values, r, scores) * weight) - scores[r, label]
        if h < 0.0:
            h = scores.dtype.type(0.0)
        hinge[r] = h
        out[r] = factor * h
        total += float(out[r])
    reduced[0] = total / scores.shape[0] if mean else total
    return -1


def hinge_forward(
    scores: np.ndarray, target: np.ndarray, margin: float | np.ndarray, values: np.ndarray,
    scale: float | None, per_class: bool = False, reduction: str = "none",
) -> tuple[np.ndarray, np.ndarray]:
    """``(hinge, loss)`` in the dtype of ``scores``: ``hinge = relu(m_r +
    weighted_row_sums(values, 1/B) − scores[r, target[r]])`` (``(N,)``; NaN stays NaN) and
    the loss ``scale · hinge`` (``hinge`` itself for ``scale=None``), per row (``(N,)``,
    reduction ``'none'``) or its mean or sum (0-d; added row by row in float64, then
    rounded to the dtype).

    ``scores (N, C)`` float32 or float64; ``target (N,)`` int64 in ``[0, C)`` (else
    ``ValueError``); ``margin``: a float, or an array of the dtype of ``scores``: ``m_r =
    margin[r]`` (``(N,)``), or ``margin[target[r]]`` with ``per_class`` (``(C,)``);
    ``values (N, B)`` of that dtype, ``B >= 1``."""
    return _hinge(scores, target, margin, values, scale, per_class, reduction)


def noised_hinge_forward(
    scores: np.ndarray, target: np.ndarray, margin: float | np.ndarray, k: int,
    epsilon: float, n_samples: int, n_candidates: int, seed: int, scale: float | None,
    per_class: bool = False, reduction: str = "none", threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indices, hinge, loss)``: the draws of :func:`smoothtopk.perturbed_cpu.kth_draws`
    (``k``, ``epsilon``, ``n_samples``, ``n_candidates``, ``seed``, ``threads``; C-contiguous
    ``scores``, ``epsilon > 0``) and :func:`hinge_forward` on their values, with one launch
    of the threads, the float64 draws rounded to the dtype inside the hinge's pass: the
    same draws, hinge and loss; ``indices (N, B)`` the drawn columns."""
    values, columns = kth_draws_float64(scores, k, epsilon, n_samples, n_candidates, seed,
                                        threads=threads)
    return (columns, *_hinge(scores, target, margin, values, scale, per_class, reduction))


#: The margins array of the compiled pass when the margin is one float, per dtype (unread).
_NO_MARGINS = {np.dtype(t): np.empty(1, dtype=t) for t in (np.float32, np.float64)}


def _hinge(scores: np.ndarray, target: np.ndarray, margin: float | np.ndarray,
           values: np.ndarray, scale: float | None, per_class: bool,
           reduction: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`hinge_forward` on ``values`` of any float dtype (rounded to that of
    ``scores``)."""
    rows = scores.shape[0]
    hinge = np.empty(rows, dtype=scores.dtype)
    out = hinge if scale is None else np.empty(rows, dtype=scores.dtype)
    reduced = np.empty(1, dtype=scores.dtype)
    if isinstance(margin, np.ndarray):
        margins, kind, margin = margin, 2 if per_class else 1, 0.0
    else:
        margins, kind = _NO_MARGINS[scores.dtype], 0
    bad = _hinge_rows(scores, target, margins, kind, float(margin), values,
                      1.0 if scale is None else float(scale), hinge, out, reduced,
                      reduction == "mean")
    if bad >= 0:
        raise ValueError(f"target values must be in [0, {scores.shape[1]}), "
                         f"found {int(target[bad])}")
    return hinge, out if reduction == "none" else reduced.reshape(())


@njit(inline="always", **_JIT)
def _scatter_row(out, r, indices, share):
    """Row ``r`` of ``out`` set to zeros, then ``share`` added at each ``indices[r, m]`` in
    turn (torch's zero-fill and ``scatter_add_``); returns the row."""
    row = out[r]
    row[:] = 0.0
    for m in range(indices.shape[1]):
        row[indices[r, m]] += share
    return row


@njit(inline="always", **_JIT)
def _row(grad, per_row, count, hinge, scale, weight, indices, target, out, masked, r):
    g = grad[r * per_row] / count * scale
    g = g * (grad.dtype.type(1.0) if hinge[r] > 0 else grad.dtype.type(0.0))
    masked[r] = g
    row = _scatter_row(out, r, indices, g * weight)
    row[target[r]] += -g


@njit(**_JIT)
def _rows_serial(grad, per_row, count, hinge, scale, weight, indices, target, out, masked):
    """Every row of the gradient (:func:`_row`); ``count``, ``scale`` and ``weight`` are
    Python floats, rounded to the dtype of ``grad`` here."""
    count, scale = grad.dtype.type(count), grad.dtype.type(scale)
    weight = grad.dtype.type(weight)
    for r in range(out.shape[0]):
        _row(grad, per_row, count, hinge, scale, weight, indices, target, out, masked, r)


@njit(parallel=True, **_JIT)
def _rows_parallel(grad, per_row, count, hinge, scale, weight, indices, target, out, masked):
    """:func:`_rows_serial` with the rows shared among numba's threads."""
    count, scale = grad.dtype.type(count), grad.dtype.type(scale)
    weight = grad.dtype.type(weight)
    for r in prange(out.shape[0]):
        _row(grad, per_row, count, hinge, scale, weight, indices, target, out, masked, r)


def hinge_grad(
    grad: np.ndarray, hinge: np.ndarray, scale: float | None, indices: np.ndarray,
    target: np.ndarray, num_classes: int, threads: int = 1, reduction: str = "none",
) -> tuple[np.ndarray, np.ndarray]:
    """``(grad_scores (N, C), g (N,))`` in the dtype of ``grad``: the gradient of the
    scores and ``g = g_r · scale · 1{hinge > 0}`` (the gradient of the margin ``m_r``),
    where the gradient reaching row ``r``'s loss is ``g_r = grad[r]`` (``grad (N,)``,
    reduction ``'none'``), ``grad[0] / N`` (``grad (1,)``, ``'mean'``) or ``grad[0]``
    (``'sum'``): the arithmetic of torch's mean and sum backward.

    ``grad``, ``hinge``: float32 or float64 (same dtype); ``indices``: ``(N, B)`` int64
    columns in ``[0, C)``; ``target``: ``(N,)`` int64 in ``[0, C)`` (not checked: the
    callers validated them); ``scale``: ``None`` for no factor; ``threads``: rows are
    shared among that many threads for large gradients (same result)."""
    rows = indices.shape[0]
    out = np.empty((rows, num_classes), dtype=grad.dtype)
    masked = np.empty(rows, dtype=grad.dtype)
    if rows * num_classes < _PARALLEL_ENTRIES:
        threads = 1
    with parallel_threads(min(threads, rows)) as threads:
        kernel = _rows_parallel if threads > 1 else _rows_serial
        kernel(grad, int(reduction == "none"), float(rows if reduction == "mean" else 1),
               hinge, 1.0 if scale is None else float(scale), 1.0 / indices.shape[1],
               indices, target, out, masked)
    return out, masked


@njit(**_JIT)
def _selected_serial(grad, weight, indices, out):
    """Every row of :func:`selected_grad` (``weight``: a Python float, rounded to the dtype
    of ``grad`` here)."""
    weight = grad.dtype.type(weight)
    for r in range(out.shape[0]):
        _scatter_row(out, r, indices, grad[r] * weight)


@njit(parallel=True, **_JIT)
def _selected_parallel(grad, weight, indices, out):
    """:func:`_selected_serial` with the rows shared among numba's threads."""
    weight = grad.dtype.type(weight)
    for r in prange(out.shape[0]):
        _scatter_row(out, r, indices, grad[r] * weight)


def selected_grad(
    grad: np.ndarray, indices: np.ndarray, weight: float, num_classes: int, threads: int = 1,
) -> np.ndarray:
    """The ``(R, C)`` gradient of ``out[r] = weight · Σ_m x[r, indices[r, m]]``: row ``r``
    holds ``grad[r] · weight`` (rounded to the dtype of ``grad``, then added up) at each
    ``indices[r, m]``, zeros elsewhere; each row written once. torch's
    ``zeros.scatter_add_(1, indices, (grad · weight)[:, None].expand(R, M))``, bit for bit.

    ``grad (R,)`` float32 or float64 (any strides); ``indices (R, M)`` int64 columns in
    ``[0, C)`` (not checked: they come from the forward); ``threads``: rows are shared among
    that many threads for large gradients (same result)."""
    rows = indices.shape[0]
    out = np.empty((rows, num_classes), dtype=grad.dtype)
    if rows * num_classes < _PARALLEL_ENTRIES:
        threads = 1
    with parallel_threads(min(threads, rows)) as threads:
        kernel = _selected_parallel if threads > 1 else _selected_serial
        kernel(grad, float(weight), indices, out)
    return out
