"""Smoothed top-K SVM loss of Berrada, Zisserman & Kumar (ICLR 2018).

For one row of scores ``s`` (``C`` classes), label ``y``, ``1 <= K <= C-1``, temperature
``τ > 0`` and margin ``α >= 0``::

    L(s, y) = τ log Σ_{|A|=K} exp((α·1{y∉A} + Σ_{j∈A} s_j/K) / τ)
              − τ log Σ_{|A|=K, y∈A} exp(Σ_{j∈A} s_j / (Kτ)).

With ``e = exp(s/(Kτ))`` and ``σ_j`` the elementary symmetric polynomial of degree ``j``
of ``e`` *without* ``e_y``, both sums are polynomials in ``e`` and the loss reads

    L = τ · softplus(α/τ + log σ_K − log σ_{K−1} − s_y/(Kτ)).

``K = 1`` is the smooth multiclass SVM: ``τ · CE((s + α(1 − δ_y))/τ, y)``, computed as such.

How ``log σ_{K−1}`` and ``log σ_K`` are evaluated (exactly, in any dtype, without
overflow), row by row, with ``u = s/(Kτ)`` over the classes other than ``y`` (``n = C−1``
entries) shifted so that its K-th largest entry ``u_(K)`` is 0:

* the K−1 largest entries are taken out and their polynomial is formed in log space (a
  divide-and-conquer product of the factors ``1 + e_i X`` with log-sum-exp convolutions);
* the others ("bulk", all ``<= 0``) enter through ``w = exp(u) <= 1`` in linear float64
  arithmetic. Entries with ``u < −Λ``, ``Λ = log(2Kn/ε)`` (``ε`` the machine epsilon of the
  input dtype), are dropped: since ``σ_j >= σ_{j−1}·e_(j)/j``, the subsets that use them
  add less than ``j·n·e^{−Λ} <= ε/2`` relative to ``σ_j`` (``j = K−1, K``), and their
  gradient is below ``ε/(2n)``. Every product of at most ``K`` kept weights is then
  ``>= e^{−KΛ}``, a normal float64 while ``KΛ <= 700`` (float32 inputs: up to ``K = 22`` at
  ``C = 10^5``); beyond that the bulk goes through the log-space product too (plain
  autograd, which keeps ``O(N·C·K)`` intermediates);
* the bulk polynomial is built by the recursion ``σ ← σ + w_i·X·σ`` run side by side on
  ``G`` blocks of ``B = min(4(K+1), ⌊√C⌋+1)`` entries (``B`` vectorised steps), then a
  product tree over the blocks. Its backward (custom) is the tree's transpose and the
  adjoint recursion over states recomputed by chunks of rows (memory stays ``O(N·C)``):
  only products and sums of non-negative numbers, hence no cancellation, unlike the
  subtraction recursion ``σ_j(e∖i) = σ_j(e) − e_i σ_{j−1}(e∖i)``;
* the two parts are combined by a log-space convolution. On CPU, when every row of the
  batch spans so little (``u_(1) <= 700/K − Λ``) that it all fits the linear range, the
  split is skipped: the whole row, shifted by its maximum, is the bulk (same band).

Hard rows. With gaps ``g_j = u_(j) − u_(j+1)`` of the sorted ``u``, a j-subset that swaps
``r`` of the top-j entries for others weighs at most ``e^{−r g_j}`` of the top-j one, and
there are at most ``(j(n−j))^r`` of them, so ``log σ_j = Σ_{i<=j} u_(i) + δ_j`` with
``0 <= δ_j <= 2j(n−j)e^{−g_j}`` (when that is ``<= 1``). Where ``g_j >= log(2j(n−j)/ε)`` for
``j = K−1`` and ``j = K`` (both ``δ <= ε``), the row is computed as the hard top-K SVM
``α + (s∖y_(K) − s_y)/K`` (the sums over subsets collapse onto the top-K set) with its
``max(0, ·)`` kept as ``τ·softplus(·/τ)``, which is the hinge itself to float precision once
``|·| >= τ log(1/ε)`` and exact in between: the loss is then within a relative ``ε`` of the
smooth one (``softplus'/softplus <= 1``). On CPU those rows skip the polynomial work;
elsewhere both are computed and selected (no host sync).

Reference: L. Berrada, A. Zisserman, M. P. Kumar, "Smooth Loss Functions for Deep Top-k
Classification", ICLR 2018.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothtopk._checks import (
    check_input_target,
    check_int,
    check_k,
    check_real,
    check_reduction,
    reduce,
)

__all__ = ["SmoothTopKSVMLoss", "smooth_topk_svm"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
# Largest K·Λ for which products of K bulk weights >= e^{−Λ} stay normal float64 numbers.
_LINEAR_RANGE = 700.0
# Finite stand-in for log 0 (float64): sums of a few stay finite and autograd stays NaN-free.
_LOG_ZERO = -1e300
# Float64 numbers held at once by the backward of the bulk recursion (rows are chunked):
# a few MB, so that the buffers stay in cache and are not fresh pages on every call.
_STATE_BUDGET = 1 << 19
_STEPS_PER_DEGREE = 4


# ----------------------------------------------------------------------------------------
# Truncated polynomial products. A batch of polynomials is a tensor (d, ...) holding the
# coefficients of degree 0..d-1, in linear or in log space.


@functools.cache
def _pair_index(p: int, q: int, r: int, device: torch.device) -> tuple[Tensor, ...]:
    """The pairs ``(i, m−i)`` that make the first ``r`` coefficients ``m`` of the product
    of a ``p``- and a ``q``-coefficient polynomial, as flat ``(T·r,)`` tensors (``T =
    min(p, q)`` slots per coefficient): left index, right index, ``m``, and a validity
    mask (float, 1 for a real pair, 0 for an unused slot)."""
    t = min(p, q)
    left = torch.zeros(t, r, dtype=torch.long)
    right = torch.zeros(t, r, dtype=torch.long)
    valid = torch.zeros(t, r)
    for m in range(r):
        for slot, i in enumerate(range(max(0, m - q + 1), min(m, p - 1) + 1)):
            left[slot, m], right[slot, m], valid[slot, m] = i, m - i, 1.0
    mid = torch.arange(r).repeat(t)
    return tuple(x.flatten().to(device) for x in (left, right, mid, valid))


def _pairs(a: Tensor, b: Tensor, degree: int) -> tuple[int, int, tuple[Tensor, ...]]:
    p, q = a.shape[0], b.shape[0]
    r = min(p + q - 1, degree + 1)
    return min(p, q), r, _pair_index(p, q, r, a.device)


def _lin_mul(a: Tensor, b: Tensor, degree: int) -> Tensor:
    """Product of polynomial batches ``a (p, ...)``, ``b (q, ...)`` (linear coefficients)
    up to ``degree``."""
    t, r, (left, right, _, valid) = _pairs(a, b, degree)
    extra = (1,) * (a.dim() - 1)
    terms = a[left].mul_(b[right]).mul_(valid.view(-1, *extra).to(a.dtype))
    return terms.view(t, r, *a.shape[1:]).sum(0)


def _lin_mul_backward(grad: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`_lin_mul` with respect to ``a`` and ``b``."""
    _, _, (left, right, mid, valid) = _pairs(a, b, grad.shape[0] - 1)
    extra = (1,) * (a.dim() - 1)
    g = grad[mid].mul_(valid.view(-1, *extra).to(grad.dtype))
    grad_a = torch.zeros_like(a).index_add_(0, left, g * b[right])
    grad_b = torch.zeros_like(b).index_add_(0, right, g.mul_(a[left]))
    return grad_a, grad_b


def _log_mul(a: Tensor, b: Tensor, degree: int) -> Tensor:
    """:func:`_lin_mul` for log coefficients (log-sum-exp convolution)."""
    t, r, (left, right, _, valid) = _pairs(a, b, degree)
    extra = (1,) * (a.dim() - 1)
    invalid = (valid == 0).view(-1, *extra)
    terms = (a[left] + b[right]).masked_fill_(invalid, _LOG_ZERO).view(t, r, *a.shape[1:])
    top = terms.amax(0)
    return (terms - top).exp().sum(0).log().add(top)


def _pad_even(polys: Tensor, log: bool) -> Tensor:
    """Append the polynomial 1 to a batch ``(d, R, G)`` with odd ``G``."""
    one = torch.full_like(polys[..., :1], _LOG_ZERO if log else 0.0)
    one[0] = 0.0 if log else 1.0
    return torch.cat([polys, one], -1)


def _log_product(polys: Tensor, degree: int) -> Tensor:
    """Product over the last axis of log-coefficient polynomials ``(d, R, G)`` ->
    ``(d', R)``, truncated at ``degree``, by pairwise products (log2 G levels)."""
    while polys.shape[-1] > 1:
        if polys.shape[-1] % 2:
            polys = _pad_even(polys, log=True)
        polys = _log_mul(polys[..., 0::2], polys[..., 1::2], degree)
    return polys[..., 0]


class _BulkPolynomial(torch.autograd.Function):
    """Coefficients ``(K+1, R)`` of ``Π_i (1 + w_i X)`` in float64 for the weights
    ``w = exp(u)``, ``u = (s − shift)·scale``, of the entries of ``s (R, n)`` with
    ``u >= floor`` that are not in ``exclude (R, m)`` (the others weigh 0). ``shift`` and
    ``floor`` (per row, ``(R, 1)``) are constants (no gradient).

    The entries are split into ``G`` blocks ``{g, g+G, g+2G, ...}`` (zero-padded to
    ``B·G``); the recursion ``σ_j ← σ_j + w_i σ_{j−1}`` runs on all blocks at once (``B``
    steps), then a product tree merges the blocks. Backward: the tree's transpose, then
    the adjoint recursion over recomputed states, by chunks of rows (bounded memory);
    non-negative arithmetic only.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, s: Tensor, shift: Tensor, scale: float, floor: Tensor, exclude: Tensor,
        degree: int, steps: int,
    ) -> Tensor:
        rows, n = s.shape
        blocks = -(-n // steps)
        u = (s - shift).mul_(scale)
        keep = (u >= floor).scatter_(1, exclude, False)
        w = u.masked_fill_(~keep, -math.inf).exp_()
        # float64 weights laid out (steps, R, G), zero-padded, so that each step reads one
        # contiguous (R, G) slice: entry i·G + g of a row goes to [i, row, g]
        wb = s.new_zeros(steps, rows, blocks, dtype=torch.float64)
        full = n // blocks
        wb[:full].copy_(w[:, : full * blocks].view(rows, full, blocks).transpose(0, 1))
        if full < steps:
            wb[full, :, : n - full * blocks] = w[:, full * blocks :]
        state = wb.new_zeros(degree + 1, rows, blocks)
        state[0] = 1.0
        spare = state.clone()
        for w_i in wb.unbind(0):
            torch.addcmul(state[1:], state[:-1], w_i, out=spare[1:])
            state, spare = spare, state
        levels = []
        while state.shape[-1] > 1:
            width = state.shape[-1]
            if width % 2:
                state = _pad_even(state, log=False)
            levels.append((state[..., 0::2], state[..., 1::2], width))
            state = _lin_mul(levels[-1][0], levels[-1][1], degree)
        ctx.save_for_backward(wb)
        ctx.levels, ctx.n, ctx.dtype, ctx.scale = levels, n, s.dtype, scale
        return state[..., 0]

    @staticmethod
    def backward(  # type: ignore[override]
        ctx, grad: Tensor
    ) -> tuple[Tensor, None, None, None, None, None, None]:
        (wb,) = ctx.saved_tensors
        steps, rows, blocks = wb.shape
        degree = grad.shape[0] - 1
        grad = grad.unsqueeze(-1)
        for a, b, width in reversed(ctx.levels):
            grad_a, grad_b = _lin_mul_backward(grad, a, b)
            grad = torch.stack([grad_a, grad_b], -1).flatten(-2)[..., :width]
        grad_s = wb.new_empty(rows, steps, blocks)
        grad_wb = grad_s.transpose(0, 1)  # laid out like wb, written in place
        chunk = max(1, _STATE_BUDGET // (2 * (steps + 1) * (degree + 1) * blocks))
        states = wb.new_empty(steps + 1, degree + 1, min(chunk, rows), blocks)
        adjoints = torch.empty_like(states)
        for r0 in range(0, rows, chunk):
            w = wb[:, r0:r0 + chunk]
            st, adj = states[:, :, : w.shape[1]], adjoints[:, :, : w.shape[1]]
            st[0].zero_()
            st[:, 0] = 1.0
            w_all, lo, hi = w.unbind(0), st[:, :-1].unbind(0), st[:, 1:].unbind(0)
            for i in range(steps):
                torch.addcmul(hi[i], lo[i], w_all[i], out=hi[i + 1])
            adj[steps] = grad[:, r0:r0 + chunk]
            adj[:, degree] = grad[degree, r0:r0 + chunk]
            lo, hi = adj[:, :-1].unbind(0), adj[:, 1:].unbind(0)
            for i in range(steps - 1, -1, -1):
                torch.addcmul(lo[i + 1], hi[i + 1], w_all[i], out=lo[i])
            # d σ^{(i+1)}_j / d w_i = σ^{(i)}_{j−1} (the states are not needed any more)
            torch.sum(st[:-1, :-1].mul_(adj[1:, 1:]), 1, out=grad_wb[:, r0:r0 + chunk])
        grad_wb.mul_(wb).mul_(ctx.scale)  # d w / d s = w · scale
        grad_s = grad_s.view(rows, steps * blocks)[:, : ctx.n].to(ctx.dtype)
        return grad_s, None, None, None, None, None, None


def _syncs_freely(device: torch.device) -> bool:
    """Whether data-dependent choices may read values back to the host (CPU: free). On
    accelerators the code takes the branch-free route instead (no host sync)."""
    return device.type == "cpu"


def _log_linear(x: Tensor) -> Tensor:
    """``log x`` for ``x >= 0`` with ``log 0`` replaced by ``_LOG_ZERO`` (NaN-free grad)."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, 1.0).log(), _LOG_ZERO)


def _leaf_polys(logw: Tensor) -> Tensor:
    """Log coefficients ``(2, R, n)`` of the factors ``1 + e^{logw} X``."""
    return torch.stack([torch.zeros_like(logw), logw])


def _esp_margin(
    s: Tensor, label: Tensor, top: Tensor, top_idx: Tensor, lead: Tensor, k: int,
    scale: float, eps: float,
) -> tuple[Tensor, Tensor]:
    """``D = log σ_K − log σ_{K−1}`` (float64) of ``e = exp((s − c)·scale)`` without the
    ``label`` column, per row, and the constant shift ``c (R, 1)`` it is relative to.
    ``top``, ``top_idx``: the K+1 largest entries of ``s`` without the label (no grad);
    ``lead``: the K−1 largest, with their gradient."""
    n = s.shape[1] - 1
    cut = math.log(2.0 * k * n / eps)
    linear = k * cut <= _LINEAR_RANGE
    steps = min(math.isqrt(s.shape[1]) + 1, _STEPS_PER_DEGREE * (k + 1))
    span = (top[:, 0] - top[:, k - 1]) * scale
    if linear and _syncs_freely(s.device) and bool((span <= _LINEAR_RANGE / k - cut).all()):
        # every row spans so little that all of it fits the linear range: no split
        shift, floor = top[:, :1], (-cut - span).unsqueeze(1)
        log_all = _log_linear(_BulkPolynomial.apply(s, shift, scale, floor, label, k, steps))
        return log_all[k] - log_all[k - 1], shift
    shift = top[:, k - 1 : k]
    log_top = _log_product(_leaf_polys((lead - shift).double() * scale), k)  # degrees < K
    exclude = torch.cat([label, top_idx[:, : k - 1]], 1)
    if linear:
        floor = torch.full_like(shift, -cut)
        bulk = _BulkPolynomial.apply(s, shift, scale, floor, exclude, k, steps)
        log_bulk = _log_linear(bulk)
    else:
        u = (s - shift) * scale
        keep = (u.detach() >= -cut).scatter_(1, exclude, False)
        log_bulk = _log_product(_leaf_polys(torch.where(keep, u.double(), _LOG_ZERO)), k)
    both = _log_mul(log_top, log_bulk, k)  # (K+1, R)
    return both[k] - both[k - 1], shift


def _svm_rows(scores: Tensor, target: Tensor, k: int, tau: float, alpha: float) -> Tensor:
    """Per-row loss (float64) for ``K >= 2`` (see the module docstring). The smooth rows
    are computed relative to a constant per-row shift ``c`` (the loss does not depend on
    it: ``D`` moves by exactly ``−c·scale``), so gradients flow only through the scores."""
    eps = torch.finfo(scores.dtype).eps
    n = scores.shape[1] - 1
    scale = 1.0 / (k * tau)
    label = target.unsqueeze(1)
    top, top_idx = scores.detach().scatter(1, label, -math.inf).topk(k + 1, dim=1)
    # label, K−1 leading and K-th scores, with their gradient (one gather)
    picked = scores.gather(1, torch.cat([label, top_idx[:, :k]], 1))
    s_y, lead = picked[:, 0].double(), picked[:, 1:k]
    # hard rows: α/τ + u_(K) − u_y
    hard_x = alpha / tau - (s_y - picked[:, k]) * scale
    gaps = (top[:, k - 2 : k] - top[:, k - 1 : k + 1]).double() * scale
    j = torch.tensor([k - 1, k], dtype=torch.float64, device=scores.device)
    need = torch.log(2.0 * j * (n - j) / eps)  # −inf where a single j-subset exists
    hard = (gaps >= need).all(1)
    rows = None
    if _syncs_freely(scores.device):  # skip the hard rows
        rows = (~hard).nonzero().squeeze(1)
        if rows.numel() == 0:
            return tau * torch.logaddexp(hard_x, torch.zeros_like(hard_x))
        if rows.numel() == hard.numel():
            rows = None
    if rows is None:
        d, shift = _esp_margin(scores, label, top, top_idx, lead, k, scale, eps)
        smooth_x = alpha / tau - (s_y - shift.squeeze(1)) * scale + d
        x = torch.where(hard, hard_x, smooth_x)
    else:
        d, shift = _esp_margin(scores[rows], label[rows], top[rows], top_idx[rows], lead[rows],
                               k, scale, eps)
        smooth_x = alpha / tau - (s_y[rows] - shift.squeeze(1)) * scale + d
        x = hard_x.index_put((rows,), smooth_x)
    return tau * torch.logaddexp(x, torch.zeros_like(x))


def smooth_topk_svm(
    input: Tensor,
    target: Tensor,
    k: int = 5,
    tau: float = 1.0,
    alpha: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Smoothed top-K SVM loss (Berrada et al., ICLR 2018).

    ``L(s, y) = τ log Σ_{|A|=K} exp((α·1{y∉A} + Σ_{j∈A} s_j/K)/τ)
    − τ log Σ_{|A|=K, y∈A} exp(Σ_{j∈A} s_j/(Kτ))``, computed exactly (to the precision of
    the input dtype) through log-space elementary symmetric polynomials; see
    :mod:`smoothtopk.svm` for the algorithm and the hard-row threshold. ``τ → 0`` gives the
    hard top-K SVM ``max(0, α + (top_K(s∖y) − s_y)/K)``; ``K = 1`` is the smooth multiclass
    SVM ``τ·CE((s + α(1 − δ_y))/τ, y)``.

    Args:
        input: scores ``(N, C)``, floating point (float16/bfloat16 computed in float32).
        target: class indices ``(N,)``, int64 in ``[0, C)``.
        k: ``K`` in ``[1, C−1]``.
        tau: temperature ``τ > 0``.
        alpha: margin ``α >= 0``.
        reduction: 'none' -> ``(N,)``, 'mean' or 'sum' -> scalar.
    """
    _, num_classes = check_input_target(input, target)
    k = check_k(k, num_classes, needs_next=True)
    tau = check_real("tau", tau, 0.0, low_inclusive=False)
    alpha = check_real("alpha", alpha, 0.0)
    check_reduction(reduction)
    scores = input.float() if input.dtype in _LOW_PRECISION else input
    if k == 1:
        shifted = (scores + alpha).scatter_add(
            1, target.unsqueeze(1), scores.new_full((scores.shape[0], 1), -alpha))
        loss = tau * F.cross_entropy(shifted / tau, target, reduction="none")
    else:
        loss = _svm_rows(scores, target, k, tau, alpha).to(scores.dtype)
    return reduce(loss, reduction)


class SmoothTopKSVMLoss(nn.Module):
    """Smoothed top-K SVM loss as a module (:func:`smooth_topk_svm`)."""

    def __init__(
        self, k: int = 5, tau: float = 1.0, alpha: float = 1.0, reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.k = check_int("k", k, 1)
        self.tau = check_real("tau", tau, 0.0, low_inclusive=False)
        self.alpha = check_real("alpha", alpha, 0.0)
        self.reduction = check_reduction(reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return smooth_topk_svm(input, target, self.k, self.tau, self.alpha, self.reduction)

    def extra_repr(self) -> str:
        return f"k={self.k}, tau={self.tau}, alpha={self.alpha}, reduction={self.reduction!r}"


def smooth_top1_svm_loss(
    tau: float = 1.0, alpha: float = 1.0, reduction: str = "mean"
) -> SmoothTopKSVMLoss:
    """The smooth multiclass SVM: :class:`SmoothTopKSVMLoss` with ``k = 1``."""
    return SmoothTopKSVMLoss(1, tau, alpha, reduction)
