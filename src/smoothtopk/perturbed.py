"""Exact fast samplers of the perturbed k-th largest entry of each row.

For scores ``x`` of shape ``(R, C)``, ``k`` in ``[1, C]``, ``ε > 0`` and ``B`` draws,
:func:`sample_perturbed_kth` returns, for every row ``r`` and draw ``b``, the value and the
column of the k-th largest entry of ``x[r] + ε Z[b, r]`` with ``Z[b, r] ~ N(0, I_C)``:
the same random variables as :func:`smoothtopk.ops._perturbed_kth_reference` (the
readable definition, which draws all ``B·R·C`` Gaussians), with the same joint law of
(value, column), but drawing only the Gaussians that can matter. Two implementations:

* **CPU tensors**: the compiled kernel of :mod:`smoothtopk.perturbed_cpu` (numba): one
  pass over each row, then the classes revealed lazily under a running threshold (its
  docstring gives the algorithm and the exactness argument). Rows are shared among
  ``torch.get_num_threads()`` threads; the result depends on the generator only.
* **CUDA tensors** (float32, float16, bfloat16) when Triton is installed: the kernel of
  :mod:`smoothtopk.perturbed_triton`, one program per (row, draw) that draws its noise in
  registers (counter-based generator) and keeps a running top-k; nothing of size
  ``B·R·C`` is written. Its generator bounds ``|Z| < 6.77`` (the Gaussian tail beyond,
  ``1.3·10⁻¹¹`` per coordinate, is never drawn; its docstring states this bound).
* **Other devices** (:func:`_sample_torch`, torch operations only, described below).

Torch sampler, per row (all rows and draws are processed at once, without Python loops):

1. *Candidates*: the ``M`` largest clean scores (``M`` a little above ``k``) and ``u``,
   the ``(M+1)``-th largest: every other class ("non-candidate") has ``x_j <= u``.
2. Draw the candidates' noise in full; ``T`` = the k-th largest perturbed candidate.
3. *Exceedances*: a non-candidate can only reach ``T`` if ``Z_j > a = (T − u)/ε``. These
   events are independent with the common probability ``q = P(Z > a)``, and ``Z`` is
   independent of the candidates' noise, hence of ``T``. The columns with ``Z_j > a`` are
   drawn as a Bernoulli(``q``) process over the columns (geometric gaps; hits that fall on a
   candidate are discarded, which leaves exact Bernoulli(``q``) trials on the others), and
   their ``Z_j`` from the normal law truncated to ``(a, ∞)`` by inversion
   (``Z = −Φ⁻¹(qV)``, ``V ~ U(0, 1]``).
4. Every other non-candidate has ``Z_j <= a``, hence ``x_j + εZ_j <= u + εa = T``; since at
   least ``k`` candidates are ``>= T``, the k-th largest of the whole row is the k-th
   largest among candidates and exceedances, and so is its column.

Exactness (both samplers): they draw exactly the law of the ``C`` perturbed scores
restricted to the entries that can be among the ``k`` largest, so the (value, column) pair
has exactly the law of the reference; **no class is pruned** (there is no error bound to
state beyond floating point: probabilities under ~1e-308 count as zero). When float
rounding makes two perturbed entries exactly equal (e.g. ε = 1e-6 on tied float32 scores)
the column (never the value) of such a tie may differ from the reference's. In the torch
sampler, when the mean exceedance probability is large (ε large against the spread of the
top scores, e.g. N(0, 1) scores with ε = 1), the remaining noise is drawn in full for the
whole call, the candidates keeping their draws; the choice depends on the candidates' draws
only, which are independent of the other classes' noise, so the law stays exact. All the
noise is also drawn at once, from the outset, for short rows (``C <= 2M``), for small calls
(at most ``2**18`` draws in all) and when ε is large against the scores' spread; these
choices depend on the scores only.

Memory: nothing of size ``B·R·C`` is kept (the torch sampler's dense fall-back builds one
transiently). The CPU kernel needs ``O(C)`` scratch per thread; the Triton kernel holds its
running top-k in registers.

:func:`noised_hinge` fuses the noised top-K hinges of :mod:`smoothtopk.functional` with
these draws into one autograd node, so that their backward writes a single ``(N, C)``
gradient, as ``F.cross_entropy`` does; on CPU tensors its forward and backward are compiled
passes (:mod:`smoothtopk.hinge_cpu`). On CPU float32 and float64 scores the losses call
:func:`cpu_noised_hinge_loss`, whose node draws too (the same draws and results; the draws
and the hinge in one call: :func:`smoothtopk.hinge_cpu.noised_hinge_forward`).

Reference: the estimator is that of Berthet et al. (NeurIPS 2020) as used by Garcin et al.
(ICML 2022); the sampling schemes (candidates, exceedances as Bernoulli trials under a
bound, truncated Gaussians) are this package's.
"""

from __future__ import annotations

import functools
import math
import threading
from types import ModuleType

import numpy as np
import torch
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from smoothtopk import hinge_cpu, perturbed_cpu
from smoothtopk._checks import check_index_range, reduce

__all__ = ["DEFAULT_EXTRA_CANDIDATES", "cpu_noised_hinge_loss", "cpu_smooth_kth",
           "noised_hinge", "sample_perturbed_kth", "selected_sum_grad"]

#: ``M = k + DEFAULT_EXTRA_CANDIDATES`` candidates per row (capped at ``C − 1``).
DEFAULT_EXTRA_CANDIDATES = 8

# Draw the non-candidates' noise in full when, on average, more than this fraction of a
# row would be proposed as exceedances: each proposal costs some forty indexing and
# elementwise passes, against about two for a plain Gaussian in the dense computation.
_DENSE_FRACTION = 1 / 32
# ... and from the outset when there are at most _DENSE_DRAWS draws in all (the sparse
# path costs some sixty small operations, about 2**18 Gaussians' worth on a CPU) ...
_DENSE_DRAWS = 2**18
# ... or when ε >= _DENSE_SPREAD × the scores' spread (_noise_dominates;
# N(0, 1) scores with ε = 1 qualify, a trained network's peaked scores with ε <= 0.2 not).
_DENSE_SPREAD = 0.25

#: Each thread's 0-d int64 tensor that :func:`_kernel_seed` draws into.
_SEED_BOX = threading.local()


def _first_order(backward):
    """A Function's ``backward`` whose gradient is not differentiable: run as is in a plain
    backward (grad mode off), and through :func:`once_differentiable` under
    ``create_graph=True`` (differentiating that gradient then raises). The plain call
    spares once_differentiable's no-grad block and output checks, a few microseconds of
    every training step."""
    once = once_differentiable(backward)

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled():
            return once(ctx, *grads)
        return backward(ctx, *grads)

    return wrapper


@functools.cache
def _triton_kernels() -> ModuleType | None:
    """:mod:`smoothtopk.perturbed_triton` when Triton can be imported, else ``None``."""
    try:
        from smoothtopk import perturbed_triton
    except ImportError:
        return None
    return perturbed_triton


def uses_triton(x: Tensor) -> bool:
    """Whether ``x`` goes to the Triton kernels (the sampler, and the noised hinge after the
    losses' float32 upcast): a CUDA tensor (not float64), Triton there, no CUDA graph being
    captured (the kernels read the generator on the host)."""
    return (x.device.type == "cuda" and x.dtype != torch.float64
            and _triton_kernels() is not None and not torch.cuda.is_current_stream_capturing())


def triton_noised_hinge_loss(
    scores: Tensor, target: Tensor, k: int, epsilon: float, n_samples: int,
    generator: torch.Generator | None, margin: float | Tensor, scale: float | None,
    reduction: str,
) -> Tensor:
    """:func:`smoothtopk.perturbed_triton.noised_hinge_loss` (for :func:`uses_triton`
    scores, upcast to float32 by the caller)."""
    return _triton_kernels().noised_hinge_loss(scores, target, k, epsilon, n_samples,
                                               generator, margin, scale, reduction)


def _noise_dominates(x2d: Tensor, epsilon: float) -> bool:
    """Whether ε is so large against the spread of the scores (median over rows of the
    row's maximum minus its mean) that most classes would be drawn as exceedances anyway:
    then all the noise is drawn at once, sparing the candidate search. Depends on the
    scores only, so the law is unchanged; two vectorised reductions, far cheaper than a
    ``topk`` (or a ``std``) over whole rows."""
    spread = (x2d.amax(dim=1) - x2d.mean(dim=1)).median()
    return bool(epsilon >= _DENSE_SPREAD * spread)


def _dense(
    x2d: Tensor, k: int, epsilon: float, noise: Tensor, in_place: bool = False
) -> tuple[Tensor, Tensor]:
    """k-th largest of ``x2d + ε·noise`` (``noise`` of shape ``(B, R, C)``): (B, R) each.
    ``in_place``: perturb ``noise`` itself (drawn here, not needed afterwards), sparing a
    second ``B·R·C`` buffer."""
    if in_place:
        perturbed = noise.mul_(epsilon).add_(x2d)
    else:  # the reference's arithmetic, for bitwise equality on given draws
        perturbed = torch.add(x2d, noise, alpha=epsilon)
    values, indices = torch.topk(perturbed, k, dim=-1)
    return values[..., -1], indices[..., -1]


def _exceedance_columns(
    q: Tensor, num_cols: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Columns hit by independent Bernoulli(``q[p]``) trials over ``0..num_cols−1``.

    ``q``: ``(P,)`` float64, one success probability per pair ``p``. Returns ``pair`` and
    ``col`` (int64, same length): every hit, grouped by pair, columns increasing within a
    pair. Hits are separated by geometric gaps ``⌊log U / log(1 − q)⌋`` (failures before the
    next success); each pair gets about its expected number of gaps plus six standard
    deviations, and pairs that have not passed ``num_cols`` yet draw more.
    """
    device = q.device
    pending = torch.arange(q.shape[0], device=device)
    last = torch.full_like(q, -1.0)
    pairs, cols = [], []
    while pending.numel() > 0:
        qp = q[pending]
        mean = qp * num_cols
        counts = (mean + 6.0 * mean.sqrt() + 1.0).floor_().long()
        seg_end = counts.cumsum(0)
        total = int(seg_end[-1])
        owner = torch.repeat_interleave(torch.arange(pending.numel(), device=device), counts,
                                        output_size=total)
        u = torch.rand(total, generator=generator, device=device, dtype=torch.float64)
        gaps = torch.log1p(-u).div_(torch.log1p(-qp)[owner])
        big = num_cols + 1.0
        gaps = gaps.nan_to_num_(nan=big, posinf=big, neginf=big)  # q = 0: no hit
        gaps = gaps.floor_().clamp_(max=big).add_(1.0)
        pos = gaps.cumsum_(0)
        before = torch.cat([pos.new_zeros(1), pos])[seg_end - counts]
        pos = pos.sub_(before[owner]).add_(last[pending][owner])
        inside = pos < num_cols
        pairs.append(pending[owner[inside]])
        cols.append(pos[inside].long())
        end = pos[seg_end - 1]
        last[pending] = end
        pending = pending[end < num_cols]
    if len(pairs) == 1:
        return pairs[0], cols[0]
    pair, col = torch.cat(pairs), torch.cat(cols)
    order = torch.sort(pair, stable=True).indices
    return pair[order], col[order]


def sample_perturbed_kth(
    x2d: Tensor,
    k: int,
    epsilon: float,
    n_samples: int,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    n_candidates: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Value and column of the k-th largest entry of ``x2d[r] + ε Z[b, r]``, exactly.

    Shapes: ``x2d`` ``(R, C)`` floating point, ``k`` in ``[1, C]``, ``epsilon > 0``,
    ``n_samples = B >= 1``. Returns ``values (R, B)`` (dtype of ``x2d``) and
    ``indices (R, B)`` (int64), with the joint law of
    :func:`smoothtopk.ops._perturbed_kth_reference` (see the module docstring for the
    algorithms and the exactness argument). ``n_candidates`` (``M``, default
    ``k + DEFAULT_EXTRA_CANDIDATES``) only changes the speed, never the law.

    ``noise`` (``(B, R, C)`` standard-normal draws, optional) runs the same pruning on given
    draws instead of sampling: each exceedance test reads its answer from ``noise`` (no
    speed-up, a dense pass); the result then equals the reference on the same draws, which
    checks the pruning argument draw by draw. Arguments are assumed validated by the caller
    (:func:`smoothtopk.ops.smooth_kth_largest`). CPU tensors use the compiled kernel of
    :mod:`smoothtopk.perturbed_cpu`, CUDA tensors :mod:`smoothtopk.perturbed_triton`
    (``n_candidates`` unused there), other devices :func:`_sample_torch`.
    """
    if x2d.device.type == "cpu":
        return _sample_cpu(x2d, k, epsilon, n_samples, generator, noise, n_candidates)
    if uses_triton(x2d):
        work = x2d.detach().float()
        perturbed = None
        if noise is not None:  # the reference's arithmetic, for bitwise equality
            perturbed = torch.add(work, noise.to(work.dtype), alpha=epsilon)
        values, indices = _triton_kernels().kth_draws(work, k, epsilon, n_samples, generator,
                                                      perturbed)
        return values.to(x2d.dtype), indices
    return _sample_torch(x2d, k, epsilon, n_samples, generator, noise, n_candidates)


def _kernel_seed(generator: torch.Generator | None) -> int:
    """One 64-bit draw of the caller's generator, which keys the CPU kernel's streams: the
    number ``torch.randint(−2⁶³, 2⁶³ − 1, ())`` would draw, into a 0-d tensor of this
    thread's kept for the purpose (a few microseconds less than a new one, every step)."""
    try:
        box = _SEED_BOX.tensor
    except AttributeError:
        box = _SEED_BOX.tensor = torch.empty((), dtype=torch.int64)
    return int(box.random_(-(2**63), 2**63 - 1, generator=generator))


def _sample_cpu(
    x2d: Tensor, k: int, epsilon: float, n_samples: int, generator: torch.Generator | None,
    noise: Tensor | None, n_candidates: int | None,
) -> tuple[Tensor, Tensor]:
    """:func:`sample_perturbed_kth` on a CPU tensor: the kernel of
    :mod:`smoothtopk.perturbed_cpu` on float32 or float64 (other dtypes upcast to float32)."""
    m = k + DEFAULT_EXTRA_CANDIDATES if n_candidates is None else n_candidates
    work = x2d.detach()
    if work.dtype not in (torch.float32, torch.float64):
        work = work.float()
    work = work.contiguous()
    perturbed = None
    if noise is not None:  # the reference's arithmetic, for bitwise equality
        perturbed = torch.add(work, noise.to(work.dtype), alpha=epsilon).numpy()
    seed = 0 if noise is not None else _kernel_seed(generator)
    values, indices = perturbed_cpu.kth_draws(
        work.numpy(), k, epsilon, n_samples, m, seed, perturbed=perturbed,
        threads=torch.get_num_threads(),
    )
    return torch.from_numpy(values).to(x2d.dtype), torch.from_numpy(indices)


def _sample_torch(
    x2d: Tensor,
    k: int,
    epsilon: float,
    n_samples: int,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    n_candidates: int | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`sample_perturbed_kth` with torch operations only (any device; the module
    docstring describes it). Same arguments and results."""
    rows, cols = x2d.shape
    device, dtype = x2d.device, x2d.dtype
    m = k + DEFAULT_EXTRA_CANDIDATES if n_candidates is None else n_candidates
    m = min(max(m, k), cols - 1)
    few = cols <= 2 * m or n_samples * rows * cols <= _DENSE_DRAWS
    if noise is None and (few or _noise_dominates(x2d, epsilon)):
        m = k - 1  # draw all: few draws in all, or most classes would be exceedances
    elif noise is not None and not bool(noise.isfinite().all()):
        m = k - 1  # given NaN or infinities: the definition's order (NaN above everything)
    if m < k:
        if noise is not None:
            values, indices = _dense(x2d, k, epsilon, noise)
        else:
            draws = torch.randn((n_samples, rows, cols), generator=generator, device=device,
                                dtype=dtype)
            values, indices = _dense(x2d, k, epsilon, draws, in_place=True)
        return values.t(), indices.t()

    top_values, top_indices = torch.topk(x2d, m + 1, dim=-1)
    cand_values, cand_indices = top_values[:, :m], top_indices[:, :m]
    bound = top_values[:, m]  # u: every non-candidate is <= u
    cand_columns = cand_indices.unsqueeze(0).expand(n_samples, -1, -1)
    if noise is None:
        cand_noise = torch.randn((n_samples, rows, m), generator=generator, device=device,
                                 dtype=dtype)
        cand_perturbed = torch.add(cand_values, cand_noise, alpha=epsilon)
    else:  # the reference's arithmetic, for bitwise equality
        full = torch.add(x2d, noise, alpha=epsilon)
        cand_perturbed = full.gather(-1, cand_columns)
    top_k = torch.topk(cand_perturbed, k, dim=-1)  # (B, R, k)
    threshold = top_k.values[..., -1]  # T
    a = (threshold.double() - bound.double()) / epsilon  # (B, R)
    q = torch.special.ndtr(-a).nan_to_num_(nan=0.0).reshape(-1)  # P(Z > a), (B·R,)

    if noise is not None:
        hit = noise > a.to(noise.dtype).unsqueeze(-1)  # (B, R, C); pairs in b·R + r order
        b, r, col = hit.nonzero(as_tuple=True)
        pair, hit_values = b * rows + r, full[b, r, col]
    else:
        if float(q.mean()) > _DENSE_FRACTION:
            full = torch.randn((n_samples, rows, cols), generator=generator, device=device,
                               dtype=dtype)
            full.scatter_(-1, cand_columns, cand_noise)  # candidates keep their draws
            values, indices = _dense(x2d, k, epsilon, full, in_place=True)
            return values.t(), indices.t()
        pair, col = _exceedance_columns(q, cols, generator)
        # Z | Z > a by inversion: Φ(−Z) = q·V with V ~ U(0, 1].
        v = 1.0 - torch.rand(pair.shape, generator=generator, device=device,
                             dtype=torch.float64)
        z = torch.special.ndtri(v.mul_(q[pair])).neg_().to(dtype)
        hit_values = torch.add(x2d.reshape(-1)[(pair % rows) * cols + col], z, alpha=epsilon)

    # Drop the hits that fall on candidates (their noise is the candidates' draw).
    is_cand = torch.zeros(rows * cols, dtype=torch.bool, device=device)
    row_start = torch.arange(rows, device=device).unsqueeze(1) * cols
    is_cand[(cand_indices + row_start).reshape(-1)] = True
    flat = (pair % rows) * cols + col
    # Only exceedances above T can enter the top k: k candidates already reach T.
    top_values = top_k.values.reshape(-1, k)
    top_columns = cand_columns.gather(-1, top_k.indices).reshape(-1, k)
    keep = ~is_cand[flat] & (hit_values > top_values[pair, -1])
    pair, col, hit_values = pair[keep], col[keep], hit_values[keep]
    if pair.numel() > 0:
        n_pairs = top_values.shape[0]
        per_pair = torch.bincount(pair, minlength=n_pairs)
        width = int(per_pair.max())
        rank = torch.arange(pair.numel(), device=device) - (per_pair.cumsum(0) - per_pair)[pair]
        extra_values = top_values.new_full((n_pairs, width), -math.inf)
        extra_values[pair, rank] = hit_values
        extra_columns = top_columns.new_zeros((n_pairs, width))
        extra_columns[pair, rank] = col
        merged = torch.topk(torch.cat([top_values, extra_values], dim=-1), k, dim=-1)
        top_values = merged.values
        top_columns = torch.cat([top_columns, extra_columns], dim=-1).gather(-1, merged.indices)
    values = top_values[:, -1].reshape(n_samples, rows)
    indices = top_columns[:, -1].reshape(n_samples, rows)
    return values.t(), indices.t()


def compiled_on_cpu(t: Tensor) -> bool:
    """Whether the compiled CPU passes (:mod:`smoothtopk.hinge_cpu`) take ``t``: a CPU
    float32 or float64 tensor."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)


def _compiled_forward(scores: Tensor, margin: float | Tensor, values: Tensor) -> bool:
    """Whether :class:`_NoisedHinge`'s forward runs :mod:`smoothtopk.hinge_cpu`: scores
    it takes, draws and per-row margins of the same dtype on the CPU."""
    return (compiled_noised_hinge(scores, margin) and compiled_on_cpu(values)
            and values.dtype == scores.dtype)


def _compiled_backward(grad: Tensor, indices: Tensor, target: Tensor) -> bool:
    """Whether :class:`_NoisedHinge`'s backward runs :mod:`smoothtopk.hinge_cpu`: a
    gradient it takes, int64 columns."""
    return compiled_on_cpu(grad) and indices.dtype == target.dtype == torch.int64


def _hinge_compiled(scores: Tensor, target: Tensor, margin: float | Tensor,
                    values: np.ndarray, scale: float | None, reduction: str,
                    per_class: bool) -> tuple[Tensor, Tensor]:
    """``(hinge, loss)`` of :mod:`smoothtopk.hinge_cpu`'s forward on ``values`` (an array of
    the dtype of ``scores``)."""
    hinge, loss = hinge_cpu.hinge_forward(scores.detach().numpy(), target.numpy(),
                                          _margin_array(margin), values, scale, per_class,
                                          reduction)
    hinge = torch.from_numpy(hinge)
    return hinge, _loss_tensor(hinge, loss, scale, reduction)


def _margin_array(margin: float | Tensor) -> float | np.ndarray:
    """A margin for :mod:`smoothtopk.hinge_cpu`: a float as is, a tensor's values."""
    return margin.detach().numpy() if isinstance(margin, Tensor) else margin


def _loss_tensor(hinge: Tensor, loss: np.ndarray, scale: float | None,
                 reduction: str) -> Tensor:
    """The loss of :mod:`smoothtopk.hinge_cpu`'s forward as a tensor: ``hinge`` itself when
    it is the loss (no ``scale``, no reduction)."""
    return hinge if scale is None and reduction == "none" else torch.from_numpy(loss)


def _keep_for_backward(ctx, scores: Tensor, margin: float | Tensor, scale: float | None,
                       reduction: str, per_class: bool) -> None:
    ctx.scale, ctx.shape, ctx.reduction = scale, scores.shape, reduction
    ctx.per_class, ctx.margin_size = per_class, margin.shape if per_class else None


def _hinge_backward(ctx, grad: Tensor, target: Tensor, indices: Tensor,
                    hinge: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of the scores and of the margin (``None`` where not needed) of the fused
    hinge, from its ``target``, ``indices`` and hinge; the scores at input 0 and the margin
    at input 2 of both :class:`_NoisedHinge` and :class:`_SampledNoisedHinge`."""
    if _compiled_backward(grad, indices, target):  # any strides: the kernel reads them
        return _compiled_hinge_backward(ctx, grad, target, indices.numpy(), hinge.numpy())
    rows = ctx.shape[0]
    grad_scores = grad_margin = None
    needs_scores, _, needs_margin = ctx.needs_input_grad[:3]
    # torch's mean and sum backward, then the hinge's
    if ctx.reduction != "none":
        grad = grad.expand(rows)
        grad = grad / rows if ctx.reduction == "mean" else grad
    if ctx.scale is not None:
        grad = grad * ctx.scale
    masked = grad * (hinge > 0)
    if needs_scores:
        share = (masked * (1.0 / indices.shape[-1])).unsqueeze(-1).expand(indices.shape)
        grad_scores = masked.new_zeros(ctx.shape).scatter_add_(1, indices, share)
        grad_scores.scatter_add_(1, target.unsqueeze(1), -masked.unsqueeze(1))
    if needs_margin:
        grad_margin = _margin_grad(ctx, masked, target)
    return grad_scores, grad_margin


def _compiled_hinge_backward(ctx, grad: Tensor, target: Tensor, indices: np.ndarray,
                             hinge: np.ndarray) -> tuple[Tensor | None, Tensor | None]:
    """:func:`_hinge_backward` in one compiled pass (:func:`smoothtopk.hinge_cpu.hinge_grad`)
    for a CPU float32 or float64 ``grad``, from the arrays of ``indices`` (int64) and of
    the hinge."""
    out, masked = hinge_cpu.hinge_grad(grad.numpy().reshape(-1), hinge, ctx.scale, indices,
                                       target.numpy(), ctx.shape[1], torch.get_num_threads(),
                                       ctx.reduction)
    needs_scores, _, needs_margin = ctx.needs_input_grad[:3]
    grad_scores = torch.from_numpy(out) if needs_scores else None
    if not needs_margin:
        return grad_scores, None
    return grad_scores, _margin_grad(ctx, torch.from_numpy(masked), target)


def _margin_grad(ctx, masked: Tensor, target: Tensor) -> Tensor:
    """The margin's gradient from ``g_r`` (``masked``): itself for margins per row, index's
    backward for per-class margins."""
    if not ctx.per_class:
        return masked
    return masked.new_zeros(ctx.margin_size).index_put_((target,), masked, accumulate=True)


class _NoisedHinge(Function):
    """Per row ``scale · (m_r + (1/B) Σ_b values[r, b] − s_y)_+``, reduced, whose backward
    writes one ``(N, C)`` gradient: ``g_r · scale · 1{hinge > 0} · ((1/B) Σ_b
    onehot(indices[r, b]) − δ_y)``, ``g_r`` the gradient reaching row ``r`` through the
    reduction (the composed autograd graph would zero-fill two and add them). ``m_r``:
    ``margin`` (a float), ``margin[r]`` or, ``per_class``, ``margin[target[r]]``. Saves
    ``target``, ``indices`` and the ``(N,)`` hinge only."""

    @staticmethod
    def forward(ctx, scores, target, margin, values, indices, scale, reduction, per_class):
        _keep_for_backward(ctx, scores, margin, scale, reduction, per_class)
        if _compiled_forward(scores, margin, values):
            hinge, loss = _hinge_compiled(scores, target, margin, values.numpy(), scale,
                                          reduction, per_class)
        else:
            check_index_range(target, scores.shape[1])
            top = values.sum(dim=-1) * (1.0 / values.shape[-1])
            label = scores.gather(1, target.unsqueeze(1)).squeeze(1)
            hinge = torch.relu((margin[target] if per_class else margin) + top - label)
            loss = reduce(hinge if scale is None else scale * hinge, reduction)
        ctx.save_for_backward(target, indices, hinge)
        return loss

    @staticmethod
    @_first_order
    def backward(ctx, grad):
        grad_scores, grad_margin = _hinge_backward(ctx, grad, *ctx.saved_tensors)
        return grad_scores, None, grad_margin, None, None, None, None, None


def selected_sum_grad(grad: Tensor, indices: Tensor, weight: float, shape: torch.Size) -> Tensor:
    """The gradient, of shape ``shape`` ``(R, C)``, of ``out[r] = weight · Σ_m x[r,
    indices[r, m]]`` for ``grad (R,)``: ``weight · grad[r]`` added at each selected column.
    On the CPU one compiled pass (:func:`smoothtopk.hinge_cpu.selected_grad`), bitwise
    torch's zero-fill and ``scatter_add_``, which other devices run."""
    if compiled_on_cpu(grad) and indices.dtype == torch.int64:
        return torch.from_numpy(hinge_cpu.selected_grad(
            grad.numpy(), indices.numpy(), weight, shape[1], torch.get_num_threads()))
    src = (grad * weight).unsqueeze(-1).expand(indices.shape)
    return grad.new_zeros(shape).scatter_add_(-1, indices, src)


class _SampledKth(Function):
    """``(1/B) Σ_b`` of the draws of the perturbed k-th largest of each row of CPU float32
    or float64 scores ``x (R, C)``, drawn by the kernel of :mod:`smoothtopk.perturbed_cpu`
    and added left to right (:func:`smoothtopk.hinge_cpu.kth_mean_forward`) in the forward:
    one autograd node, no tensor made in between. The backward scatters ``grad[r] / B`` to
    the drawn columns (:func:`smoothtopk.hinge_cpu.selected_grad`); only they are kept, on
    ``ctx`` (the node's own array). The draw's arguments come in one tuple,
    ``(k, ε, B, seed)``."""

    @staticmethod
    def forward(ctx, x, draw):
        k, epsilon, n_samples, seed = draw
        ctx.weight, ctx.num_cols = 1.0 / n_samples, x.shape[1]
        ctx.drawn, means = hinge_cpu.kth_mean_forward(
            x.detach().contiguous().numpy(), k, epsilon, n_samples,
            k + DEFAULT_EXTRA_CANDIDATES, seed, torch.get_num_threads())
        return torch.from_numpy(means)

    @staticmethod
    @_first_order
    def backward(ctx, grad):  # grad: CPU, the dtype of x (autograd casts it)
        return torch.from_numpy(hinge_cpu.selected_grad(
            grad.numpy(), ctx.drawn, ctx.weight, ctx.num_cols, torch.get_num_threads())), None


def cpu_smooth_kth(x2d: Tensor, k: int, epsilon: float, n_samples: int,
                   generator: torch.Generator | None) -> Tensor:
    """:func:`smoothtopk.ops.smooth_kth_largest`'s estimate ``(R,)`` on CPU float32 or
    float64 rows ``x2d (R, C)`` (:func:`compiled_on_cpu`), in one autograd node: the draws
    of :func:`sample_perturbed_kth` from the same generator state, the same values and
    gradients. Arguments assumed validated, ``epsilon > 0``."""
    return _SampledKth.apply(x2d, (k, epsilon, n_samples, _kernel_seed(generator)))


class _SampledNoisedHinge(Function):
    """:class:`_NoisedHinge` whose forward also draws the (K+1)-th largest entries, with the
    kernel of :mod:`smoothtopk.perturbed_cpu` (CPU float32 or float64 scores): one autograd
    node, whose forward draws and computes the hinge in one call
    (:func:`smoothtopk.hinge_cpu.noised_hinge_forward`) and whose backward is one compiled
    pass. The draw's arguments come in one tuple, ``(k, ε, B, seed, scale, reduction,
    per_class)``, and the node keeps its own arrays (the drawn columns, the hinge) on
    ``ctx``: each argument and each saved tensor costs microseconds of every step. The
    caller's ``target`` is saved, and so is the hinge when it is the returned loss, so
    that changing either in place before the backward raises, as in torch's own losses."""

    @staticmethod
    def forward(ctx, scores, target, margin, draw):
        k, epsilon, n_samples, seed, scale, reduction, per_class = draw
        _keep_for_backward(ctx, scores, margin, scale, reduction, per_class)
        indices, hinge, loss = hinge_cpu.noised_hinge_forward(
            scores.detach().contiguous().numpy(), target.numpy(), _margin_array(margin), k,
            epsilon, n_samples, k + DEFAULT_EXTRA_CANDIDATES, seed, scale, per_class,
            reduction, torch.get_num_threads())
        ctx.drawn = indices, hinge
        hinge_tensor = torch.from_numpy(hinge)
        out = _loss_tensor(hinge_tensor, loss, scale, reduction)
        ctx.save_for_backward(target, out if out is hinge_tensor else None)
        return out

    @staticmethod
    @_first_order
    def backward(ctx, grad):
        target, _ = ctx.saved_tensors  # unpacking checks their versions
        grad_scores, grad_margin = _compiled_hinge_backward(ctx, grad, target, *ctx.drawn)
        return grad_scores, None, grad_margin, None


def cpu_noised_hinge_loss(
    scores: Tensor, target: Tensor, k: int, epsilon: float, n_samples: int,
    generator: torch.Generator | None, margin: float | Tensor, scale: float | None,
    reduction: str,
) -> Tensor:
    """The noised hinge of :func:`noised_hinge` on the draws of :func:`sample_perturbed_kth`
    (the k-th largest, ``k`` = K + 1 for the top-K loss), in one autograd node for
    :func:`compiled_noised_hinge` arguments: the same draws from the same generator state,
    the same values and gradients, with less work around the compiled calls.
    ``margin``: a float or per-class ``(C,)`` margins. Arguments assumed validated."""
    return _SampledNoisedHinge.apply(scores, target, margin, (
        k, epsilon, n_samples, _kernel_seed(generator), scale, reduction,
        isinstance(margin, Tensor)))


def compiled_noised_hinge(scores: Tensor, margin: float | Tensor) -> bool:
    """Whether :func:`cpu_noised_hinge_loss` takes these scores and margins: CPU float32 or
    float64 scores, and a float margin or a CPU margin tensor of their dtype."""
    return compiled_on_cpu(scores) and (not isinstance(margin, Tensor) or (
        compiled_on_cpu(margin) and margin.dtype == scores.dtype))


def noised_hinge(
    scores: Tensor, target: Tensor, margin: float | Tensor, values: Tensor, indices: Tensor,
    scale: float | None = None, reduction: str = "none", per_class: bool = False,
) -> Tensor:
    """The noised top-K hinge of each row from the draws of its (K+1)-th largest, fused.

    ``scale · relu(m_r + mean_b(values) − scores[r, target[r]])`` (``scale = None``: no
    factor), reduced by ``reduction``, with ``scores (N, C)``, ``target (N,)``, ``values``/
    ``indices`` ``(N, B)`` as returned by :func:`sample_perturbed_kth`; ``m_r`` is
    ``margin`` (a float) or a differentiable tensor: ``margin[r]`` (``(N,)``) or, with
    ``per_class``, ``margin[target[r]]`` (``(C,)``). Same values and gradients as composing
    :func:`smoothtopk.ops.smooth_kth_largest`, indexing, ``gather``, ``relu`` and the
    reduction (the compiled CPU pass adds a mean or sum in float64: to rounding), in one
    autograd node that writes one gradient buffer. Arguments are assumed
    validated by the caller, except the range of ``target``, checked here (``ValueError``
    on the CPU; a device assertion on a GPU, as ``F.cross_entropy`` does).
    """
    if uses_triton(scores) and scores.dtype == torch.float32:
        hinge = _triton_kernels().NoisedHingeFunction
        return hinge.apply(scores, target, margin, values, indices, scale, reduction, per_class)
    return _NoisedHinge.apply(scores, target, margin, values, indices, scale, reduction,
                              per_class)
