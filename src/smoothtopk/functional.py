"""Top-K losses as functions, after ``torch.nn.functional``.

Every loss takes scores ``input`` of shape ``(N, C)`` (floating point) and class indices
``target`` of shape ``(N,)`` (int64), and returns per-sample losses reduced by
``reduction`` ('none' -> ``(N,)``, 'mean' or 'sum' -> scalar). float16 and bfloat16
inputs are computed in float32 and give a float32 loss (as ``F.cross_entropy`` does under
autocast); the gradient flows back to the input in its own dtype.

Notation: ``s`` is one row of ``input``, ``y`` its label, ``top_K(s)`` the K-th largest
entry of ``s`` and ``top^_{K,ε,B}`` its perturbed Monte-Carlo estimate
(:func:`smoothtopk.ops.smooth_kth_largest`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from smoothtopk._checks import (
    check_class_counts,
    check_input_target,
    check_int,
    check_k,
    check_real,
    check_reduction,
    reduce,
)
from smoothtopk.ops import (
    _check_draw_args,
    _check_smooth_args,
    _smooth_kth_draws,
    kth_largest,
    topk_sum,
)
from smoothtopk.perturbed import (
    compiled_noised_hinge,
    cpu_noised_hinge_loss,
    noised_hinge,
    sample_perturbed_kth,
    triton_noised_hinge_loss,
    uses_triton,
)
from smoothtopk.svm import smooth_topk_svm

__all__ = [
    "calibrated_topk_hinge_loss",
    "class_margins",
    "focal_loss",
    "imbalanced_noised_topk_loss",
    "ldam_loss",
    "noised_topk_loss",
    "smooth_topk_svm",
    "topk_cvx_hinge_loss",
    "topk_error",
    "topk_hinge_loss",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _prepare(
    input: Tensor, target: Tensor, reduction: str, check_range: bool = True
) -> tuple[Tensor, int]:
    """Validate ``input``/``target``/``reduction``; return the input in its compute dtype
    (float32 for float16/bfloat16) and the number of classes. ``check_range=False``: the
    loss's kernel asserts the range of ``target`` itself."""
    _, num_classes = check_input_target(input, target, check_range)
    check_reduction(reduction)
    scores = input.float() if input.dtype in _LOW_PRECISION else input
    return scores, num_classes


def _label_scores(scores: Tensor, target: Tensor) -> Tensor:
    return scores.gather(1, target.unsqueeze(1)).squeeze(1)


def _prepare_noised(input: Tensor, target: Tensor, reduction: str) -> tuple[Tensor, int]:
    """:func:`_prepare` for the noised losses, whose fused hinge checks the range of
    ``target`` itself (:func:`smoothtopk.perturbed.noised_hinge`: in its compiled pass on
    the CPU, asynchronously on a GPU)."""
    return _prepare(input, target, reduction, check_range=False)


def _noised_hinge(
    scores: Tensor, target: Tensor, k: int, epsilon: float, n_samples: int,
    generator: torch.Generator | None, noise: Tensor | None, margins: float | Tensor,
    scale: float | None, reduction: str,
) -> Tensor:
    """``scale · (m_y + top^_{K+1,ε,B}(s) − s_y)_+`` per row, reduced, in one autograd
    node: :func:`smoothtopk.ops.smooth_kth_largest`'s draws fused with the hinge
    (:func:`smoothtopk.perturbed.noised_hinge`). ``margins``: a float, or per-class
    ``(C,)``. On CUDA the draws, the hinge and the reduction are Triton kernels."""
    per_class = isinstance(margins, Tensor)
    if noise is None:
        epsilon, n_samples = _check_draw_args(epsilon, n_samples, generator, scores.device)
        if epsilon > 0.0:  # scores and k validated by the caller
            if uses_triton(scores):
                return triton_noised_hinge_loss(scores, target, k + 1, epsilon, n_samples,
                                                generator, margins, scale, reduction)
            if compiled_noised_hinge(scores, margins):
                return cpu_noised_hinge_loss(scores, target, k + 1, epsilon, n_samples,
                                             generator, margins, scale, reduction)
            values, indices = sample_perturbed_kth(scores, k + 1, epsilon, n_samples,
                                                   generator)
            return noised_hinge(scores, target, margins, values, indices, scale, reduction,
                                per_class)
    x2d, _, k, epsilon, n_samples, noise2d = _check_smooth_args(
        scores, k + 1, epsilon, n_samples, 1, generator, noise
    )
    values, indices = _smooth_kth_draws(x2d, k, epsilon, n_samples, generator, noise2d)
    return noised_hinge(scores, target, margins, values, indices, scale, reduction, per_class)


def _check_margins(margins: object, num_classes: int, like: Tensor) -> Tensor:
    """Per-class margins: a floating tensor of shape ``(C,)``, moved to ``like``."""
    if not isinstance(margins, Tensor):
        raise TypeError(f"margins must be a torch.Tensor of shape ({num_classes},), "
                        f"got {type(margins).__name__}")
    if not margins.is_floating_point():
        raise TypeError(f"margins must be a floating-point tensor, got dtype {margins.dtype}")
    if tuple(margins.shape) != (num_classes,):
        raise ValueError(f"margins must have shape ({num_classes},) (one per class), "
                         f"got {tuple(margins.shape)}")
    return margins.to(device=like.device, dtype=like.dtype)


def class_margins(class_counts: Sequence[float] | Tensor, max_margin: float) -> Tensor:
    """Label-distribution-aware margins ``m_j = max_margin · (n_min / n_j)^{1/4}``.

    ``class_counts``: training count ``n_j`` of every class, shape ``(C,)``, all > 0.
    The rarest class gets ``max_margin``. Returns a float32 tensor ``(C,)`` on the CPU.

    Reference: Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware
    Margin Loss", NeurIPS 2019; used by Garcin et al., ICML 2022.
    """
    counts = check_class_counts(class_counts)
    max_margin = check_real("max_margin", max_margin, 0.0)
    return (max_margin * (counts.min() / counts) ** 0.25).to(torch.float32)


def topk_error(input: Tensor, target: Tensor, k: int, reduction: str = "mean") -> Tensor:
    """0/1 top-K loss ``1{top_K(s) > s_y}``: 1 when the label is not among the K best.

    Ties are in the label's favour (a label tied with the K-th largest score counts as
    correct). ``k`` in ``[1, C]``. Not differentiable; for evaluation.
    """
    scores, num_classes = _prepare(input, target, reduction)
    k = check_k(k, num_classes)
    kth = torch.topk(scores, k, dim=1).values[:, -1]
    loss = (kth > _label_scores(scores, target)).to(scores.dtype)
    return reduce(loss, reduction)


def topk_hinge_loss(
    input: Tensor, target: Tensor, k: int, margin: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """Top-K hinge loss of Lapin et al.: ``(margin + top_K(s_{\\y}) − s_y)_+``.

    ``s_{\\y}`` is ``s`` without coordinate ``y`` (``C − 1`` entries), so ``k`` is in
    ``[1, C − 1]``. Not top-K calibrated.

    Reference: Lapin, Hein, Schiele, "Top-k Multiclass SVM", NeurIPS 2015.
    """
    scores, num_classes = _prepare(input, target, reduction)
    k = check_int("k", k, 1, num_classes - 1)
    margin = check_real("margin", margin)
    others = scores.scatter(1, target.unsqueeze(1), float("-inf"))
    loss = F.relu(margin + kth_largest(others, k, dim=1) - _label_scores(scores, target))
    return reduce(loss, reduction)


def topk_cvx_hinge_loss(
    input: Tensor, target: Tensor, k: int, margin: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """Convex top-K hinge loss of Lapin et al.:
    ``((1/K) Σ_{k≤K} top_k(margin·(1_C − δ_y) + s) − s_y)_+``.

    ``k`` in ``[1, C]``. Reference: Lapin, Hein, Schiele, NeurIPS 2015.
    """
    scores, num_classes = _prepare(input, target, reduction)
    k = check_k(k, num_classes)
    margin = check_real("margin", margin)
    shifted = (scores + margin).scatter_add(
        1, target.unsqueeze(1), scores.new_full((scores.shape[0], 1), -margin)
    )
    loss = F.relu(topk_sum(shifted, k, dim=1) / k - _label_scores(scores, target))
    return reduce(loss, reduction)


def calibrated_topk_hinge_loss(
    input: Tensor, target: Tensor, k: int, margin: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """Top-K calibrated hinge loss of Yang and Koyejo: ``(margin + top_{K+1}(s) − s_y)_+``.

    The (K+1)-th largest is taken over the whole vector, label included, so ``k`` is in
    ``[1, C − 1]``. Reference: Yang and Koyejo, "On the consistency of top-k surrogate
    losses", ICML 2020.
    """
    scores, num_classes = _prepare(input, target, reduction)
    k = check_k(k, num_classes, needs_next=True)
    margin = check_real("margin", margin)
    loss = F.relu(margin + kth_largest(scores, k + 1, dim=1) - _label_scores(scores, target))
    return reduce(loss, reduction)


def noised_topk_loss(
    input: Tensor,
    target: Tensor,
    k: int = 5,
    epsilon: float = 1.0,
    n_samples: int = 5,
    margin: float = 1.0,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Noised balanced top-K loss: ``(margin + top^_{K+1,ε,B}(s) − s_y)_+``.

    ``top^_{K+1,ε,B}(s) = (1/B) Σ_b (s + εZ_b)_(K+1)`` with ``B = n_samples`` draws
    ``Z_b ~ N(0, I_C)`` (over the whole vector, label included); the gradient is
    ``1{margin + top^ ≥ s_y} · ((1/B) Σ_b onehot(argtop_{K+1}(s + εZ_b)) − δ_y)`` with the
    same draws. ``noise`` of shape ``(n_samples, N, C)`` passes the draws explicitly,
    otherwise they are drawn with ``generator``. ``k`` in ``[1, C − 1]``; ``epsilon = 0``
    gives :func:`calibrated_topk_hinge_loss`.

    Reference: Garcin, Servajean, Joly, Salmon, "Stochastic smoothing of the top-K
    calibrated hinge loss for deep imbalanced classification", ICML 2022.
    """
    scores, num_classes = _prepare_noised(input, target, reduction)
    k = check_k(k, num_classes, needs_next=True)
    margin = check_real("margin", margin)
    return _noised_hinge(scores, target, k, epsilon, n_samples, generator, noise, margin, None,
                         reduction)


def imbalanced_noised_topk_loss(
    input: Tensor,
    target: Tensor,
    margins: Tensor,
    k: int = 5,
    epsilon: float = 0.01,
    n_samples: int = 5,
    scale: float = 60.0,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Noised imbalanced top-K loss: ``scale · (m_y + top^_{K+1,ε,B}(s) − s_y)_+``.

    As :func:`noised_topk_loss` with a per-class margin ``margins[y]`` (shape ``(C,)``,
    see :func:`class_margins`) and the hinge multiplied by ``scale > 0`` (meant for
    cosine-classifier scores in ``[−1, 1]``). ``k`` in ``[1, C − 1]``.

    Reference: Garcin et al., ICML 2022 (eq. 1 of the talk; scale as in the authors'
    Pl@ntNet-300K runs).
    """
    scores, num_classes = _prepare_noised(input, target, reduction)
    k = check_k(k, num_classes, needs_next=True)
    margins = _check_margins(margins, num_classes, scores)
    scale = check_real("scale", scale, 0.0, low_inclusive=False)
    return _noised_hinge(scores, target, k, epsilon, n_samples, generator, noise, margins, scale,
                         reduction)


def focal_loss(
    input: Tensor, target: Tensor, gamma: float = 2.0, reduction: str = "mean"
) -> Tensor:
    """Focal loss ``−(1 − p_y)^γ log p_y`` with ``p = softmax(s)``; ``γ = 0`` is
    cross-entropy. ``gamma >= 0``.

    Reference: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
    """
    scores, _ = _prepare(input, target, reduction)
    gamma = check_real("gamma", gamma, 0.0)
    log_p = _label_scores(F.log_softmax(scores, dim=1), target)
    if gamma == 0.0:
        return reduce(-log_p, reduction)
    # 1 - p_y computed as -expm1(log p_y); kept away from 0 so that the power's
    # derivative stays finite for gamma < 1.
    one_minus_p = (-torch.expm1(log_p)).clamp_min(torch.finfo(scores.dtype).tiny)
    return reduce(-one_minus_p.pow(gamma) * log_p, reduction)


def ldam_loss(
    input: Tensor,
    target: Tensor,
    margins: Tensor,
    scale: float = 40.0,
    reduction: str = "mean",
) -> Tensor:
    """LDAM loss: cross-entropy on ``scale · (s − m_y δ_y)``.

    ``margins``: per-class ``m_j`` of shape ``(C,)`` (see :func:`class_margins`);
    ``scale > 0``. Reference: Cao et al., "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss", NeurIPS 2019.
    """
    scores, num_classes = _prepare(input, target, reduction)
    margins = _check_margins(margins, num_classes, scores)
    scale = check_real("scale", scale, 0.0, low_inclusive=False)
    shifted = scores.scatter_add(1, target.unsqueeze(1), -margins[target].unsqueeze(1))
    return F.cross_entropy(scale * shifted, target, reduction=reduction)
