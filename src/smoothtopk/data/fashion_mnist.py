"""Fashion-MNIST from gzipped IDX files, and its long-tailed variant.

Files (Debian package ``dataset-fashion-mnist``, default folder
``/usr/share/datasets/fashion-mnist``): ``train-images-idx3-ubyte.gz``,
``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
``t10k-labels-idx1-ubyte.gz`` (uncompressed files without ``.gz`` are accepted too).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._checks import check_int, check_real
from .longtail import exponential_profile, subsample_per_class
from .splits import ArraySplits, stratified_split

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
TEST_PROFILES = ("balanced", "long_tailed")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
               0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) into an array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values, found {data.size}")
    return data.reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise ValueError(
        f"root={str(root)!r} is not a Fashion-MNIST folder: {stem}.gz not found "
        f"(install the Debian package dataset-fashion-mnist or pass root=)"
    )


def read_fashion_mnist(root: str | Path = DEFAULT_ROOT) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train images uint8 ``(60000, 1, 28, 28)``, labels, test images, labels (int64)."""
    root = Path(root)
    out = []
    for split in ("train", "t10k"):
        images = read_idx(_find(root, f"{split}-images-idx3-ubyte"))
        labels = read_idx(_find(root, f"{split}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.shape != (images.shape[0],):
            raise ValueError(f"{root}: {split} images/labels have inconsistent shapes")
        out += [torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))]
    return out[0], out[1], out[2], out[3]


def load_fashion_mnist(root: str | Path = DEFAULT_ROOT, val_fraction: float = 1 / 12,
                       seed: int = 0) -> ArraySplits:
    """Balanced Fashion-MNIST: 55,000 / 5,000 (stratified, seeded) / 10,000 by default."""
    check_int("seed", seed, 0)
    x, y, x_test, y_test = read_fashion_mnist(root)
    train_idx, val_idx = stratified_split(y, val_fraction, torch.Generator().manual_seed(seed))
    return ArraySplits(x[train_idx], y[train_idx], x[val_idx], y[val_idx], x_test, y_test,
                       list(CLASS_NAMES))


def load_fashion_mnist_lt(
    root: str | Path = DEFAULT_ROOT, rho: float = 100.0, val_fraction: float = 1 / 6,
    test_profile: str = "balanced", seed: int = 0,
) -> ArraySplits:
    """Long-tailed Fashion-MNIST.

    The 60,000 training images are first split (stratified) into a training pool and a
    validation pool (``val_fraction``; 5,000 / 1,000 per class by default). A seeded
    permutation orders the classes; the class of rank ``i`` keeps
    ``round(n_max * rho ** (-i / (C - 1)))`` images of each pool
    (:func:`~smoothtopk.data.longtail.exponential_profile`, ``n_max`` = the pool's per-class
    size), so train and validation have the same profile. ``test_profile="balanced"``
    keeps the 10,000 test images; ``"long_tailed"`` subsamples them with the same profile
    (``n_max = 1000``), like Pl@ntNet-300K whose test set is long-tailed.
    ``info["class_order"]`` lists the class ids from head to tail.
    """
    rho = check_real("rho", rho, 1.0)
    check_int("seed", seed, 0)
    if test_profile not in TEST_PROFILES:
        raise ValueError(f"test_profile must be one of {TEST_PROFILES}, got {test_profile!r}")
    x, y, x_test, y_test = read_fashion_mnist(root)
    num_classes = len(CLASS_NAMES)
    gen = torch.Generator().manual_seed(seed)
    train_idx, val_idx = stratified_split(y, val_fraction, gen)
    order = torch.randperm(num_classes, generator=gen)

    def subsample(labels: Tensor) -> Tensor:
        n_max = int(torch.bincount(labels, minlength=num_classes).min())
        counts = torch.empty(num_classes, dtype=torch.int64)
        counts[order] = exponential_profile(n_max, num_classes, rho)
        return subsample_per_class(labels, counts, gen)

    train_idx = train_idx[subsample(y[train_idx])]
    val_idx = val_idx[subsample(y[val_idx])]
    if test_profile == "long_tailed":
        keep = subsample(y_test)
        x_test, y_test = x_test[keep], y_test[keep]
    return ArraySplits(x[train_idx], y[train_idx], x[val_idx], y[val_idx], x_test, y_test,
                       list(CLASS_NAMES), {"class_order": order.tolist(), "rho": rho})
