"""Embeddings stored as .npz files."""

import numpy as np
import pytest
import torch

from smoothtopk.data.features import load_embeddings


def write_embeddings(root, n=(30, 10, 12), d=5, num_classes=3, names=True, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, size in zip(("train", "val", "test"), n, strict=True):
        arrays = {"x": rng.normal(size=(size, d)).astype(np.float32),
                  "y": np.arange(size) % num_classes}
        if names and split == "train":
            arrays["class_names"] = np.array([f"class {c}" for c in range(num_classes)])
        np.savez(root / f"{split}.npz", **arrays)
    return root


def test_load_round_trip(tmp_path):
    root = write_embeddings(tmp_path / "emb")
    s = load_embeddings(root)
    with np.load(root / "val.npz") as f:
        np.testing.assert_array_equal(s.x_val.numpy(), f["x"])
        np.testing.assert_array_equal(s.y_val.numpy(), f["y"])
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    assert s.class_names == ["class 0", "class 1", "class 2"]
    assert s.class_counts.tolist() == [10, 10, 10]


def test_names_default_to_label_range(tmp_path):
    s = load_embeddings(write_embeddings(tmp_path / "emb", names=False, num_classes=4))
    assert s.class_names == ["0", "1", "2", "3"]


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        load_embeddings(tmp_path / "none")
    root = write_embeddings(tmp_path / "a")
    (root / "test.npz").unlink()
    with pytest.raises(ValueError, match="missing split 'test'"):
        load_embeddings(root)
    root = write_embeddings(tmp_path / "b")
    np.savez(root / "val.npz", x=np.zeros((3, 5), np.float32), y=np.array([0, 1, 7]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        load_embeddings(root)
    np.savez(root / "val.npz", x=np.zeros((3, 4), np.float32), y=np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="same feature size"):
        load_embeddings(root)
    np.savez(root / "val.npz", x=np.zeros((3, 5), np.float32), y=np.array([0.5, 1, 2]))
    with pytest.raises(ValueError, match="'y' must be an integer array"):
        load_embeddings(root)
    np.savez(root / "val.npz", features=np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="must contain arrays 'x'"):
        load_embeddings(root)
