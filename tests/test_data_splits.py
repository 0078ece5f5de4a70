"""Seeded, class-stratified train/validation split."""

import pytest
import torch

from smoothtopk.data.splits import stratified_split


def test_stratified_split_counts_disjoint_and_seeded():
    labels = torch.arange(7).repeat_interleave(torch.tensor([50, 20, 10, 4, 2, 1, 13]))
    labels = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))]
    train, val = stratified_split(labels, 0.1, torch.Generator().manual_seed(1))
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(labels.numel()))
    val_counts = torch.bincount(labels[val], minlength=7).tolist()
    # round(0.1 * n), but every class keeps one training sample
    assert val_counts == [5, 2, 1, 0, 0, 0, 1]
    assert bool((torch.bincount(labels[train], minlength=7) >= 1).all())
    again = stratified_split(labels, 0.1, torch.Generator().manual_seed(1))
    other = stratified_split(labels, 0.1, torch.Generator().manual_seed(2))
    assert torch.equal(again[1], val) and not torch.equal(other[1], val)


def test_val_fraction_range():
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0.0, 1.0\)"):
        stratified_split(torch.zeros(4, dtype=torch.int64), 1.0, torch.Generator())
    train, val = stratified_split(torch.zeros(4, dtype=torch.int64), 0.0, torch.Generator())
    assert train.tolist() == [0, 1, 2, 3] and val.numel() == 0
