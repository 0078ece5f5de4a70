"""Long-tail profile, per-class subsampling and the Lorenz share."""

import pytest
import torch

from smoothtopk.data.longtail import exponential_profile, share_of_rarest, subsample_per_class


def test_exponential_profile():
    counts = exponential_profile(5000, 10, 100.0)
    expected = [round(5000 * 100 ** (-i / 9)) for i in range(10)]
    assert counts.tolist() == expected and counts[-1] == 50
    assert exponential_profile(7, 4, 1.0).tolist() == [7] * 4
    assert exponential_profile(10, 3, 1e6).tolist()[-1] == 1  # at least one sample
    with pytest.raises(ValueError, match=r"rho must be in \[1.0, inf\]"):
        exponential_profile(10, 3, 0.9)


def test_subsample_per_class():
    labels = torch.arange(5).repeat_interleave(20)[torch.randperm(100)]
    keep = subsample_per_class(labels, torch.tensor([20, 5, 0, 1, 3]),
                               torch.Generator().manual_seed(0))
    assert torch.bincount(labels[keep], minlength=5).tolist() == [20, 5, 0, 1, 3]
    assert torch.equal(keep, keep.unique())
    with pytest.raises(ValueError, match="class 1 has 20 samples, 21 were requested"):
        subsample_per_class(labels, torch.tensor([1, 21]), torch.Generator())


def test_share_of_rarest_brute_force():
    counts = torch.tensor([1, 100, 3, 7, 50, 2, 9, 400, 5, 20])
    rarest8 = sum(sorted(counts.tolist())[:8])
    assert share_of_rarest(counts, 0.8) == pytest.approx(rarest8 / int(counts.sum()))
    assert share_of_rarest(counts, 1.0) == pytest.approx(1.0)
    assert share_of_rarest(counts, 0.0) == 0.0
