"""Top-K accuracy metrics: overall, macro-average, per class and by training-frequency bin.

For scores ``s_i`` (one row of ``input``) and true label ``y_i`` the prediction is a hit at
level K when ``y_i`` is among the K best-scored classes.  With ``C_j`` the evaluated samples
of class ``j`` and ``J`` the classes present in the evaluated split (``|C_j| > 0``):

* top-K accuracy          ``(1/n) Σ_i 1[y_i ∈ top-K(s_i)]``
* per-class accuracy      ``a_j = (1/|C_j|) Σ_{i∈C_j} 1[y_i ∈ top-K(s_i)]`` (NaN if ``|C_j| = 0``)
* macro-average accuracy  ``(1/|J|) Σ_{j∈J} a_j``

Reference: Garcin et al., "Stochastic smoothing of the top-K calibrated hinge loss for deep
imbalanced classification", ICML 2022 (metrics and frequency bins of its Pl@ntNet-300K study).

Conventions shared by every function and by :class:`TopKMetrics`:

* **Ties** are resolved deterministically, in favour of the true class: ``y`` is in the top K
  iff fewer than K classes score *strictly* higher than ``s_y``.  This is the complement of
  the 0/1 loss ``1[top_K(s) > s_y]`` and does not depend on the order in which
  ``torch.topk`` returns tied entries (torchmetrics uses ``torch.topk``'s choice; both agree
  whenever the K-th and (K+1)-th scores differ).  A NaN score counts as larger than every
  number; a NaN score of the true class is always a miss.
* **Absent classes** (no evaluated sample) get NaN per-class accuracy and are left out of the
  macro average; the macro average is NaN when no class is present (empty input).
* ``k`` is an int (the result is a scalar tensor, or has shape ``(C,)`` / ``(B,)``) or a
  sequence of ints (the result gets a leading axis of length ``len(k)``).  Every K is in
  ``[1, C]``.
* Accuracies are float32 tensors on the device of ``input``; counts are int64.  Nothing
  here synchronises a CUDA device with the host except :func:`accuracy_by_frequency_bin`
  and :meth:`TopKMetrics.frequency_bins`, which read ``class_counts`` on the host.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from smoothtopk._checks import (
    check_class_counts,
    check_input_target,
    check_int,
    check_k,
    check_real,
    check_scores,
    check_target,
)

__all__ = [
    "DEFAULT_FREQUENCY_EDGES",
    "FrequencyBinAccuracy",
    "TopKMetrics",
    "accuracy_by_frequency_bin",
    "macro_topk_accuracy",
    "per_class_topk_accuracy",
    "topk_accuracy",
]

DEFAULT_FREQUENCY_EDGES: tuple[float, ...] = (0.0, 10.0, 50.0, 500.0, 2000.0, math.inf)
"""Bin edges in training images per class used by the seed: 0–10, 10–50, 50–500, 500–2000, >2000."""

KArg = int | Sequence[int]


# --------------------------------------------------------------------------- core


def _as_ks(k: object, num_classes: int, name: str = "k") -> tuple[int, ...]:
    """Validate an int or a sequence of ints, each in ``[1, num_classes]``."""
    if isinstance(k, int) and not isinstance(k, bool):
        return (check_k(k, num_classes, name=name),)
    if isinstance(k, (str, bytes)) or not isinstance(k, Iterable):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {type(k).__name__}")
    ks = tuple(k)
    if not ks:
        raise ValueError(f"{name} must contain at least one value, got an empty sequence")
    return tuple(check_k(v, num_classes, name=f"{name}[{i}]") for i, v in enumerate(ks))


def _true_class_rank(input: Tensor, target: Tensor) -> Tensor:
    """``(N,)`` number of classes scored strictly above the true class (NaN counts as above).

    A sample whose true-class score is NaN gets rank ``C`` (a miss at every K).
    """
    true = input.gather(1, target.unsqueeze(1))
    rank = ((input > true) | input.isnan()).sum(1)
    return torch.where(true.squeeze(1).isnan(), input.shape[1], rank)


def _hits(input: Tensor, target: Tensor, ks: tuple[int, ...]) -> Tensor:
    """``(len(ks), N)`` bool: is the true class in the top-K, for each K."""
    rank = _true_class_rank(input, target)
    return torch.stack([rank < k for k in ks])


def _class_tallies(hits: Tensor, target: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class hit counts ``(len(ks), C)`` and sample counts ``(C,)``, both int64."""
    correct = hits.new_zeros((hits.shape[0], num_classes), dtype=torch.int64)
    correct.index_add_(1, target, hits.long())
    support = target.new_zeros(num_classes, dtype=torch.int64)
    support.index_add_(0, target, torch.ones_like(target))
    return correct, support


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` in float32, NaN where ``den == 0``."""
    num, den = num.float(), den.float()
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, math.nan))


def _micro(correct: Tensor, support: Tensor) -> Tensor:
    return _ratio(correct.sum(-1), support.sum())


def _per_class(correct: Tensor, support: Tensor) -> Tensor:
    return _ratio(correct, support)


def _macro(correct: Tensor, support: Tensor) -> Tensor:
    return _per_class(correct, support).nanmean(-1)


def _tallies(
    input: Tensor, target: Tensor, k: object, num_classes: int | None = None
) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Validate arguments and return per-class hit counts, per-class support and the K's."""
    _, c = check_input_target(input, target)
    if num_classes is not None:
        check_int("num_classes", num_classes, 1)
        if num_classes != c:
            raise ValueError(
                f"num_classes must equal the number of columns of input ({c}), got {num_classes}"
            )
    ks = _as_ks(k, c)
    correct, support = _class_tallies(_hits(input, target, ks), target, c)
    return correct, support, ks


def _squeeze_k(value: Tensor, k: object) -> Tensor:
    return value[0] if isinstance(k, int) else value


# --------------------------------------------------------------------------- functional


def topk_accuracy(input: Tensor, target: Tensor, k: KArg) -> Tensor:
    """Top-K accuracy ``(1/n) Σ_i 1[y_i ∈ top-K(s_i)]`` (micro average over samples).

    Args:
        input: scores ``(N, C)``, floating point.
        target: class indices ``(N,)``, int64 in ``[0, C)``.
        k: an int in ``[1, C]`` or a sequence of them.

    Returns:
        float32 scalar tensor for an int ``k``, ``(len(k),)`` for a sequence; NaN when
        ``N = 0``.  Ties are counted in favour of the true class (module docstring).
    """
    correct, support, _ = _tallies(input, target, k)
    return _squeeze_k(_micro(correct, support), k)


def per_class_topk_accuracy(
    input: Tensor, target: Tensor, k: KArg, num_classes: int | None = None
) -> Tensor:
    """Top-K accuracy of each class, ``a_j = (1/|C_j|) Σ_{i∈C_j} 1[y_i ∈ top-K(s_i)]``.

    Args:
        input: scores ``(N, C)``, floating point.
        target: class indices ``(N,)``, int64 in ``[0, C)``.
        k: an int in ``[1, C]`` or a sequence of them.
        num_classes: optional; when given it must equal ``C``.

    Returns:
        float32 ``(C,)`` for an int ``k``, ``(len(k), C)`` for a sequence.  Classes absent
        from ``target`` get NaN.
    """
    correct, support, _ = _tallies(input, target, k, num_classes)
    return _squeeze_k(_per_class(correct, support), k)


def macro_topk_accuracy(
    input: Tensor, target: Tensor, k: KArg, num_classes: int | None = None
) -> Tensor:
    """Macro-average top-K accuracy ``(1/|J|) Σ_{j∈J} a_j`` over the present classes ``J``.

    Classes absent from the evaluated split (no sample in ``target``) are left out of the
    average rather than counted as 0; this is the definition of the seed with ``L``
    replaced by the number of classes present.  Equals
    ``torchmetrics.classification.MulticlassAccuracy(top_k=K, average='macro')`` when every
    class is present and there are no ties at the K-th score.

    Args:
        input: scores ``(N, C)``, floating point.
        target: class indices ``(N,)``, int64 in ``[0, C)``.
        k: an int in ``[1, C]`` or a sequence of them.
        num_classes: optional; when given it must equal ``C``.

    Returns:
        float32 scalar tensor for an int ``k``, ``(len(k),)`` for a sequence; NaN when no
        class is present.
    """
    correct, support, _ = _tallies(input, target, k, num_classes)
    return _squeeze_k(_macro(correct, support), k)


# --------------------------------------------------------------------------- frequency bins


@dataclass(frozen=True)
class FrequencyBinAccuracy:
    """Top-K accuracy of groups of classes binned by their *training* sample count.

    Bin ``b`` holds the classes whose training count ``n`` satisfies
    ``edges[b] < n <= edges[b+1]`` (the first bin also includes ``n = edges[0]``), so with the
    default edges a class with exactly 10 training images is in ``0-10`` and one with 2001 in
    ``>2000``.  ``B = len(edges) - 1``; ``K`` below is ``len(k)`` when ``k`` is a sequence
    (the leading axis is absent for an int ``k``).

    Attributes:
        edges: the bin edges, increasing.
        k: the K (int) or K's (tuple) the accuracies are computed for.
        num_classes: int64 ``(B,)``, classes whose training count falls in the bin.
        num_present_classes: int64 ``(B,)``, those of them present in the evaluated split.
        num_samples: int64 ``(B,)``, evaluated samples whose true class is in the bin.
        accuracy: float32 ``([K,] B)``, top-K accuracy of those samples (micro); NaN for a bin
            without evaluated samples.
        macro_accuracy: float32 ``([K,] B)``, mean per-class top-K accuracy over the bin's
            present classes (absent classes left out); NaN for a bin without present class.
    """

    edges: tuple[float, ...]
    k: int | tuple[int, ...]
    num_classes: Tensor
    num_present_classes: Tensor
    num_samples: Tensor
    accuracy: Tensor
    macro_accuracy: Tensor

    @property
    def labels(self) -> list[str]:
        """Readable bin names, e.g. ``['0-10', '10-50', '50-500', '500-2000', '>2000']``."""
        labels = [f"{lo:g}-{hi:g}" for lo, hi in itertools.pairwise(self.edges)]
        if math.isinf(self.edges[-1]):
            labels[-1] = f">{self.edges[-2]:g}"
        return labels

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists, floats, ints; NaN stays NaN), e.g. for JSON."""
        return {
            "edges": list(self.edges),
            "labels": self.labels,
            "k": list(self.k) if isinstance(self.k, tuple) else self.k,
            "num_classes": self.num_classes.tolist(),
            "num_present_classes": self.num_present_classes.tolist(),
            "num_samples": self.num_samples.tolist(),
            "accuracy": self.accuracy.tolist(),
            "macro_accuracy": self.macro_accuracy.tolist(),
        }


def _check_edges(edges: object) -> tuple[float, ...]:
    if isinstance(edges, (str, bytes)) or not isinstance(edges, Iterable):
        raise TypeError(f"edges must be a sequence of numbers, got {type(edges).__name__}")
    values = tuple(check_real(f"edges[{i}]", e) for i, e in enumerate(edges))
    if len(values) < 2:
        raise ValueError(f"edges must have at least 2 values (one bin), got {len(values)}")
    if any(lo >= hi for lo, hi in itertools.pairwise(values)):
        raise ValueError(f"edges must be strictly increasing, got {values}")
    return values


def _frequency_bins(
    correct: Tensor,
    support: Tensor,
    class_counts: Sequence[float] | Tensor,
    edges: object,
    k: int | tuple[int, ...],
) -> FrequencyBinAccuracy:
    """Bin per-class tallies ``correct (len(ks), C)``, ``support (C,)`` by training count."""
    edges = _check_edges(edges)
    counts = check_class_counts(class_counts, support.shape[0], allow_zero=True)
    if bool((counts < edges[0]).any()) or bool((counts > edges[-1]).any()):
        raise ValueError(
            f"class_counts must lie within the edges [{edges[0]}, {edges[-1]}], got values in "
            f"[{counts.min().item():g}, {counts.max().item():g}]"
        )
    inner = torch.tensor(edges[1:-1], dtype=torch.float64)
    bin_of = torch.bucketize(counts, inner, right=False).to(support.device)  # (C,)
    bins = torch.arange(len(edges) - 1, device=support.device)
    member = bins.unsqueeze(1) == bin_of.unsqueeze(0)  # (B, C)
    present = member & (support > 0)

    bin_correct = (member.unsqueeze(0) * correct.unsqueeze(1)).sum(-1)  # (len(ks), B)
    num_samples = (member * support).sum(-1)
    num_present = present.sum(-1)
    per_class = _per_class(correct, support).unsqueeze(1)  # (len(ks), 1, C)
    macro_sum = torch.where(present, per_class, torch.zeros_like(per_class)).sum(-1)

    accuracy, macro = _ratio(bin_correct, num_samples), _ratio(macro_sum, num_present)
    if isinstance(k, int):
        accuracy, macro = accuracy[0], macro[0]
    return FrequencyBinAccuracy(
        edges=edges,
        k=k,
        num_classes=member.sum(-1),
        num_present_classes=num_present,
        num_samples=num_samples,
        accuracy=accuracy,
        macro_accuracy=macro,
    )


def accuracy_by_frequency_bin(
    input: Tensor,
    target: Tensor,
    class_counts: Sequence[float] | Tensor,
    k: KArg,
    edges: Sequence[float] = DEFAULT_FREQUENCY_EDGES,
) -> FrequencyBinAccuracy:
    """Top-K accuracy by bin of training frequency (the seed's "mean bin accuracy").

    Classes are grouped by their number of *training* samples ``class_counts`` (seed bins
    0–10, 10–50, 50–500, 500–2000, >2000; a count equal to an inner edge goes to the lower
    bin).  For each bin the result gives the number of classes, of present classes and of
    evaluated samples, the micro top-K accuracy of those samples and the macro average of
    per-class accuracy over the bin's present classes: classes absent from the evaluated
    split are left out of that average.  See :class:`FrequencyBinAccuracy`.

    Args:
        input: scores ``(N, C)``, floating point.
        target: class indices ``(N,)``, int64 in ``[0, C)``.
        class_counts: training samples per class, ``(C,)``, finite and ``>= 0``, each within
            ``[edges[0], edges[-1]]``.
        k: an int in ``[1, C]`` or a sequence of them.
        edges: strictly increasing bin edges (``inf`` allowed as the last one).
    """
    correct, support, ks = _tallies(input, target, k)
    return _frequency_bins(correct, support, class_counts, edges, k if isinstance(k, int) else ks)


# --------------------------------------------------------------------------- streaming


class TopKMetrics(Metric):
    """Top-K, macro-average top-K and per-class top-K accuracy for several K in one pass.

    Accumulates over batches (``update(preds, target)``) the per-class hit counts for every
    K and the per-class sample counts; both states are summed across processes
    (``dist_reduce_fx="sum"``), so the result of ``compute()`` is exact under DDP.  Same
    conventions as the functional metrics of this module (ties in favour of the true class;
    classes absent from the evaluated data are NaN per class and left out of the macro
    average).

    Args:
        num_classes: number of classes ``C``.
        ks: the K's to report, each in ``[1, C]``, without repetition.
        **kwargs: forwarded to :class:`torchmetrics.Metric`.

    ``compute()`` returns a dict with, for each K in ``ks``: ``top{K}`` and ``macro_top{K}``
    (float32 scalars) and ``per_class_top{K}`` (float32 ``(C,)``); plus ``class_support``
    (int64 ``(C,)``, evaluated samples per class).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    support: Tensor

    def __init__(
        self, num_classes: int, ks: Sequence[int] = (1, 3, 5, 10), **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = check_int("num_classes", num_classes, 1)
        if isinstance(ks, int):
            raise TypeError("ks must be a sequence of ints, e.g. (1, 5); got an int")
        self.ks = _as_ks(ks, num_classes, name="ks")
        if len(set(self.ks)) != len(self.ks):
            raise ValueError(f"ks must not repeat a value, got {self.ks}")
        self.add_state(
            "correct", torch.zeros(len(self.ks), num_classes, dtype=torch.int64),
            dist_reduce_fx="sum",
        )
        self.add_state("support", torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch: ``preds`` scores ``(N, C)`` (float), ``target`` ``(N,)`` int64."""
        check_scores(preds, name="preds")
        if preds.shape[1] != self.num_classes:
            raise ValueError(
                f"preds must have num_classes={self.num_classes} columns, got shape "
                f"{tuple(preds.shape)}"
            )
        check_target(target, preds.shape[0], self.num_classes)
        correct, support = _class_tallies(_hits(preds, target, self.ks), target, self.num_classes)
        self.correct += correct
        self.support += support

    def compute(self) -> dict[str, Tensor]:
        micro = _micro(self.correct, self.support)
        macro = _macro(self.correct, self.support)
        per_class = _per_class(self.correct, self.support)
        out: dict[str, Tensor] = {}
        for i, k in enumerate(self.ks):
            out[f"top{k}"] = micro[i]
            out[f"macro_top{k}"] = macro[i]
            out[f"per_class_top{k}"] = per_class[i]
        out["class_support"] = self.support.clone()
        return out

    def frequency_bins(
        self,
        class_counts: Sequence[float] | Tensor,
        edges: Sequence[float] = DEFAULT_FREQUENCY_EDGES,
    ) -> FrequencyBinAccuracy:
        """Accumulated accuracies by bin of training count (see :func:`accuracy_by_frequency_bin`).

        The states are synchronised across processes first, as ``compute()`` does.  The
        result has a leading axis of length ``len(ks)``.
        """
        already = self._is_synced
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn,
            should_sync=self._to_sync and not already,
            should_unsync=self._should_unsync and not already,
        ):
            return _frequency_bins(self.correct, self.support, class_counts, edges, self.ks)

