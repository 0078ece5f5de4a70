"""Lightning data modules: registry, attributes after setup, loaders, bad input."""

import lightning.pytorch as pl
import pytest
import torch

from smoothtopk.data.transforms import CIFAR100_MEAN, CIFAR100_STD
from smoothtopk.train.datamodules import DATAMODULES, build_datamodule
from test_data_cifar100 import write_cifar100
from test_data_features import write_embeddings
from test_data_folders import write_folder_tree
from test_data_plantnet import write_plantnet

SMALL_SYNTHETIC = {"num_classes": 20, "genus_size": 4, "dim": 8, "count_median": 20.0,
                   "count_max": 100}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    write_cifar100(base / "cifar", train_per_class=10, test_per_class=1)
    write_plantnet(base / "plantnet", corrupt=False)
    write_folder_tree(base / "folder", {"train": {"cat": 3, "dog": 2}, "val": {"cat": 1},
                                        "test": {"dog": 2}})
    write_embeddings(base / "emb")
    return base


CASES = {
    "synthetic": lambda r: {**SMALL_SYNTHETIC},
    "synthetic_images": lambda r: {**SMALL_SYNTHETIC, "image_shape": (3, 16, 16)},
    "cifar100": lambda r: {"root": r / "cifar"},
    "plantnet300k": lambda r: {"root": r / "plantnet", "resize": 40, "crop": 32},
    "fashion_mnist": lambda r: {"batch_size": 1000},
    "fashion_mnist_lt": lambda r: {"rho": 10.0, "batch_size": 1000},
    "folder": lambda r: {"root": r / "folder", "resize": 40, "crop": 32},
    "embeddings": lambda r: {"root": r / "emb"},
}


def test_registry_names():
    assert sorted(DATAMODULES) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_attributes_and_loaders(name, roots):
    kwargs = {"batch_size": 4, **CASES[name](roots)}
    dm = build_datamodule(name, seed=0, **kwargs)
    dm.setup("fit")
    c = dm.num_classes
    assert isinstance(c, int) and c >= 2 and len(dm.class_names) == c
    assert all(isinstance(n, str) for n in dm.class_names)
    assert dm.class_counts.dtype == torch.int64 and dm.class_counts.shape == (c,)
    assert int(dm.class_counts.min()) >= 1
    assert isinstance(dm.input_shape, tuple)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.dtype == torch.float32 and tuple(x.shape[1:]) == dm.input_shape
        assert y.dtype == torch.int64 and y.shape == (x.shape[0],)
        assert int(y.min()) >= 0 and int(y.max()) < c
    labels = torch.cat([y for _, y in dm.train_dataloader()])
    # only the last partial batch is dropped
    assert labels.numel() > int(dm.class_counts.sum()) - kwargs["batch_size"]


def test_train_order_seeded_and_eval_order_fixed():
    def first_labels(seed, split):
        dm = build_datamodule("synthetic", batch_size=16, seed=seed, **SMALL_SYNTHETIC)
        dm.setup()
        return next(iter(getattr(dm, f"{split}_dataloader")()))[1]

    assert torch.equal(first_labels(0, "train"), first_labels(0, "train"))
    assert not torch.equal(first_labels(0, "train"), first_labels(1, "train"))
    val = first_labels(0, "val")
    assert bool((val[:-1] <= val[1:]).all())  # not shuffled


def test_cifar_augments_train_only_and_normalises(roots):
    dm = build_datamodule("cifar100", root=roots / "cifar", batch_size=8)
    dm.setup()
    x1, y1 = next(iter(dm.train_dataloader()))
    x2, y2 = next(iter(dm.train_dataloader()))
    assert torch.equal(y1, y2) and not torch.equal(x1, x2)  # same order, new crops/flips
    v1, _ = next(iter(dm.val_dataloader()))
    v2, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(v1, v2)
    raw = dm._data["val"][0:8][0].float() / 255
    mean = torch.tensor(CIFAR100_MEAN)[None, :, None, None]
    std = torch.tensor(CIFAR100_STD)[None, :, None, None]
    torch.testing.assert_close(v1, (raw - mean) / std)
    noisy = build_datamodule("cifar100", root=roots / "cifar", noise_p=0.4)
    noisy.setup()
    assert 0.0 < noisy.info["noise_fraction_changed"] < 0.6


def test_trains_with_lightning():
    dm = build_datamodule("synthetic", batch_size=32, **SMALL_SYNTHETIC)
    dm.setup()

    class Linear(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(dm.input_shape[0], dm.num_classes)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(Linear(), datamodule=dm)
    assert trainer.global_step == len(dm.train_dataloader())


@pytest.mark.parametrize("name, kwargs, error, match", [
    ("imagenet", {}, ValueError, "unknown dataset 'imagenet'; expected one of"),
    ("synthetic", {"classes": 10}, TypeError, "unknown arguments \\['classes'\\]"),
    ("synthetic", {"root": "/tmp"}, ValueError, "root must be None"),
    ("synthetic", {"noise_p": 2.0}, ValueError, r"noise_p must be in \[0.0, 1.0\]"),
    ("cifar100", {}, ValueError, "cifar100 needs root"),
    ("cifar100", {"root": "/nonexistent"}, ValueError, "not a CIFAR-100 python-version"),
    ("cifar100", {"root": "CIFAR", "noise_p": -0.1}, ValueError, r"noise_p must be in"),
    ("fashion_mnist_lt", {"rho": 0.5}, ValueError, r"rho must be in \[1.0, inf\]"),
    ("fashion_mnist", {"root": "/nonexistent"}, ValueError, "is not a folder"),
    ("folder", {"root": "/nonexistent"}, ValueError, "is not a folder"),
    ("embeddings", {"root": "EMPTY"}, ValueError, "missing split 'train'"),
    ("synthetic", {"batch_size": 0}, ValueError, r"batch_size must be >= 1"),
])
def test_bad_input(name, kwargs, error, match, roots, tmp_path):
    kwargs = dict(kwargs)
    if kwargs.get("root") == "CIFAR":
        kwargs["root"] = roots / "cifar"
    if kwargs.get("root") == "EMPTY":
        kwargs["root"] = tmp_path
    with pytest.raises(error, match=match):
        build_datamodule(name, **kwargs)


def test_missing_split_folder(roots, tmp_path):
    write_folder_tree(tmp_path / "f", {"train": {"a": 1}, "test": {"a": 1}})
    with pytest.raises(ValueError, match="missing split 'val'"):
        build_datamodule("folder", root=tmp_path / "f")


def test_data_fixed_by_data_seed_not_training_seed():
    def data(**kw):
        dm = build_datamodule("synthetic", noise_p=0.3, **SMALL_SYNTHETIC, **kw)
        dm.setup()
        return dm._data["train"].tensors

    a, b, c = data(seed=0), data(seed=5), data(seed=0, data_seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
