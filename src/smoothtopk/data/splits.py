"""Seeded, class-stratified train/validation splits and the container the loaders return."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._checks import check_real


@dataclass
class ArraySplits:
    """In-memory train/val/test tensors of one dataset.

    ``x_*`` hold the inputs (features, or uint8 images ``(N, C, H, W)``), ``y_*`` int64
    labels in ``[0, num_classes)``. ``info`` carries dataset-specific facts as JSON-ready
    values (for instance the label-noise report) that a datamodule passes on to the user.
    With label noise, ``y_train`` holds the noisy labels and ``y_train_clean`` the clean
    ones (``None`` without noise).
    """

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    class_names: list[str]
    info: dict[str, object] = field(default_factory=dict)
    y_train_clean: Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_counts(self) -> Tensor:
        """Training samples per class, int64 ``(num_classes,)``."""
        return torch.bincount(self.y_train, minlength=self.num_classes)


def stratified_split(
    labels: Tensor, val_fraction: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Split sample indices into (train, val), stratified by class.

    Each class ``c`` with ``n_c`` samples sends ``round(val_fraction * n_c)`` randomly chosen
    samples to validation (at most ``n_c - 1``, so every class keeps one training sample).
    Both index tensors are sorted. CIFAR-100's 50,000 training images with
    ``val_fraction=0.1`` give exactly 45,000 / 5,000 (500 validation images per class).
    """
    check_real("val_fraction", val_fraction, 0.0, 1.0, high_inclusive=False)
    labels = labels.to(torch.int64)
    order = torch.randperm(labels.numel(), generator=generator)
    shuffled = labels[order]
    # stable sort by label keeps the random order inside each class
    by_class = order[torch.sort(shuffled, stable=True).indices]
    sorted_labels = labels[by_class]
    counts = torch.bincount(sorted_labels)
    n_val = torch.clamp(torch.round(counts.double() * val_fraction).long(), max=counts - 1)
    n_val = torch.clamp(n_val, min=0)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(labels.numel()) - starts[sorted_labels]
    is_val = rank < n_val[sorted_labels]
    return by_class[~is_val].sort().values, by_class[is_val].sort().values
