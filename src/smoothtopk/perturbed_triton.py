"""Triton kernels of the noised top-K losses: the perturbed k-th largest with its noise drawn
in registers, the hinge, and the hinge's gradient (CUDA tensors; any tensors under
``TRITON_INTERPRET=1``, which is how the tests run them on a CPU).

:func:`kth_draws` returns, for every row ``r`` and draw ``b`` of scores ``x (R, C)``, the
value and the column of the k-th largest entry of ``x[r] + ε Z[b, r]``; no ``B·R·C``
tensor is ever written. One program per (row, draw) pair scans its row once, in chunks of
``4·BLOCK`` columns:

1. *Noise*: ``Z`` comes from a counter-based generator, Philox4x32-10 (``tl.randint4x``)
   counted by (pair, chunk, lane), followed by the Box–Muller transform on uniforms
   ``U1 = (i + 1/2)·2⁻³²`` and ``U2 = j·2⁻³²`` (sin and cos by minimax polynomials after
   an exact reduction to the quadrant). The Philox key and counter base come from the
   caller's ``torch.Generator`` on the host, with no device work: on CUDA its seed (mixed,
   so that the streams differ from torch's own) and its Philox offset, which is then
   advanced past the counters used, as torch's random kernels advance it. Hence
   ``|Z| ≤ √(66 ln 2) < 6.77`` for every draw: the departure from a Gaussian is that its
   tail beyond 6.77 (mass ``1.3·10⁻¹¹`` per coordinate, so at most ``1.3·10⁻¹¹·C`` per row
   and draw) is never drawn, next to the discreteness of 32-bit uniforms.
2. *Running top-k*: the k largest perturbed entries seen so far are kept in registers as
   32-bit keys ordered like ``torch.topk`` (NaN above ``+inf``; among equal values the
   smaller column ranks first). A chunk with no entry at or above the current k-th largest
   ``T`` (one comparison per entry and one reduction) changes nothing; otherwise its entries
   above ``T`` enter one by one, by extraction of the maximum.

No class is pruned: every Gaussian is drawn, in registers, and the cost is that of the
generator (about 50 integer and floating-point operations per score and draw). Skipping
the chunks whose clean maximum plus ``6.8·ε`` stays below ``T`` (exact, given the bound
above) was tried and measured slower on an H100, on peaked scores too (BENCHMARKS.md).

The value returned is the k-th largest itself (bit for bit); the column is that of the
entry ranked k-th. With ``perturbed`` (the ``(B, R, C)`` tensor ``x + ε·noise``, computed
by the caller with the reference's arithmetic) the kernel selects from it instead of
drawing: the result then equals :func:`smoothtopk.ops._perturbed_kth_reference` on the same
draws, which the tests check.

:class:`NoisedHingeFunction` is :class:`smoothtopk.perturbed._NoisedHinge` in two kernels:
the forward computes ``scale · relu(margin + mean_b values − s_y)`` per row and its
reduction in one launch (one program, rows summed in a fixed order: deterministic) and
asserts ``0 <= target < C`` on the device, as ``F.cross_entropy`` does; the backward writes
the whole ``(N, C)`` gradient in one launch (no zero fill and scatters). Memory kept for
backward: ``(N, B)`` columns and the ``(N,)`` hinge; nothing of size ``B·N·C`` exists.

float32 only (the losses compute float16/bfloat16 in float32; float64 CUDA tensors, and
calls made while a CUDA graph is being captured, use the torch sampler). No
device-to-host synchronisation.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

__all__ = [
    "Z_BOUND",
    "NoisedHingeFunction",
    "hinge_backward",
    "hinge_forward",
    "kth_draws",
    "noised_hinge_loss",
]

#: Every noise value drawn by :func:`kth_draws` has ``|Z| < Z_BOUND`` (the transform's
#: largest radius is ``√(66 ln 2) ≈ 6.764``; the margin covers float32 rounding).
Z_BOUND = 6.8

_MAX_BLOCK = 256  # lanes per sub-block (a chunk is four sub-blocks)
_WARPS = 2  # measured on an H100: 256 lanes on 2 warps, 8 columns per thread and chunk


@triton.jit
def _normal_pair(a, b):
    """Two independent N(0, 1) from two uint32 (Box–Muller; radius < 6.77). The angle
    ``2π·b/2³²`` keeps all 32 bits: its quadrant comes from the top bits, and sin/cos of
    the remainder (in [−π/4, π/4]) from minimax polynomials (Cephes' single-precision
    coefficients, about 1 ulp), cheaper than the general-range library calls."""
    u1 = a.to(tl.float32) * 2.3283064365386963e-10 + 1.1641532182693481e-10
    u1 = tl.minimum(u1, 1.0)
    radius = tl.sqrt(-2.0 * tl.log(u1))
    quadrant = ((b + 0x20000000) >> 30) & 3
    rest = (b - (quadrant << 30)).to(tl.int32, bitcast=True)  # in [−2²⁹, 2²⁹]
    t = rest.to(tl.float32) * 1.4629180792671596e-09  # 2π / 2³²
    t2 = t * t
    sin_t = t + t * t2 * ((-1.9515295891e-4 * t2 + 8.3321608736e-3) * t2 - 1.6666654611e-1)
    cos_t = 1.0 - 0.5 * t2 + t2 * t2 * (
        (2.443315711809948e-5 * t2 - 1.388731625493765e-3) * t2 + 4.166664568298827e-2)
    odd = (quadrant & 1) == 1
    sin_q = tl.where(odd, cos_t, sin_t)
    cos_q = tl.where(odd, sin_t, cos_t)
    sin_q = tl.where(quadrant >= 2, -sin_q, sin_q)
    cos_q = tl.where((quadrant == 1) | (quadrant == 2), -cos_q, cos_q)
    return radius * cos_q, radius * sin_q


@triton.jit
def _order_key(v):
    """int32 keys ordered like ``torch.topk`` orders float32 values (NaN largest)."""
    bits = v.to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return tl.where(v != v, 2147483647, key)


@triton.jit
def _key_value(key):
    """The float32 value of a key (NaN for the NaN key)."""
    bits = tl.where(key >= 0, key, key ^ 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _absorb(v, cols, list_key, list_col, kth_key):
    """Insert the entries of block ``v`` (columns ``cols``) that outrank the current k-th
    of the running list, largest first (smaller column first among equal keys); the
    evicted entry is always the lowest ranked (smallest key, then largest column)."""
    key = _order_key(v)
    best = tl.max(key, axis=0)
    while best > kth_key:
        col = tl.min(tl.where(key == best, cols, 2147483647), axis=0)
        evicted = tl.max(tl.where(list_key == kth_key, list_col, -2147483647), axis=0)
        slot = (list_key == kth_key) & (list_col == evicted)
        list_key = tl.where(slot, best, list_key)
        list_col = tl.where(slot, col, list_col)
        kth_key = tl.min(list_key, axis=0)
        key = tl.where(cols == col, -2147483648, key)
        best = tl.max(key, axis=0)
    return list_key, list_col, kth_key


@triton.jit
def _threshold(kth_key):
    """The k-th largest as a float, ``-inf`` while the list is not full."""
    return tl.where(kth_key == -2147483648, float("-inf"), _key_value(kth_key))


@triton.jit
def _consume(v0, v1, v2, v3, c0, c1, c2, c3, list_key, list_col, kth_key, threshold):
    """Absorb a chunk (four sub-blocks) into the running list, after one test of whether
    any entry reaches the current k-th largest (or is NaN)."""
    hit = ((v0 >= threshold) | (v0 != v0)) | ((v1 >= threshold) | (v1 != v1))
    hit = hit | ((v2 >= threshold) | (v2 != v2)) | ((v3 >= threshold) | (v3 != v3))
    if tl.max(hit.to(tl.int32), axis=0) > 0:
        list_key, list_col, kth_key = _absorb(v0, c0, list_key, list_col, kth_key)
        list_key, list_col, kth_key = _absorb(v1, c1, list_key, list_col, kth_key)
        list_key, list_col, kth_key = _absorb(v2, c2, list_key, list_col, kth_key)
        list_key, list_col, kth_key = _absorb(v3, c3, list_key, list_col, kth_key)
        threshold = _threshold(kth_key)
    return list_key, list_col, kth_key, threshold


@triton.jit
def _kth_kernel(
    x_ptr, stride_x, pert_ptr, seed, offset, val_ptr, idx_ptr,
    n_rows, n_cols, n_draws, n_chunks, epsilon,
    K: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr, GIVEN: tl.constexpr,
):
    pair = tl.program_id(0).to(tl.int64)  # r · B + b
    row = pair // n_draws
    draw = pair % n_draws
    x_row = x_ptr + row * stride_x
    lanes = tl.arange(0, BLOCK)
    slots = tl.arange(0, KP)
    list_key = tl.where(slots < K, -2147483648, 2147483647)
    list_col = -1 - slots
    kth_key = tl.min(list_key, axis=0)
    threshold = _threshold(kth_key)
    chunk = 0
    while chunk < n_chunks:  # (a while loop: TRITON_INTERPRET cannot range over an argument)
        c0 = chunk * (4 * BLOCK) + lanes
        c1 = c0 + BLOCK
        c2 = c1 + BLOCK
        c3 = c2 + BLOCK
        if GIVEN:
            p_row = pert_ptr + (draw * n_rows + row) * n_cols
            v0 = tl.load(p_row + c0, mask=c0 < n_cols, other=float("-inf"))
            v1 = tl.load(p_row + c1, mask=c1 < n_cols, other=float("-inf"))
            v2 = tl.load(p_row + c2, mask=c2 < n_cols, other=float("-inf"))
            v3 = tl.load(p_row + c3, mask=c3 < n_cols, other=float("-inf"))
            list_key, list_col, kth_key, threshold = _consume(
                v0, v1, v2, v3, c0, c1, c2, c3, list_key, list_col, kth_key, threshold)
        else:
            x0 = tl.load(x_row + c0, mask=c0 < n_cols, other=float("-inf"))
            x1 = tl.load(x_row + c1, mask=c1 < n_cols, other=float("-inf"))
            x2 = tl.load(x_row + c2, mask=c2 < n_cols, other=float("-inf"))
            x3 = tl.load(x_row + c3, mask=c3 < n_cols, other=float("-inf"))
            counter = offset + (pair * n_chunks + chunk) * BLOCK + lanes
            r0, r1, r2, r3 = tl.randint4x(seed, counter)
            z0, z1 = _normal_pair(r0, r1)
            z2, z3 = _normal_pair(r2, r3)
            list_key, list_col, kth_key, threshold = _consume(
                x0 + epsilon * z0, x1 + epsilon * z1, x2 + epsilon * z2,
                x3 + epsilon * z3, c0, c1, c2, c3, list_key, list_col, kth_key, threshold)
        chunk += 1
    kth_col = tl.max(tl.where(list_key == kth_key, list_col, -2147483647), axis=0)
    tl.store(val_ptr + pair, _key_value(kth_key))
    tl.store(idx_ptr + pair, kth_col.to(tl.int64))


def _block_size(num_cols: int) -> int:
    """Lanes per sub-block: a chunk of ``4·BLOCK`` columns covers short rows in one go."""
    return max(32, min(_MAX_BLOCK, triton.next_power_of_2(-(-num_cols // 4))))


_KEY_MIX = 0x9E3779B97F4A7C15  # decorrelates our Philox keys from torch's own streams
_HIGH = 1 << 62  # seeds and offsets are passed in [2⁶², 2⁶³): one int64 kernel signature


def _seed_and_offset(
    generator: torch.Generator | None, device: torch.device, count: int
) -> tuple[int, int]:
    """A Philox key and a counter base for ``count`` counters, taken from ``generator``
    (``None``: the device's default generator) without any device work: on CUDA the
    generator's seed and Philox offset, the offset then advanced past ``count`` (as
    torch's own random kernels advance it); on other devices (the interpreter) one
    64-bit draw of the generator."""
    if device.type == "cuda":
        if generator is None:
            index = device.index if device.index is not None else torch.cuda.current_device()
            generator = torch.cuda.default_generators[index]
        offset = generator.get_offset()
        generator.set_offset(offset + -(-count // 4) * 4)  # CUDA offsets: multiples of 4
        seed = (generator.initial_seed() * _KEY_MIX + 1) % (1 << 64)
        return _HIGH | (seed >> 2), _HIGH + offset
    draw = torch.randint(-(2**62), 2**62, (), generator=generator, dtype=torch.int64)
    return _HIGH | (int(draw) % _HIGH), _HIGH


def kth_draws(
    x2d: Tensor,
    k: int,
    epsilon: float,
    n_samples: int,
    generator: torch.Generator | None = None,
    perturbed: Tensor | None = None,
    block: int | None = None,
    num_warps: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Values ``(R, B)`` (float32) and columns ``(R, B)`` (int64) of the k-th largest of
    ``x2d[r] + ε Z[b, r]`` (module docstring). ``perturbed`` ``(B, R, C)``: select from
    these values instead of drawing. ``block`` and ``num_warps`` tune the launch (the
    random stream depends on ``block``). Arguments are assumed validated by the caller;
    not for use inside CUDA graph capture (the generator is read on the host)."""
    x = x2d  # the kernel reads the data only: no detach needed
    if x.dtype != torch.float32:
        x = x.float()
    if x.stride(1) != 1 and x.shape[1] > 1:
        x = x.contiguous()
    rows, cols = x.shape
    block = _block_size(cols) if block is None else block
    if num_warps is None:
        num_warps = max(1, min(_WARPS, block // 128))
    values = torch.empty((rows, n_samples), device=x.device, dtype=torch.float32)
    indices = torch.empty((rows, n_samples), device=x.device, dtype=torch.int64)
    if rows == 0:
        return values, indices
    n_chunks = triton.cdiv(cols, 4 * block)
    if perturbed is None:
        seed, offset = _seed_and_offset(generator, x.device,
                                        rows * n_samples * n_chunks * block)
        source = x
    else:
        seed, offset = _HIGH, _HIGH
        source = perturbed.detach().to(torch.float32).contiguous()
    _kth_kernel[(rows * n_samples,)](
        x, x.stride(0), source, seed, offset, values, indices,
        rows, cols, n_samples, n_chunks, float(epsilon),
        K=k, KP=triton.next_power_of_2(k), BLOCK=block, GIVEN=perturbed is not None,
        num_warps=num_warps,
    )
    return values, indices


# --------------------------------------------------------------------------- the hinge

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
_HINGE_ROWS = 1024  # rows per step of the single-program hinge kernel


@triton.jit(debug=True)  # debug: the device_assert on the target's range is kept
def _hinge_kernel(
    val_ptr, x_ptr, stride_row, stride_col, target_ptr, margin_ptr, margin, hinge_ptr, out_ptr,
    n_rows, n_cols, scale,
    B: tl.constexpr, BP: tl.constexpr, BLOCK_R: tl.constexpr, MARGIN: tl.constexpr,
    SCALED: tl.constexpr, REDUCTION: tl.constexpr,
):
    """One program: ``hinge_r = relu(m + mean_b values[r] − x[r, y_r])`` for every row, the
    loss per row (``REDUCTION = 0``) or its mean/sum in a fixed order (deterministic).
    ``MARGIN``: 0 a scalar, 1 per row, 2 per class (indexed by the target)."""
    draws = tl.arange(0, BP)
    total = tl.zeros((BLOCK_R,), dtype=tl.float32)
    start = 0
    while start < n_rows:
        rows = start + tl.arange(0, BLOCK_R)
        inside = rows < n_rows
        values = tl.load(val_ptr + rows[:, None] * B + draws[None, :],
                         mask=inside[:, None] & (draws[None, :] < B), other=0.0)
        top = tl.sum(values, axis=1) * (1.0 / B)
        label_col = tl.load(target_ptr + rows, mask=inside, other=0)
        valid = ((label_col >= 0) & (label_col < n_cols)) | (rows >= n_rows)
        tl.device_assert(tl.min(valid.to(tl.int32), axis=0) > 0,
                         "target values must be in [0, C) (C: the number of classes)")
        label = tl.load(x_ptr + rows.to(tl.int64) * stride_row + label_col * stride_col,
                        mask=inside, other=0.0)
        if MARGIN == 1:
            m = tl.load(margin_ptr + rows, mask=inside, other=0.0)
        elif MARGIN == 2:
            m = tl.load(margin_ptr + label_col, mask=inside, other=0.0)
        else:
            m = margin
        hinge = m + top - label
        hinge = tl.where(hinge < 0.0, 0.0, hinge)  # relu that keeps NaN
        tl.store(hinge_ptr + rows, hinge, mask=inside)
        loss = scale * hinge if SCALED else hinge
        if REDUCTION == 0:
            if SCALED:
                tl.store(out_ptr + rows, loss, mask=inside)
        else:
            total += tl.where(inside, loss, 0.0)
        start += BLOCK_R
    if REDUCTION == 1:
        tl.store(out_ptr, tl.sum(total, axis=0) / n_rows)
    elif REDUCTION == 2:
        tl.store(out_ptr, tl.sum(total, axis=0))


@triton.jit
def _hinge_grad_kernel(
    grad_ptr, stride_grad, hinge_ptr, idx_ptr, target_ptr, out_ptr, n_rows, n_cols, scale,
    B: tl.constexpr, BLOCK_C: tl.constexpr, SCALED: tl.constexpr, REDUCTION: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    g = tl.load(grad_ptr + row * stride_grad)  # stride 0 for a reduced loss
    if REDUCTION == 1:
        g = g / n_rows
    if SCALED:
        g = g * scale
    g = g * (tl.load(hinge_ptr + row) > 0.0).to(tl.float32)
    share = g * (1.0 / B)
    count = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for b in tl.static_range(B):
        count += (cols == tl.load(idx_ptr + row * B + b)).to(tl.float32)
    out = count * share - tl.where(cols == tl.load(target_ptr + row), g, 0.0)
    tl.store(out_ptr + row * n_cols + cols, out, mask=cols < n_cols)


def _contiguous(t: Tensor) -> Tensor:
    return t if t.is_contiguous() else t.contiguous()


def hinge_forward(
    scores: Tensor, target: Tensor, margin: float | Tensor, values: Tensor,
    scale: float | None, reduction: str = "none", per_class: bool = False,
) -> tuple[Tensor, Tensor]:
    """``hinge = relu(m_r + mean_b values − scores[r, target[r]])`` (``(N,)`` float32) and
    the loss: ``scale · hinge`` (or ``hinge`` for ``scale = None``) per row, or its mean or
    sum (0-d). ``margin``: a float, or a tensor: ``(N,)`` per row, or ``(C,)`` per class
    with ``per_class``. Asserts ``0 <= target < C`` on the device."""
    rows, cols = scores.shape
    hinge = torch.empty(rows, device=scores.device, dtype=torch.float32)
    code = _REDUCTIONS[reduction]
    if code:
        out = torch.empty((), device=scores.device, dtype=torch.float32)
    else:
        out = hinge if scale is None else torch.empty_like(hinge)
    if rows == 0:
        return hinge, out.fill_(0.0 if code != 1 else math.nan) if code else out
    kind, margin_t = 0, hinge
    if isinstance(margin, Tensor):
        kind = 2 if per_class else 1
        margin_t = margin.detach()
        if margin_t.dtype != torch.float32 or not margin_t.is_contiguous():
            margin_t = margin_t.float().contiguous()
    values, target = _contiguous(values), _contiguous(target)
    n_samples = values.shape[1]
    _hinge_kernel[(1,)](
        values, scores, scores.stride(0), scores.stride(1), target, margin_t,
        0.0 if kind else float(margin), hinge, out, rows, cols,
        1.0 if scale is None else float(scale),
        B=n_samples, BP=triton.next_power_of_2(n_samples),
        BLOCK_R=min(_HINGE_ROWS, max(16, triton.next_power_of_2(rows))), MARGIN=kind,
        SCALED=scale is not None, REDUCTION=code,
    )
    return hinge, out


def hinge_backward(
    grad: Tensor, hinge: Tensor, indices: Tensor, target: Tensor, num_cols: int,
    scale: float | None, reduction: str = "none",
) -> Tensor:
    """The ``(N, C)`` gradient of the loss with respect to the scores, in one launch:
    ``g_r · ((1/B) Σ_b onehot(indices[r, b]) − onehot(target[r]))`` with
    ``g_r = grad_r · scale · 1{hinge_r > 0}`` (``grad_r = grad / N`` for a mean,
    ``grad`` for a sum)."""
    rows, n_samples = indices.shape
    out = torch.empty((rows, num_cols), device=hinge.device, dtype=torch.float32)
    if rows == 0 or num_cols == 0:
        return out
    if grad.dtype != torch.float32:
        grad = grad.float()
    stride = 0 if grad.dim() == 0 else grad.stride(0)
    block_c = max(32, min(2048, triton.next_power_of_2(num_cols)))
    _hinge_grad_kernel[(rows, triton.cdiv(num_cols, block_c))](
        grad, stride, hinge, _contiguous(indices), _contiguous(target), out, rows, num_cols,
        1.0 if scale is None else float(scale),
        B=n_samples, BLOCK_C=block_c, SCALED=scale is not None,
        REDUCTION=_REDUCTIONS[reduction], num_warps=max(1, min(4, block_c // 256)),
    )
    return out


class NoisedHingeFunction(Function):
    """:class:`smoothtopk.perturbed._NoisedHinge` with its reduction, forward and backward
    as one kernel each (float32 scores; ``margin`` a float, per row or per class). Saves
    ``target``, ``indices`` and the ``(N,)`` hinge."""

    @staticmethod
    def forward(ctx, scores, target, margin, values, indices, scale, reduction="none",
                per_class=False):
        hinge, out = hinge_forward(scores, target, margin, values, scale, reduction,
                                   per_class)
        ctx.save_for_backward(target, indices, hinge)
        ctx.scale, ctx.num_cols, ctx.reduction = scale, scores.shape[1], reduction
        ctx.per_class = per_class
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        target, indices, hinge = ctx.saved_tensors
        grad_scores = grad_margin = None
        if ctx.needs_input_grad[0]:
            grad_scores = hinge_backward(grad, hinge, indices, target, ctx.num_cols,
                                         ctx.scale, ctx.reduction)
        if ctx.needs_input_grad[2]:
            g = grad / hinge.shape[0] if ctx.reduction == "mean" else grad
            g = (g if ctx.scale is None else g * ctx.scale) * (hinge > 0)
            grad_margin = (g.new_zeros(ctx.num_cols).index_add_(0, target, g)
                           if ctx.per_class else g)
        return grad_scores, None, grad_margin, None, None, None, None, None


def noised_hinge_loss(
    scores: Tensor, target: Tensor, k: int, epsilon: float, n_samples: int,
    generator: torch.Generator | None, margin: float | Tensor, scale: float | None,
    reduction: str,
) -> Tensor:
    """The noised top-K hinge loss in two launches (draws; hinge and reduction) and
    one for the backward: ``scale · relu(m_y + mean_b (x + εZ_b)_(k) − x_y)`` reduced.
    ``scores`` float32 ``(N, C)`` on a CUDA device (or any device under the interpreter);
    ``k`` the rank drawn (K + 1 for the top-K loss); ``margin`` a float or per-class
    ``(C,)`` margins. Arguments assumed validated."""
    values, indices = kth_draws(scores, k, epsilon, n_samples, generator)
    return NoisedHingeFunction.apply(scores, target, margin, values, indices, scale, reduction,
                                     isinstance(margin, Tensor))
