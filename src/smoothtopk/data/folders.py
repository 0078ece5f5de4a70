"""Image folders ``root/{train,val,test}/<class>/<image>``, decoded with Pillow.

Class index = rank of the class folder name in sorted (string) order among the
*training* folders, as ``torchvision.datasets.ImageFolder`` does; a validation or test
class absent from training is an error. Images are decoded in the DataLoader workers:
Pillow's reduced-size JPEG decoding (``Image.draft``) is used when the target is smaller
than the file, the shorter side is resized to ``resize``, and a ``crop x crop`` square is
cut (random position for training, centre otherwise). An unreadable file does not stop
an epoch: it is dropped from its batch, reported with an :class:`UnreadableImageWarning`
that names it, and counted in the dataset's ``skipped`` list.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .._checks import check_int
from .transforms import normalize

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class UnreadableImageWarning(UserWarning):
    """An image file could not be decoded and was skipped."""


@dataclass(frozen=True)
class Unreadable:
    """Placeholder returned by :class:`ImageFolderDataset` for a file it could not decode."""

    index: int
    path: str
    error: str


def load_image(path: str | Path, resize: int, crop: int, random_crop: bool) -> Tensor:
    """Decode ``path`` to RGB, resize its shorter side to ``resize``, cut a ``crop`` square.

    Returns uint8 ``(3, crop, crop)``. JPEGs larger than needed are decoded at reduced size
    (``Image.draft``). The random crop position uses the global torch RNG (seeded per
    DataLoader worker).
    """
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        scale = resize / min(w, h)
        if scale < 1:  # decode JPEGs at 1/2, 1/4 or 1/8 scale when that is still big enough
            im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
        rgb = im.convert("RGB")
    w, h = rgb.size
    scale = resize / min(w, h)
    size = (max(resize, round(w * scale)), max(resize, round(h * scale)))
    rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    if random_crop:
        left = int(torch.randint(size[0] - crop + 1, ()))
        top = int(torch.randint(size[1] - crop + 1, ()))
    else:
        left, top = (size[0] - crop) // 2, (size[1] - crop) // 2
    rgb = rgb.crop((left, top, left + crop, top + crop))
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _decode_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    return (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def list_classes(split_dir: Path) -> list[str]:
    """Sorted names of the class subfolders of ``split_dir``."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir())


class ImageFolderDataset(Dataset):
    """One split of an image folder: items ``(uint8 (3, crop, crop), int label)``.

    An undecodable file yields an :class:`Unreadable` instead; use
    :class:`SkippingCollate` with :class:`SkippingDataLoader`, which drop it, warn and
    append its path to :attr:`skipped` (in the main process).
    """

    def __init__(self, split_dir: str | Path, classes: Sequence[str], train: bool,
                 resize: int = 256, crop: int = 224) -> None:
        check_int("resize", resize, 1)
        check_int("crop", crop, 1, resize)
        self.split_dir = Path(split_dir)
        self.train, self.resize, self.crop = train, resize, crop
        index = {name: i for i, name in enumerate(classes)}
        unknown = [n for n in list_classes(self.split_dir) if n not in index]
        if unknown:
            raise ValueError(f"{self.split_dir}: class folders {unknown[:5]} are not among "
                             f"the training classes")
        self.samples: list[tuple[str, int]] = []
        for name in classes:
            folder = self.split_dir / name
            if folder.is_dir():
                self.samples += [(str(p), index[name]) for p in sorted(folder.iterdir())
                                 if p.suffix.lower() in IMAGE_EXTENSIONS]
        self.targets = torch.tensor([t for _, t in self.samples], dtype=torch.int64)
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int] | Unreadable:
        path, target = self.samples[index]
        try:
            return load_image(path, self.resize, self.crop, random_crop=self.train), target
        except _decode_errors() as err:
            return Unreadable(index, path, f"{type(err).__name__}: {err}")

    def record_unreadable(self, item: Unreadable) -> None:
        """Warn about ``item`` and count it in :attr:`skipped`."""
        warnings.warn(f"skipped unreadable image {item.path} ({item.error})",
                      UnreadableImageWarning, stacklevel=2)
        self.skipped.append(item.path)


class SkippingCollate:
    """Collate ``ImageFolderDataset`` items into ``(x float normalised, y, unreadables)``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, items: list) -> tuple[Tensor, Tensor, list[Unreadable]]:
        good = [it for it in items if not isinstance(it, Unreadable)]
        bad = [it for it in items if isinstance(it, Unreadable)]
        if not good:
            return torch.empty(0), torch.empty(0, dtype=torch.int64), bad
        x = torch.stack([img for img, _ in good]).float().div_(255.0)
        y = torch.tensor([t for _, t in good], dtype=torch.int64)
        return normalize(x, self.mean, self.std), y, bad


class SkippingDataLoader(DataLoader):
    """DataLoader over an :class:`ImageFolderDataset` with a :class:`SkippingCollate`.

    Yields ``(x, y)``; unreadable images are dropped from their batch (a batch with none
    left is skipped) and reported through the dataset's :meth:`record_unreadable`.
    """

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:  # type: ignore[override]
        for x, y, bad in super().__iter__():
            for item in bad:
                self.dataset.record_unreadable(item)
            if y.numel():
                yield x, y


@dataclass
class ImageFolderSplits:
    """The three splits of an image folder, their class names and training counts."""

    train: ImageFolderDataset
    val: ImageFolderDataset
    test: ImageFolderDataset
    class_names: list[str]

    @property
    def class_counts(self) -> Tensor:
        """Training files per class, int64 (from the listing: unreadable files count)."""
        return torch.bincount(self.train.targets, minlength=len(self.class_names))


def check_split_folders(root: Path) -> None:
    """``root`` must be a folder with ``train``, ``val`` and ``test`` subfolders."""
    if not root.is_dir():
        raise ValueError(f"root={str(root)!r} is not a folder; expected a folder with "
                         f"subfolders {', '.join(SPLITS)}")
    for split in SPLITS:
        if not (root / split).is_dir():
            raise ValueError(f"missing split {split!r}: expected the folder {root / split}")


def load_image_folders(root: str | Path, resize: int = 256, crop: int = 224,
                       class_names: Sequence[str] | None = None) -> ImageFolderSplits:
    """Index ``root/{train,val,test}/<class>/<image>`` (see the module docstring).

    ``class_names`` (one per class folder, in folder order) replaces the folder names as
    display names. Raises ``ValueError`` for a missing split folder or a training class
    folder without images.
    """
    root = Path(root)
    check_split_folders(root)
    classes = list_classes(root / "train")
    if not classes:
        raise ValueError(f"{root / 'train'} has no class folders")
    splits = [ImageFolderDataset(root / s, classes, train=(s == "train"), resize=resize,
                                 crop=crop) for s in SPLITS]
    counts = torch.bincount(splits[0].targets, minlength=len(classes))
    if bool((counts == 0).any()):
        empty = classes[int(torch.nonzero(counts == 0)[0])]
        raise ValueError(f"training class folder {empty!r} holds no image")
    names = list(class_names) if class_names is not None else classes
    if len(names) != len(classes):
        raise ValueError(f"class_names must have {len(classes)} entries, got {len(names)}")
    return ImageFolderSplits(splits[0], splits[1], splits[2], names)
