"""CIFAR-100 from the official "python version" folder, with superclass label noise.

Layout (as downloaded from https://www.cs.toronto.edu/~kriz/cifar.html and extracted):
``cifar-100-python/{train,test,meta}``, pickles with byte-string keys (``b"data"``: uint8
``(N, 3072)`` in CHW order, ``b"fine_labels"``, ``b"coarse_labels"``; ``meta``:
``b"fine_label_names"``, ``b"coarse_label_names"``). The files are unpickled: load only
copies you trust.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import Tensor

from .._checks import check_int, check_real
from .label_noise import block_groups, groups_from_pairs, superclass_label_noise
from .splits import ArraySplits, stratified_split

NOISE_GROUPINGS = ("coarse", "blocks")
_FILES = ("train", "test", "meta")


def find_cifar100_folder(root: str | Path) -> Path:
    """``root`` itself or ``root/cifar-100-python`` when it holds ``train``, ``test``, ``meta``."""
    root = Path(root)
    for folder in (root, root / "cifar-100-python"):
        if all((folder / f).is_file() for f in _FILES):
            return folder
    raise ValueError(
        f"root={str(root)!r} is not a CIFAR-100 python-version folder: expected the files "
        f"{', '.join(_FILES)} in it or in its 'cifar-100-python' subfolder"
    )


def _unpickle(path: Path) -> dict[bytes, object]:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def read_cifar100_file(path: str | Path) -> tuple[Tensor, Tensor, Tensor]:
    """Images uint8 ``(N, 3, 32, 32)``, fine labels and coarse labels (int64) of one pickle."""
    d = _unpickle(Path(path))
    try:
        data, fine, coarse = d[b"data"], d[b"fine_labels"], d[b"coarse_labels"]
    except KeyError as err:
        raise ValueError(f"{path}: missing key {err} of the CIFAR-100 python format") from err
    images = torch.as_tensor(data, dtype=torch.uint8).reshape(-1, 3, 32, 32)
    fine_t = torch.as_tensor(fine, dtype=torch.int64)
    coarse_t = torch.as_tensor(coarse, dtype=torch.int64)
    if not images.shape[0] == fine_t.numel() == coarse_t.numel():
        raise ValueError(f"{path}: data, fine_labels and coarse_labels differ in length")
    return images, fine_t, coarse_t


def load_cifar100(
    root: str | Path, val_fraction: float = 0.1, noise_p: float = 0.0,
    noise_grouping: str = "coarse", seed: int = 0,
) -> ArraySplits:
    """CIFAR-100 train/val/test (45,000 / 5,000 / 10,000 with the defaults).

    The validation split is class-stratified and drawn with ``seed``. With ``noise_p > 0``
    each training label is, with probability ``noise_p``, replaced by a class drawn
    uniformly from its group (:func:`~smoothtopk.data.label_noise.superclass_label_noise`;
    expected changed fraction ``0.8 * noise_p``); validation and test stay clean. The draw
    is made once from ``seed`` and stored: the result keeps ``y_train_clean`` and ``info``
    the report (``noise_p``, ``noise_num_changed``, ``noise_fraction_changed``).

    ``noise_grouping``: ``"coarse"`` (default) groups by the dataset's ``coarse_labels``
    (the 20 true superclasses); ``"blocks"`` groups fine ids ``5j .. 5j+4``, which is what
    the published code of Berrada et al. (2018) and Garcin et al. (2022) did
    (``label - label % 5``; the fine ids are alphabetical, so these are not superclasses).
    Use it only to compare with their published numbers.
    """
    folder = find_cifar100_folder(root)
    check_real("noise_p", noise_p, 0.0, 1.0)
    check_int("seed", seed, 0)
    if noise_grouping not in NOISE_GROUPINGS:
        raise ValueError(
            f"noise_grouping must be one of {NOISE_GROUPINGS}, got {noise_grouping!r}"
        )
    meta = _unpickle(folder / "meta")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"fine_label_names"]]
    x, fine, coarse = read_cifar100_file(folder / "train")
    x_test, y_test, _ = read_cifar100_file(folder / "test")
    gen = torch.Generator().manual_seed(seed)
    train_idx, val_idx = stratified_split(fine, val_fraction, gen)
    y_train = fine[train_idx]
    info: dict[str, object] = {"noise_grouping": noise_grouping}
    y_clean = None
    if noise_p > 0:
        if noise_grouping == "coarse":
            groups = groups_from_pairs(fine, coarse, len(names))
        else:
            groups = block_groups(len(names), 5)
        noisy = superclass_label_noise(y_train, groups, noise_p, gen)
        info.update(noisy.report())
        y_clean, y_train = y_train, noisy.labels
    return ArraySplits(x[train_idx], y_train, x[val_idx], fine[val_idx], x_test, y_test,
                       names, info, y_clean)
