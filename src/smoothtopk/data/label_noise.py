"""Superclass label noise: a label may be swapped for another class of its group.

With probability ``p`` a training label is replaced by a class drawn uniformly from the
classes of its group (superclass, genus). The draw may return the original class, so the
expected fraction of labels actually changed is ``p * (1 - 1/g)`` for groups of size ``g``
(``0.8 p`` for CIFAR-100's 20 superclasses of 5 classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_real


@dataclass
class NoisyLabels:
    """Result of :func:`superclass_label_noise`."""

    labels: Tensor
    """int64 ``(N,)`` labels after noise."""
    changed: Tensor
    """bool ``(N,)``: True where the label differs from the clean one."""
    p: float

    @property
    def fraction_changed(self) -> float:
        return float(self.changed.double().mean()) if self.changed.numel() else 0.0

    def report(self) -> dict[str, float | int]:
        return {
            "noise_p": self.p,
            "noise_num_changed": int(self.changed.sum()),
            "noise_fraction_changed": self.fraction_changed,
        }


def groups_from_pairs(fine: Tensor, coarse: Tensor, num_classes: int) -> Tensor:
    """Group id of each fine class, read off per-sample (fine, coarse) label pairs.

    Raises ``ValueError`` if a fine class appears with two coarse labels or not at all.
    """
    fine = fine.to(torch.int64)
    coarse = coarse.to(torch.int64)
    groups = torch.full((num_classes,), -1, dtype=torch.int64)
    groups[fine] = coarse
    if bool((groups < 0).any()):
        missing = int(torch.nonzero(groups < 0)[0])
        raise ValueError(f"fine class {missing} has no sample, its coarse label is unknown")
    if bool((groups[fine] != coarse).any()):
        bad = int(fine[groups[fine] != coarse][0])
        raise ValueError(f"fine class {bad} appears with more than one coarse label")
    return groups


def block_groups(num_classes: int, block: int = 5) -> Tensor:
    """Groups of ``block`` consecutive class ids: ``class // block``.

    This is the grouping used by the published code of both CIFAR-100 papers
    (``label - label % 5``). CIFAR-100's fine ids are alphabetical, so these blocks are
    *not* its superclasses; offered only to compare with the published numbers.
    """
    return torch.arange(num_classes, dtype=torch.int64) // block


def superclass_label_noise(
    labels: Tensor, groups: Tensor, p: float, generator: torch.Generator
) -> NoisyLabels:
    """Replace each label, with probability ``p``, by a class drawn uniformly from its group.

    Args:
        labels: int64 ``(N,)`` clean labels in ``[0, C)``.
        groups: int64 ``(C,)`` group id of every class.
        p: replacement probability in ``[0, 1]``.
        generator: seeds the draw (the same seed gives the same labels).
    """
    p = check_real("p", p, 0.0, 1.0)
    labels = labels.to(torch.int64)
    groups = groups.to(torch.int64)
    num_groups = int(groups.max()) + 1 if groups.numel() else 0
    sizes = torch.bincount(groups, minlength=num_groups)
    order = torch.argsort(groups, stable=True)  # classes listed group by group
    starts = torch.cumsum(sizes, 0) - sizes
    n = labels.numel()
    flip = torch.rand(n, generator=generator, dtype=torch.float64) < p
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    g = groups[labels]
    pick = torch.clamp((u * sizes[g]).long(), max=sizes[g] - 1)
    replacement = order[starts[g] + pick]
    noisy = torch.where(flip, replacement, labels)
    return NoisyLabels(labels=noisy, changed=noisy != labels, p=p)
