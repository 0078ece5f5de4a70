"""Fashion-MNIST IDX reader, the Debian files, and the long-tailed variant."""

import gzip
import struct

import numpy as np
import pytest
import torch

from smoothtopk.data.fashion_mnist import (
    DEFAULT_ROOT,
    load_fashion_mnist,
    load_fashion_mnist_lt,
    read_idx,
)


def test_read_idx_round_trip(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">III", 2, 3, 4) + data.tobytes()
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "a").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), data)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), data)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(raw[:-3])
    with pytest.raises(ValueError, match="expected 24 values"):
        read_idx(tmp_path / "short")


@pytest.fixture(scope="module")
def balanced():
    return load_fashion_mnist(DEFAULT_ROOT, seed=0)


def test_debian_files_load(balanced):
    s = balanced
    assert s.x_train.shape == (55000, 1, 28, 28) and s.x_train.dtype == torch.uint8
    assert s.x_val.shape == (5000, 1, 28, 28) and s.x_test.shape == (10000, 1, 28, 28)
    assert s.class_counts.tolist() == [5500] * 10
    assert torch.bincount(s.y_test).tolist() == [1000] * 10
    assert s.class_names[0] == "T-shirt/top" and s.num_classes == 10
    # real images: mean intensity of Fashion-MNIST is about 0.286
    assert abs(float(s.x_train.float().mean()) / 255 - 0.286) < 0.01


def _profile(n_max, rho, c=10):
    return np.array([n_max * rho ** (-i / (c - 1)) for i in range(c)])


@pytest.mark.parametrize("rho", [100.0, 10.0])
def test_long_tailed_counts_follow_profile(rho):
    s = load_fashion_mnist_lt(DEFAULT_ROOT, rho=rho, test_profile="long_tailed", seed=1)
    order = torch.tensor(s.info["class_order"])
    assert sorted(order.tolist()) == list(range(10))
    for y, n_max in ((s.y_train, 5000), (s.y_val, 1000), (s.y_test, 1000)):
        by_rank = torch.bincount(y, minlength=10)[order].numpy()
        assert np.all(np.abs(by_rank - _profile(n_max, rho)) <= 0.5), by_rank
    assert s.class_counts[order[0]] == 5000
    assert int(s.class_counts.max()) / int(s.class_counts.min()) == pytest.approx(rho, rel=0.02)


def test_long_tailed_balanced_test_and_seeded_order():
    a = load_fashion_mnist_lt(DEFAULT_ROOT, seed=0)
    b = load_fashion_mnist_lt(DEFAULT_ROOT, seed=0)
    assert torch.bincount(a.y_test).tolist() == [1000] * 10
    assert torch.equal(a.y_train, b.y_train) and torch.equal(a.x_val, b.x_val)
    other = load_fashion_mnist_lt(DEFAULT_ROOT, seed=1)  # 10! orders: a collision is negligible
    assert other.info["class_order"] != a.info["class_order"]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"rho must be in \[1.0, inf\]"):
        load_fashion_mnist_lt(DEFAULT_ROOT, rho=0.5)
    with pytest.raises(ValueError, match="test_profile must be one of"):
        load_fashion_mnist_lt(DEFAULT_ROOT, test_profile="tail")
    with pytest.raises(ValueError, match="not a Fashion-MNIST folder"):
        load_fashion_mnist(tmp_path)
