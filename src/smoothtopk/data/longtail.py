"""Long-tailed class profiles: exponential counts, subsampling, and the Lorenz share."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_int, check_real


def exponential_profile(n_max: int, num_classes: int, rho: float) -> Tensor:
    """Counts ``n_i = round(n_max * rho ** (-i / (C - 1)))`` for ranks ``i = 0 .. C-1``.

    The head class (rank 0) has ``n_max`` samples, the rarest ``n_max / rho`` (at least 1).
    ``rho`` is the imbalance ratio (``rho = 1`` gives balanced counts). This is the
    profile of the long-tailed CIFAR / Fashion-MNIST benchmarks (Cao et al., 2019).
    """
    check_int("n_max", n_max, 1)
    check_int("num_classes", num_classes, 1)
    rho = check_real("rho", rho, 1.0)
    if num_classes == 1:
        return torch.tensor([n_max], dtype=torch.int64)
    i = torch.arange(num_classes, dtype=torch.float64)
    counts = torch.round(n_max * rho ** (-i / (num_classes - 1)))
    return counts.clamp(min=1).to(torch.int64)


def subsample_per_class(
    labels: Tensor, counts: Tensor, generator: torch.Generator
) -> Tensor:
    """Sorted indices keeping ``counts[c]`` randomly chosen samples of each class ``c``.

    Raises ``ValueError`` if a class has fewer samples than requested.
    """
    labels = labels.to(torch.int64)
    counts = counts.to(torch.int64)
    available = torch.bincount(labels, minlength=counts.numel())
    if bool((available[: counts.numel()] < counts).any()):
        c = int(torch.nonzero(available[: counts.numel()] < counts)[0])
        raise ValueError(
            f"class {c} has {int(available[c])} samples, {int(counts[c])} were requested"
        )
    order = torch.randperm(labels.numel(), generator=generator)
    by_class = order[torch.sort(labels[order], stable=True).indices]
    sorted_labels = labels[by_class]
    starts = torch.cumsum(available, 0) - available
    rank = torch.arange(labels.numel()) - starts[sorted_labels]
    wanted = torch.zeros_like(available)
    wanted[: counts.numel()] = counts
    return by_class[rank < wanted[sorted_labels]].sort().values


def share_of_rarest(counts: Tensor, fraction: float = 0.8) -> float:
    """Share of all samples held by the ``fraction`` rarest classes (a Lorenz-curve point).

    Pl@ntNet-300K: the 80% rarest species hold about 11% of the images.
    ``floor(fraction * C)`` classes are counted.
    """
    fraction = check_real("fraction", fraction, 0.0, 1.0)
    counts = torch.as_tensor(counts, dtype=torch.float64).flatten()
    m = math.floor(fraction * counts.numel())
    total = float(counts.sum())
    return float(torch.sort(counts).values[:m].sum()) / total if total > 0 else 0.0
