"""Superclass label noise: stays in the group, right rate, uniform, reproducible."""

import math

import pytest
import torch

from smoothtopk.data.label_noise import (
    block_groups,
    groups_from_pairs,
    superclass_label_noise,
)


def _cifar_like_groups(seed=0):
    # 100 classes, 20 groups of 5, not in consecutive blocks (like CIFAR-100's coarse labels)
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(seed))
    groups = torch.empty(100, dtype=torch.int64)
    groups[perm] = torch.arange(100) // 5
    return groups


def _labels(n=45000, seed=1):
    return torch.randint(100, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("p", [0.1, 0.3, 0.4])
def test_noise_stays_in_group_at_rate_p_times_four_fifths(p):
    groups, labels = _cifar_like_groups(), _labels()
    out = superclass_label_noise(labels, groups, p, torch.Generator().manual_seed(5))
    assert torch.equal(groups[out.labels], groups[labels])
    q, n = p * 4 / 5, labels.numel()
    se = math.sqrt(q * (1 - q) / n)
    assert abs(out.fraction_changed - q) <= 3 * se
    assert torch.equal(out.changed, out.labels != labels)
    assert out.report()["noise_num_changed"] == int(out.changed.sum())


def test_replacement_is_uniform_within_group():
    groups, labels = _cifar_like_groups(), _labels(60000)
    out = superclass_label_noise(labels, groups, 1.0, torch.Generator().manual_seed(0))
    # position of the new label among its group's members (sorted ids), pooled over groups
    members = torch.stack([torch.nonzero(groups == g).flatten() for g in range(20)])
    position = (members[groups[out.labels]] == out.labels[:, None]).int().argmax(1)
    freq = torch.bincount(position, minlength=5).double() / labels.numel()
    se = math.sqrt(0.2 * 0.8 / labels.numel())
    assert bool(((freq - 0.2).abs() <= 3 * se).all()), freq


def test_same_seed_same_labels_other_seed_other_labels():
    groups, labels = _cifar_like_groups(), _labels(5000)
    a = superclass_label_noise(labels, groups, 0.3, torch.Generator().manual_seed(7))
    b = superclass_label_noise(labels, groups, 0.3, torch.Generator().manual_seed(7))
    c = superclass_label_noise(labels, groups, 0.3, torch.Generator().manual_seed(8))
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, c.labels)


def test_p_zero_is_identity():
    groups, labels = _cifar_like_groups(), _labels(1000)
    out = superclass_label_noise(labels, groups, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(out.labels, labels) and out.fraction_changed == 0.0


@pytest.mark.parametrize("p", [-0.01, 1.01, float("nan")])
def test_p_outside_unit_interval_raises(p):
    with pytest.raises(ValueError, match=r"p must be in \[0.0, 1.0\]"):
        superclass_label_noise(_labels(10), _cifar_like_groups(), p, torch.Generator())


def test_block_groups_are_consecutive_fives():
    assert torch.equal(block_groups(100)[:12], torch.tensor([0] * 5 + [1] * 5 + [2] * 2))
    groups = block_groups(100)
    out = superclass_label_noise(_labels(2000), groups, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(out.labels // 5, _labels(2000) // 5)


def test_groups_from_pairs():
    groups = _cifar_like_groups()
    fine = torch.arange(100).repeat(3)
    assert torch.equal(groups_from_pairs(fine, groups[fine], 100), groups)
    coarse = groups[fine].clone()
    coarse[150] = (coarse[150] + 1) % 20
    with pytest.raises(ValueError, match="more than one coarse label"):
        groups_from_pairs(fine, coarse, 100)
    with pytest.raises(ValueError, match="no sample"):
        groups_from_pairs(fine[fine != 3], groups[fine[fine != 3]], 100)
