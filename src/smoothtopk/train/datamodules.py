"""Lightning data modules for every dataset of :mod:`smoothtopk.data`.

``build_datamodule(name, root=None, batch_size=64, num_workers=0, seed=0, **kwargs)``
builds one of :data:`DATAMODULES`. Paths and arguments are checked at construction
(``ValueError``/``TypeError`` saying what was expected); data are read in :meth:`setup`.
After ``setup()`` a module exposes ``num_classes``, ``class_counts`` (training counts,
int64 ``(C,)``), ``class_names``, ``input_shape`` and ``info`` (JSON-ready dataset facts,
such as the label-noise report, to save with a run), and its
``train/val/test_dataloader()`` yield model-ready ``(x float, y int64)`` batches: image
scaling, augmentation (training only) and normalisation are applied batch-wise in the
loaders' ``collate_fn`` (so in the workers).
Training batches are shuffled with a generator seeded by ``seed`` and the last
incomplete batch is dropped (when the split holds at least one full batch).

``seed`` drives only the loaders (order; augmentation through the worker RNGs). What is
random in the *data* (synthetic draw, validation split, label noise, long-tail
subsampling) is drawn from ``data_seed`` (default 0), so runs with different training
seeds see the same dataset, noise included.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from .._checks import check_int, check_real
from ..data.cifar100 import NOISE_GROUPINGS, find_cifar100_folder, load_cifar100
from ..data.fashion_mnist import DEFAULT_ROOT as FASHION_MNIST_ROOT
from ..data.fashion_mnist import TEST_PROFILES, load_fashion_mnist, load_fashion_mnist_lt
from ..data.features import load_embeddings
from ..data.folders import (
    ImageFolderSplits,
    SkippingCollate,
    SkippingDataLoader,
    check_split_folders,
    load_image_folders,
)
from ..data.plantnet import find_plantnet_folder, load_plantnet300k
from ..data.splits import ArraySplits
from ..data.synthetic import FeatureImages, SyntheticConfig, image_basis, make_synthetic
from ..data.transforms import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageBatchTransform,
)


class _Collate:
    """Default collation followed by an optional batch transform (picklable)."""

    def __init__(self, transform: Callable[[tuple[Tensor, Tensor]], tuple[Tensor, Tensor]]
                 | None = None) -> None:
        self.transform = transform

    def __call__(self, items: list) -> tuple[Tensor, Tensor]:
        batch = default_collate(items)
        return self.transform(batch) if self.transform is not None else batch


class BaseDataModule(pl.LightningDataModule):
    """Common loader logic; subclasses implement :meth:`_load` and :meth:`_datasets`."""

    def __init__(self, root: str | Path | None, batch_size: int, num_workers: int,
                 seed: int) -> None:
        super().__init__()
        self.root = root
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.seed = check_int("seed", seed, 0)
        self.class_names: list[str] = []
        self.class_counts = torch.zeros(0, dtype=torch.int64)
        self.input_shape: tuple[int, ...] = ()
        self.info: dict[str, object] = {}
        self._data: dict[str, Dataset] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def setup(self, stage: str | None = None) -> None:
        if self._data is None:
            self._data = self._load()

    def _load(self) -> dict[str, Dataset]:
        raise NotImplementedError

    def _collate(self, split: str) -> Callable[[list], Any]:
        return _Collate()

    def _loader_class(self) -> type[DataLoader]:
        return DataLoader

    def _loader(self, split: str) -> DataLoader:
        if self._data is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        dataset = self._data[split]
        train = split == "train"
        return self._loader_class()(
            dataset, batch_size=self.batch_size, shuffle=train,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
            drop_last=train and len(dataset) >= self.batch_size,
            num_workers=self.num_workers, collate_fn=self._collate(split),
            persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class ArrayDataModule(BaseDataModule):
    """Data held in memory as :class:`~smoothtopk.data.splits.ArraySplits`."""

    def __init__(self, root: str | Path | None, batch_size: int, num_workers: int,
                 seed: int, data_seed: int) -> None:
        super().__init__(root, batch_size, num_workers, seed)
        self.data_seed = check_int("data_seed", data_seed, 0)

    def _arrays(self) -> ArraySplits:
        raise NotImplementedError

    def _datasets(self, s: ArraySplits) -> dict[str, Dataset]:
        return {"train": TensorDataset(s.x_train, s.y_train),
                "val": TensorDataset(s.x_val, s.y_val),
                "test": TensorDataset(s.x_test, s.y_test)}

    def _load(self) -> dict[str, Dataset]:
        s = self._arrays()
        self.class_names = list(s.class_names)
        self.class_counts = s.class_counts
        self.info = dict(s.info)
        datasets = self._datasets(s)
        self.input_shape = tuple(datasets["train"][0][0].shape)
        return datasets


def _no_root(name: str, root: object) -> None:
    if root is not None:
        raise ValueError(f"the {name!r} dataset is generated in memory: root must be None, "
                         f"got {root!r}")


class SyntheticDataModule(ArrayDataModule):
    """Synthetic Pl@ntNet-like features (see :mod:`smoothtopk.data.synthetic`).

    Keyword arguments are the fields of :class:`~smoothtopk.data.synthetic.SyntheticConfig`.
    """

    def __init__(self, root: None = None, batch_size: int = 64, num_workers: int = 0,
                 seed: int = 0, data_seed: int = 0, **config: Any) -> None:
        super().__init__(root, batch_size, num_workers, seed, data_seed)
        _no_root("synthetic", root)
        self.config = SyntheticConfig(**config)

    def _arrays(self) -> ArraySplits:
        return make_synthetic(self.config, self.data_seed)


class SyntheticImagesDataModule(SyntheticDataModule):
    """The synthetic benchmark as images ``image_shape`` (default ``(3, 32, 32)``).

    Each feature vector is mapped by a fixed smooth random basis
    (:func:`~smoothtopk.data.synthetic.image_basis`) to an image; for CNN smoke tests.
    """

    def __init__(self, root: None = None, batch_size: int = 64, num_workers: int = 0,
                 seed: int = 0, data_seed: int = 0, image_shape: Sequence[int] = (3, 32, 32),
                 **config: Any) -> None:
        super().__init__(root, batch_size, num_workers, seed, data_seed, **config)
        shape = tuple(image_shape)
        if len(shape) != 3 or not all(isinstance(v, int) and v >= 1 for v in shape):
            raise ValueError(f"image_shape must be three positive ints (C, H, W), got {shape}")
        self.image_shape = shape

    def _datasets(self, s: ArraySplits) -> dict[str, Dataset]:
        basis = image_basis(s.x_train.shape[1], self.image_shape, self.data_seed)
        return {"train": FeatureImages(s.x_train, s.y_train, basis, self.image_shape),
                "val": FeatureImages(s.x_val, s.y_val, basis, self.image_shape),
                "test": FeatureImages(s.x_test, s.y_test, basis, self.image_shape)}


class CIFAR100DataModule(ArrayDataModule):
    """CIFAR-100 (see :func:`~smoothtopk.data.cifar100.load_cifar100`).

    Training batches get random crop 32 (padding 4) + horizontal flip when ``augment``;
    every split is normalised with the CIFAR-100 channel statistics.
    """

    def __init__(self, root: str | Path | None = None, batch_size: int = 64,
                 num_workers: int = 0, seed: int = 0, data_seed: int = 0,
                 val_fraction: float = 0.1, noise_p: float = 0.0,
                 noise_grouping: str = "coarse", augment: bool = True) -> None:
        super().__init__(root, batch_size, num_workers, seed, data_seed)
        if root is None:
            raise ValueError("cifar100 needs root=: the 'cifar-100-python' folder or its parent")
        find_cifar100_folder(root)
        check_real("val_fraction", val_fraction, 0.0, 1.0, high_inclusive=False)
        check_real("noise_p", noise_p, 0.0, 1.0)
        if noise_grouping not in NOISE_GROUPINGS:
            raise ValueError(f"noise_grouping must be one of {NOISE_GROUPINGS}, "
                             f"got {noise_grouping!r}")
        self.val_fraction, self.noise_p = val_fraction, noise_p
        self.noise_grouping, self.augment = noise_grouping, augment

    def _arrays(self) -> ArraySplits:
        return load_cifar100(self.root, self.val_fraction, self.noise_p, self.noise_grouping,
                             self.data_seed)

    def _collate(self, split: str) -> _Collate:
        return _Collate(ImageBatchTransform(CIFAR100_MEAN, CIFAR100_STD,
                                            augment=self.augment and split == "train"))


class FashionMNISTDataModule(ArrayDataModule):
    """Fashion-MNIST (balanced), normalised; ``root`` defaults to the Debian package folder."""

    def __init__(self, root: str | Path | None = None, batch_size: int = 64,
                 num_workers: int = 0, seed: int = 0, data_seed: int = 0,
                 val_fraction: float = 1 / 12) -> None:
        super().__init__(root, batch_size, num_workers, seed, data_seed)
        self.path = Path(root) if root is not None else FASHION_MNIST_ROOT
        if not self.path.is_dir():
            raise ValueError(f"root={str(self.path)!r} is not a folder; expected the folder of "
                             f"the Fashion-MNIST IDX files")
        self.val_fraction = check_real("val_fraction", val_fraction, 0.0, 1.0,
                                       high_inclusive=False)

    def _arrays(self) -> ArraySplits:
        return load_fashion_mnist(self.path, self.val_fraction, self.data_seed)

    def _collate(self, split: str) -> _Collate:
        return _Collate(ImageBatchTransform(FASHION_MNIST_MEAN, FASHION_MNIST_STD))


class FashionMNISTLTDataModule(FashionMNISTDataModule):
    """Long-tailed Fashion-MNIST, see :func:`..data.fashion_mnist.load_fashion_mnist_lt`."""

    def __init__(self, root: str | Path | None = None, batch_size: int = 64,
                 num_workers: int = 0, seed: int = 0, data_seed: int = 0, rho: float = 100.0,
                 val_fraction: float = 1 / 6, test_profile: str = "balanced") -> None:
        super().__init__(root, batch_size, num_workers, seed, data_seed, val_fraction)
        self.rho = check_real("rho", rho, 1.0)
        if test_profile not in TEST_PROFILES:
            raise ValueError(f"test_profile must be one of {TEST_PROFILES}, "
                             f"got {test_profile!r}")
        self.test_profile = test_profile

    def _arrays(self) -> ArraySplits:
        return load_fashion_mnist_lt(self.path, self.rho, self.val_fraction,
                                     self.test_profile, self.data_seed)


class EmbeddingsDataModule(ArrayDataModule):
    """Embeddings ``root/{train,val,test}.npz``; see :mod:`smoothtopk.data.features`."""

    def __init__(self, root: str | Path | None = None, batch_size: int = 64,
                 num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(root, batch_size, num_workers, seed, data_seed=0)
        if root is None or not Path(root).is_dir():
            raise ValueError(f"embeddings needs root= a folder holding train.npz, val.npz, "
                             f"test.npz, got {root!r}")
        for split in ("train", "val", "test"):
            if not (Path(root) / f"{split}.npz").is_file():
                raise ValueError(f"missing split {split!r}: expected the file "
                                 f"{Path(root) / (split + '.npz')}")

    def _arrays(self) -> ArraySplits:
        return load_embeddings(self.root)


class ImageFolderDataModule(BaseDataModule):
    """Images in ``root/{train,val,test}/<class>/<image>`` (see :mod:`smoothtopk.data.folders`).

    Shorter side resized to ``resize``, ``crop`` square (random for training, centre
    otherwise), ImageNet normalisation. Unreadable images are skipped, warned about and
    listed in :attr:`skipped_images`.
    """

    def __init__(self, root: str | Path | None = None, batch_size: int = 64,
                 num_workers: int = 0, seed: int = 0, resize: int = 256,
                 crop: int = 224) -> None:
        super().__init__(root, batch_size, num_workers, seed)
        self.resize = check_int("resize", resize, 1)
        self.crop = check_int("crop", crop, 1, resize)
        self._check_root()
        self.splits: ImageFolderSplits | None = None

    def _check_root(self) -> None:
        if self.root is None:
            raise ValueError("folder needs root=: a folder with train, val, test subfolders")
        check_split_folders(Path(self.root))

    def _folders(self) -> ImageFolderSplits:
        return load_image_folders(self.root, self.resize, self.crop)

    def _load(self) -> dict[str, Dataset]:
        self.splits = self._folders()
        self.class_names = list(self.splits.class_names)
        self.class_counts = self.splits.class_counts
        self.input_shape = (3, self.crop, self.crop)
        return {"train": self.splits.train, "val": self.splits.val, "test": self.splits.test}

    def _collate(self, split: str) -> SkippingCollate:
        return SkippingCollate(IMAGENET_MEAN, IMAGENET_STD)

    def _loader_class(self) -> type[DataLoader]:
        return SkippingDataLoader

    @property
    def skipped_images(self) -> list[str]:
        """Paths of the images skipped so far (one entry per skip), all splits."""
        if self.splits is None:
            return []
        return [*self.splits.train.skipped, *self.splits.val.skipped, *self.splits.test.skipped]


class PlantNet300KDataModule(ImageFolderDataModule):
    """Pl@ntNet-300K (see :mod:`smoothtopk.data.plantnet`): resize 256, crop 224."""

    def _check_root(self) -> None:
        if self.root is None:
            raise ValueError("plantnet300k needs root=: the 'plantnet_300K' folder or its parent")
        check_split_folders(find_plantnet_folder(self.root) / "images")

    def _folders(self) -> ImageFolderSplits:
        return load_plantnet300k(self.root, self.resize, self.crop)


DATAMODULES: dict[str, type[BaseDataModule]] = {
    "synthetic": SyntheticDataModule,
    "synthetic_images": SyntheticImagesDataModule,
    "cifar100": CIFAR100DataModule,
    "plantnet300k": PlantNet300KDataModule,
    "fashion_mnist": FashionMNISTDataModule,
    "fashion_mnist_lt": FashionMNISTLTDataModule,
    "folder": ImageFolderDataModule,
    "embeddings": EmbeddingsDataModule,
}


def _accepted_kwargs(cls: type[BaseDataModule]) -> list[str]:
    """Dataset keyword names accepted by ``cls`` (``**config`` means SyntheticConfig fields)."""
    names = []
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            names += list(SyntheticConfig.__dataclass_fields__)
        elif p.name not in ("self", "root", "batch_size", "num_workers", "seed"):
            names.append(p.name)
    return sorted(names)


def build_datamodule(name: str, root: str | Path | None = None, batch_size: int = 64,
                     num_workers: int = 0, seed: int = 0,
                     **dataset_kwargs: Any) -> BaseDataModule:
    """Build the data module ``name`` (one of :data:`DATAMODULES`); call ``setup()`` next."""
    if name not in DATAMODULES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATAMODULES)}")
    cls = DATAMODULES[name]
    accepted = _accepted_kwargs(cls)
    unknown = sorted(set(dataset_kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"dataset {name!r} got unknown arguments {unknown}; "
                        f"accepted: {accepted}")
    return cls(root=root, batch_size=batch_size, num_workers=num_workers, seed=seed,
               **dataset_kwargs)
