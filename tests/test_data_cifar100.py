"""CIFAR-100 python-version loader on a tiny folder written in the real format."""

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from smoothtopk.data.cifar100 import load_cifar100, read_cifar100_file

NUM_FINE, NUM_COARSE = 100, 20


def coarse_of_fine(seed=0):
    """A fine -> coarse map with 5 fine ids per coarse class, not in consecutive blocks."""
    perm = np.random.default_rng(seed).permutation(NUM_FINE)
    coarse = np.empty(NUM_FINE, dtype=np.int64)
    coarse[perm] = np.arange(NUM_FINE) // 5
    return coarse


def write_cifar100(root: Path, train_per_class=10, test_per_class=2, seed=0) -> Path:
    """Write ``root/cifar-100-python/{train,test,meta}`` pickles with the official keys."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    coarse = coarse_of_fine(seed)
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        fine = np.repeat(np.arange(NUM_FINE), per_class)
        rng.shuffle(fine)
        data = rng.integers(0, 256, (fine.size, 3072), dtype=np.uint8)
        d = {b"filenames": [f"img{i}.png".encode() for i in range(fine.size)],
             b"batch_label": f"{name} batch".encode(),
             b"fine_labels": fine.tolist(), b"coarse_labels": coarse[fine].tolist(),
             b"data": data}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    meta = {b"fine_label_names": [f"fine{i:02d}".encode() for i in range(NUM_FINE)],
            b"coarse_label_names": [f"coarse{i:02d}".encode() for i in range(NUM_COARSE)]}
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f)
    return folder


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(root, train_per_class=50)
    return root


def test_read_file_keeps_chw_layout(cifar_root):
    images, fine, coarse = read_cifar100_file(cifar_root / "cifar-100-python" / "train")
    with open(cifar_root / "cifar-100-python" / "train", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert images.shape == (5000, 3, 32, 32) and images.dtype == torch.uint8
    row = raw[b"data"][7]
    assert images[7, 0, 0, 5] == row[5] and images[7, 1, 0, 0] == row[1024]
    assert images[7, 2, 31, 31] == row[3071]
    assert fine.tolist() == raw[b"fine_labels"] and coarse.tolist() == raw[b"coarse_labels"]


def test_split_sizes_stratified_and_seeded(cifar_root):
    s = load_cifar100(cifar_root, seed=0)
    assert s.x_train.shape == (4500, 3, 32, 32) and s.x_val.shape == (500, 3, 32, 32)
    assert s.x_test.shape == (200, 3, 32, 32)
    assert torch.equal(torch.bincount(s.y_val, minlength=100), torch.full((100,), 5))
    assert torch.equal(s.class_counts, torch.full((100,), 45))
    assert s.class_names[:2] == ["fine00", "fine01"] and s.num_classes == 100
    again, other = load_cifar100(cifar_root, seed=0), load_cifar100(cifar_root, seed=1)
    assert torch.equal(again.x_val, s.x_val)
    assert not torch.equal(other.x_val, s.x_val)
    # train and val are disjoint and together hold every training image
    images, _, _ = read_cifar100_file(cifar_root / "cifar-100-python" / "train")
    both = torch.cat([s.x_train, s.x_val]).flatten(1)
    assert torch.equal(torch.sort(both.sum(1, dtype=torch.int64)).values,
                       torch.sort(images.flatten(1).sum(1, dtype=torch.int64)).values)


@pytest.mark.parametrize("p", [0.2, 0.4])
def test_superclass_noise_from_coarse_labels(cifar_root, p):
    clean = load_cifar100(cifar_root, seed=3)
    noisy = load_cifar100(cifar_root, noise_p=p, seed=3)
    coarse = torch.as_tensor(coarse_of_fine(0))
    assert torch.equal(noisy.y_train_clean, clean.y_train) and clean.y_train_clean is None
    assert torch.equal(coarse[noisy.y_train], coarse[clean.y_train])
    assert torch.equal(noisy.y_val, clean.y_val) and torch.equal(noisy.y_test, clean.y_test)
    q, n = p * 4 / 5, clean.y_train.numel()
    changed = float((noisy.y_train != clean.y_train).double().mean())
    assert noisy.info["noise_fraction_changed"] == pytest.approx(changed)
    assert abs(changed - q) <= 3 * math.sqrt(q * (1 - q) / n)
    assert torch.equal(load_cifar100(cifar_root, noise_p=p, seed=3).y_train, noisy.y_train)
    # blocks of 5 consecutive ids are not the superclasses here
    assert not torch.equal(noisy.y_train // 5, clean.y_train // 5)


def test_published_block_grouping_option(cifar_root):
    clean = load_cifar100(cifar_root, seed=0)
    noisy = load_cifar100(cifar_root, noise_p=0.5, noise_grouping="blocks", seed=0)
    assert torch.equal(noisy.y_train // 5, clean.y_train // 5)
    assert noisy.info["noise_grouping"] == "blocks"
    assert (noisy.y_train != clean.y_train).any()


def test_bad_inputs(cifar_root, tmp_path):
    with pytest.raises(ValueError, match="not a CIFAR-100 python-version folder"):
        load_cifar100(tmp_path)
    with pytest.raises(ValueError, match=r"noise_p must be in \[0.0, 1.0\]"):
        load_cifar100(cifar_root, noise_p=1.2)
    with pytest.raises(ValueError, match="noise_grouping must be one of"):
        load_cifar100(cifar_root, noise_grouping="alphabetical")
    broken = tmp_path / "broken"
    folder = write_cifar100(broken, train_per_class=1, test_per_class=1)
    with open(folder / "test", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8)}, f)
    with pytest.raises(ValueError, match="missing key"):
        load_cifar100(broken)
