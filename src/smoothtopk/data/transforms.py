"""Batched image transforms on tensors: crop/flip augmentation, normalisation, collation.

All functions work on a whole batch ``(N, C, H, W)`` at once, on any device; randomness is
per sample and comes from an optional ``torch.Generator`` (the global RNG otherwise, which
DataLoader workers seed individually).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._checks import check_int

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a 4-D tensor (N, C, H, W), got {shape}")


def random_crop_flip(
    images: Tensor, padding: int = 4, flip: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random crop of the original size from the zero-padded images, then random h-flip.

    Each sample gets its own offsets in ``[0, 2 * padding]`` and its own coin for the
    horizontal flip (probability 1/2): the standard CIFAR augmentation
    (``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``), done batch-wise.
    """
    _check_images(images)
    check_int("padding", padding, 0)
    n, c, h, w = images.shape
    dev = images.device
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(2 * padding + 1, (n,), generator=generator, device=dev)
    dx = torch.randint(2 * padding + 1, (n,), generator=generator, device=dev)
    rows = dy[:, None] + torch.arange(h, device=dev)  # (N, H)
    cols = dx[:, None] + torch.arange(w, device=dev)  # (N, W)
    if flip:
        flipped = torch.rand(n, generator=generator, device=dev) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chan = torch.arange(c, device=dev)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(images - mean) / std`` per channel; ``images`` float ``(N, C, H, W)``."""
    _check_images(images)
    if len(mean) != images.shape[1] or len(std) != images.shape[1]:
        raise ValueError(
            f"mean and std must have one entry per channel ({images.shape[1]}), "
            f"got {len(mean)} and {len(std)}"
        )
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device)[None, :, None, None]
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device)[None, :, None, None]
    return (images - m) / s


class ImageBatchTransform:
    """Turn a batch ``(uint8 images (N, C, H, W), labels)`` into model inputs.

    Scales to [0, 1], applies :func:`random_crop_flip` when ``augment`` (training), then
    :func:`normalize`. Used as a DataLoader ``collate_fn`` over whole-batch indexing, so
    it runs in the loader's workers; picklable.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], augment: bool = False,
                 padding: int = 4, flip: bool = True) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment, self.padding, self.flip = augment, padding, flip

    def __call__(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        images, labels = batch
        x = images.float().div_(255.0)
        if self.augment:
            x = random_crop_flip(x, self.padding, self.flip)
        return normalize(x, self.mean, self.std), labels
