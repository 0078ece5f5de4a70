"""Metrics of set-valued predictions given as boolean membership matrices ``sets (N, C)``.

With ``Γ(x_i) = {j : sets[i, j]}``, true labels ``y_i``, ``C_j`` the evaluated samples of
class ``j`` and ``J`` the classes present in the evaluated split:

* coverage (set accuracy)  ``(1/n) Σ_i 1[y_i ∈ Γ(x_i)]``;
* per-class coverage       ``c_j = (1/|C_j|) Σ_{i∈C_j} 1[y_i ∈ Γ(x_i)]`` (NaN if absent);
* macro-average coverage   ``(1/|J|) Σ_{j∈J} c_j``;
* set sizes ``|Γ(x_i)|``, their mean and distribution;
* coverage by bin of training frequency (the binning of
  :func:`smoothtopk.metrics.accuracy_by_frequency_bin`, reused).

For :class:`smoothtopk.sets.TopKSets` these are exactly the top-K metrics of
:mod:`smoothtopk.metrics` (up to how ties at the K-th score are broken).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._checks import check_target
from .metrics import DEFAULT_FREQUENCY_EDGES, _class_tallies, _frequency_bins, _ratio

__all__ = [
    "coverage",
    "coverage_by_frequency_bin",
    "macro_coverage",
    "per_class_coverage",
    "set_size_distribution",
    "set_size_summary",
    "set_sizes",
]


def _check_sets(sets: Tensor, name: str = "sets") -> tuple[int, int]:
    if not isinstance(sets, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(sets).__name__}")
    if sets.dtype != torch.bool:
        raise TypeError(f"{name} must be a boolean membership tensor, got dtype {sets.dtype}")
    if sets.dim() != 2:
        raise ValueError(f"{name} must be 2-D of shape (N, C), got shape {tuple(sets.shape)}")
    return sets.shape[0], sets.shape[1]


def _hits(sets: Tensor, target: Tensor) -> Tensor:
    n, c = _check_sets(sets)
    check_target(target, n, c)
    return sets.gather(1, target[:, None]).squeeze(1)


def set_sizes(sets: Tensor) -> Tensor:
    """``|Γ(x_i)|`` for every sample: int64 ``(N,)``."""
    _check_sets(sets)
    return sets.sum(1)


def coverage(sets: Tensor, target: Tensor) -> Tensor:
    """Coverage ``(1/n) Σ_i 1[y_i ∈ Γ(x_i)]``: float32 scalar, NaN when ``N = 0``."""
    hits = _hits(sets, target)
    return _ratio(hits.sum(), torch.tensor(hits.numel(), device=hits.device))


def per_class_coverage(sets: Tensor, target: Tensor) -> Tensor:
    """Coverage of each class: float32 ``(C,)``, NaN for classes absent from ``target``."""
    hits = _hits(sets, target)
    correct, support = _class_tallies(hits[None], target, sets.shape[1])
    return _ratio(correct[0], support)


def macro_coverage(sets: Tensor, target: Tensor) -> Tensor:
    """Mean per-class coverage over the classes present in ``target`` (float32 scalar)."""
    return per_class_coverage(sets, target).nanmean()


def set_size_distribution(sets: Tensor) -> Tensor:
    """Number of samples with each set size ``0..C``: int64 ``(C + 1,)``."""
    return torch.bincount(set_sizes(sets), minlength=sets.shape[1] + 1)


def set_size_summary(sets: Tensor) -> dict[str, float]:
    """Mean, standard deviation, median, min, max of set sizes and the share of empty sets.

    Plain Python floats (NaN for ``N = 0``); synchronises with the device.
    """
    sizes = set_sizes(sets).double()
    if sizes.numel() == 0:
        nan = float("nan")
        return dict.fromkeys(("mean", "std", "median", "min", "max", "empty"), nan)
    return {
        "mean": float(sizes.mean()),
        "std": float(sizes.std(unbiased=False)),
        "median": float(sizes.median()),
        "min": float(sizes.min()),
        "max": float(sizes.max()),
        "empty": float((sizes == 0).double().mean()),
    }


def coverage_by_frequency_bin(
    sets: Tensor,
    target: Tensor,
    class_counts: Sequence[float] | Tensor,
    edges: Sequence[float] = DEFAULT_FREQUENCY_EDGES,
) -> dict[str, Any]:
    """Coverage by bin of *training* count per class (seed bins 0–10, …, >2000).

    Same binning as :func:`smoothtopk.metrics.accuracy_by_frequency_bin` (a count equal to
    an inner edge goes to the lower bin). Returns plain Python values: ``labels``,
    ``edges``, ``num_classes``, ``num_present_classes``, ``num_samples`` per bin,
    ``coverage`` (micro, over the bin's evaluated samples) and ``macro_coverage`` (mean
    per-class coverage over the bin's present classes), NaN for an empty bin; plus
    ``mean_set_size`` of the bin's samples.
    """
    hits = _hits(sets, target)
    c = sets.shape[1]
    correct, support = _class_tallies(hits[None], target, c)
    bins = _frequency_bins(correct, support, class_counts, edges, 1).to_dict()
    size_sum, _ = _class_tallies(set_sizes(sets)[None], target, c)
    size_bins = _frequency_bins(size_sum, support, class_counts, edges, 1)
    return {
        "labels": bins["labels"],
        "edges": bins["edges"],
        "num_classes": bins["num_classes"],
        "num_present_classes": bins["num_present_classes"],
        "num_samples": bins["num_samples"],
        "coverage": bins["accuracy"],
        "macro_coverage": bins["macro_accuracy"],
        "mean_set_size": size_bins.accuracy.tolist(),
    }
