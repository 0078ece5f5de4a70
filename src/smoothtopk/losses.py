"""Top-K losses as ``nn.Module`` classes, and the ``build_loss`` registry.

Each class is a thin wrapper of the function of the same loss in
:mod:`smoothtopk.functional` (formulas, shapes and references are documented there).
``forward(input (N, C), target (N,))`` returns the loss reduced by ``reduction``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from smoothtopk import functional as STF
from smoothtopk._checks import check_int, check_real, check_reduction
from smoothtopk.svm import SmoothTopKSVMLoss, smooth_top1_svm_loss

__all__ = [
    "LOSSES",
    "CalibratedTopKHingeLoss",
    "FocalLoss",
    "ImbalancedNoisedTopKLoss",
    "LDAMLoss",
    "NoisedTopKLoss",
    "SmoothTopKSVMLoss",
    "TopKCvxHingeLoss",
    "TopKHingeLoss",
    "build_loss",
    "loss_requires_class_counts",
]


def _check_counts_match(margins: Tensor, input: Tensor) -> None:
    """The per-class margins built from ``class_counts`` must cover the input's classes."""
    if isinstance(input, Tensor) and input.dim() == 2 and input.shape[1] != margins.numel():
        raise ValueError(
            f"class_counts has {margins.numel()} entries but input has {input.shape[1]} "
            "classes; class_counts must have one entry per class"
        )


class _HingeLoss(nn.Module):
    """Common constructor of the deterministic top-K hinge losses."""

    def __init__(self, k: int = 5, margin: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        self.k = check_int("k", k, 1)
        self.margin = check_real("margin", margin)
        self.reduction = check_reduction(reduction)

    def extra_repr(self) -> str:
        return f"k={self.k}, margin={self.margin}, reduction={self.reduction!r}"


class TopKHingeLoss(_HingeLoss):
    """Lapin et al.'s top-K hinge ``(margin + top_K(s_{\\y}) − s_y)_+``
    (:func:`smoothtopk.functional.topk_hinge_loss`)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return STF.topk_hinge_loss(input, target, self.k, self.margin, self.reduction)


class TopKCvxHingeLoss(_HingeLoss):
    """Lapin et al.'s convex top-K hinge
    (:func:`smoothtopk.functional.topk_cvx_hinge_loss`)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return STF.topk_cvx_hinge_loss(input, target, self.k, self.margin, self.reduction)


class CalibratedTopKHingeLoss(_HingeLoss):
    """Yang and Koyejo's top-K calibrated hinge ``(margin + top_{K+1}(s) − s_y)_+``
    (:func:`smoothtopk.functional.calibrated_topk_hinge_loss`)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return STF.calibrated_topk_hinge_loss(input, target, self.k, self.margin,
                                              self.reduction)


class NoisedTopKLoss(nn.Module):
    """Noised balanced top-K loss of Garcin et al. (ICML 2022):
    ``(margin + top^_{K+1,ε,B}(s) − s_y)_+`` (:func:`smoothtopk.functional.noised_topk_loss`).

    Draws ``n_samples`` fresh noise vectors per row and call, with ``generator`` if given.
    """

    def __init__(
        self,
        k: int = 5,
        epsilon: float = 1.0,
        n_samples: int = 5,
        margin: float = 1.0,
        reduction: str = "mean",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.k = check_int("k", k, 1)
        self.epsilon = check_real("epsilon", epsilon, 0.0)
        self.n_samples = check_int("n_samples", n_samples, 1)
        self.margin = check_real("margin", margin)
        self.reduction = check_reduction(reduction)
        self.generator = generator

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return STF.noised_topk_loss(
            input, target, self.k, self.epsilon, self.n_samples, self.margin,
            generator=self.generator, reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (f"k={self.k}, epsilon={self.epsilon}, n_samples={self.n_samples}, "
                f"margin={self.margin}, reduction={self.reduction!r}")


class ImbalancedNoisedTopKLoss(nn.Module):
    """Noised imbalanced top-K loss of Garcin et al. (ICML 2022):
    ``scale · (m_y + top^_{K+1,ε,B}(s) − s_y)_+`` with ``m_y = max_margin·(n_min/n_y)^{1/4}``
    from the training ``class_counts`` (kept as the buffer ``margins``)
    (:func:`smoothtopk.functional.imbalanced_noised_topk_loss`).
    """

    margins: Tensor

    def __init__(
        self,
        class_counts: Sequence[float] | Tensor,
        k: int = 5,
        epsilon: float = 0.01,
        n_samples: int = 5,
        max_margin: float = 0.2,
        scale: float = 60.0,
        reduction: str = "mean",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("margins", STF.class_margins(class_counts, max_margin))
        self.k = check_int("k", k, 1)
        self.epsilon = check_real("epsilon", epsilon, 0.0)
        self.n_samples = check_int("n_samples", n_samples, 1)
        self.max_margin = float(max_margin)
        self.scale = check_real("scale", scale, 0.0, low_inclusive=False)
        self.reduction = check_reduction(reduction)
        self.generator = generator

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        _check_counts_match(self.margins, input)
        return STF.imbalanced_noised_topk_loss(
            input, target, self.margins, self.k, self.epsilon, self.n_samples, self.scale,
            generator=self.generator, reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (f"num_classes={self.margins.numel()}, k={self.k}, epsilon={self.epsilon}, "
                f"n_samples={self.n_samples}, max_margin={self.max_margin}, "
                f"scale={self.scale}, reduction={self.reduction!r}")


class FocalLoss(nn.Module):
    """Focal loss ``−(1 − p_y)^γ log p_y`` (:func:`smoothtopk.functional.focal_loss`)."""

    def __init__(self, gamma: float = 2.0, reduction: str = "mean") -> None:
        super().__init__()
        self.gamma = check_real("gamma", gamma, 0.0)
        self.reduction = check_reduction(reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return STF.focal_loss(input, target, self.gamma, self.reduction)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, reduction={self.reduction!r}"


class LDAMLoss(nn.Module):
    """LDAM loss: cross-entropy on ``scale · (s − m_y δ_y)`` with
    ``m_y = max_margin·(n_min/n_y)^{1/4}`` from the training ``class_counts`` (buffer
    ``margins``) (:func:`smoothtopk.functional.ldam_loss`)."""

    margins: Tensor

    def __init__(
        self,
        class_counts: Sequence[float] | Tensor,
        max_margin: float = 0.2,
        scale: float = 40.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.register_buffer("margins", STF.class_margins(class_counts, max_margin))
        self.max_margin = float(max_margin)
        self.scale = check_real("scale", scale, 0.0, low_inclusive=False)
        self.reduction = check_reduction(reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        _check_counts_match(self.margins, input)
        return STF.ldam_loss(input, target, self.margins, self.scale, self.reduction)

    def extra_repr(self) -> str:
        return (f"num_classes={self.margins.numel()}, max_margin={self.max_margin}, "
                f"scale={self.scale}, reduction={self.reduction!r}")


#: Loss factories by the names of the paper's command lines. To add a loss, add an entry
#: ``name: factory``; ``build_loss`` and ``loss_requires_class_counts`` read the factory's
#: signature.
LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": nn.CrossEntropyLoss,
    "focal": FocalLoss,
    "ldam": LDAMLoss,
    "hinge": TopKHingeLoss,
    "cvx_hinge": TopKCvxHingeLoss,
    "cal_hinge": CalibratedTopKHingeLoss,
    "bal_topk": NoisedTopKLoss,
    "imbal_topk": ImbalancedNoisedTopKLoss,
    "smooth_topk": SmoothTopKSVMLoss,
    "smooth_top1": smooth_top1_svm_loss,
}


def _factory(name: str) -> Callable[..., nn.Module]:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; accepted names: {sorted(LOSSES)}")
    return LOSSES[name]


def _parameters(factory: Callable[..., nn.Module]) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(factory).parameters)


def build_loss(name: str, **kwargs: object) -> nn.Module:
    """Build the loss registered as ``name`` in :data:`LOSSES` with ``kwargs``.

    Strict: an unknown name raises ``ValueError`` and an unknown or missing keyword
    argument raises ``TypeError``, both listing what is accepted. Losses with per-class
    margins need ``class_counts`` (see :func:`loss_requires_class_counts`).
    """
    factory = _factory(name)
    params = _parameters(factory)
    accepted = [p for p, v in params.items()
                if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"loss {name!r} got unknown argument(s) {unknown}; "
                        f"accepted: {accepted}")
    missing = [p for p in accepted
               if params[p].default is inspect.Parameter.empty and p not in kwargs]
    if missing:
        raise TypeError(f"loss {name!r} needs argument(s) {missing}; accepted: {accepted}")
    return factory(**kwargs)


def loss_requires_class_counts(name: str) -> bool:
    """Whether ``build_loss(name, ...)`` takes the training ``class_counts``."""
    return "class_counts" in _parameters(_factory(name))
