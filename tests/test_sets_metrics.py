"""Tests of smoothtopk.set_metrics against loops over samples and classes."""

from __future__ import annotations

import math

import pytest
import torch

from smoothtopk.metrics import macro_topk_accuracy, topk_accuracy
from smoothtopk.set_metrics import (
    coverage,
    coverage_by_frequency_bin,
    macro_coverage,
    per_class_coverage,
    set_size_distribution,
    set_size_summary,
    set_sizes,
)
from smoothtopk.sets import TopKSets


def random_sets(n: int, c: int, seed: int, p: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sets = torch.rand(n, c, generator=g) < p
    target = torch.randint(0, c, (n,), generator=g)
    return sets, target


def test_coverage_per_class_and_macro_match_loops():
    sets, target = random_sets(300, 7, seed=0)
    target[target == 6] = 5  # class 6 absent from the evaluated split
    hits = [bool(sets[i, y]) for i, y in enumerate(target.tolist())]
    assert float(coverage(sets, target)) == pytest.approx(sum(hits) / len(hits), abs=1e-6)
    per = per_class_coverage(sets, target)
    for c in range(6):
        mine = [h for h, y in zip(hits, target.tolist(), strict=True) if y == c]
        assert float(per[c]) == pytest.approx(sum(mine) / len(mine), abs=1e-6)
    assert math.isnan(float(per[6]))
    expected_macro = sum(float(per[c]) for c in range(6)) / 6
    assert float(macro_coverage(sets, target)) == pytest.approx(expected_macro, abs=1e-6)


def test_set_sizes_distribution_and_summary():
    sets, _ = random_sets(200, 5, seed=1)
    sets[0] = False  # one empty set
    sizes = [sum(row) for row in sets.tolist()]
    assert set_sizes(sets).tolist() == sizes
    dist = set_size_distribution(sets)
    assert dist.shape == (6,)
    assert dist.tolist() == [sizes.count(s) for s in range(6)]
    summary = set_size_summary(sets)
    mean = sum(sizes) / len(sizes)
    assert summary["mean"] == pytest.approx(mean)
    assert summary["std"] == pytest.approx(math.sqrt(sum((s - mean) ** 2 for s in sizes) / 200))
    assert summary["min"] == 0 and summary["max"] == max(sizes)
    assert summary["empty"] == pytest.approx(sizes.count(0) / 200)


def test_topk_sets_metrics_equal_topk_accuracy():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(400, 12, generator=g)  # continuous: no ties at the K-th score
    target = torch.randint(0, 12, (400,), generator=g)
    for k in (1, 3, 5):
        sets = TopKSets(k).fit(logits, target).predict(logits)
        assert float(coverage(sets, target)) == pytest.approx(
            float(topk_accuracy(logits, target, k)), abs=1e-6)
        assert float(macro_coverage(sets, target)) == pytest.approx(
            float(macro_topk_accuracy(logits, target, k)), abs=1e-6)


def test_coverage_by_frequency_bin_matches_loops():
    sets, target = random_sets(500, 6, seed=3)
    counts = [3, 10, 11, 400, 700, 5000]  # bins: 0-10 {0,1}, 10-50 {2}, 50-500 {3},
    edges = (0, 10, 50, 500, 2000, math.inf)  # 500-2000 {4}, >2000 {5}
    result = coverage_by_frequency_bin(sets, target, counts, edges)
    bins = [[0, 1], [2], [3], [4], [5]]
    assert result["labels"] == ["0-10", "10-50", "50-500", "500-2000", ">2000"]
    for b, members in enumerate(bins):
        idx = [i for i, y in enumerate(target.tolist()) if y in members]
        hits = [bool(sets[i, target[i]]) for i in idx]
        sizes = [int(sets[i].sum()) for i in idx]
        assert result["num_classes"][b] == len(members)
        assert result["num_samples"][b] == len(idx)
        assert result["coverage"][b] == pytest.approx(sum(hits) / len(hits), abs=1e-6)
        assert result["mean_set_size"][b] == pytest.approx(sum(sizes) / len(sizes), abs=1e-5)
        per = [sum(bool(sets[i, c]) for i in idx if target[i] == c)
               / sum(1 for i in idx if target[i] == c) for c in members]
        assert result["macro_coverage"][b] == pytest.approx(sum(per) / len(per), abs=1e-6)


def test_bad_inputs():
    sets, target = random_sets(10, 4, seed=4)
    with pytest.raises(TypeError, match="sets must be a boolean"):
        coverage(sets.float(), target)
    with pytest.raises(ValueError, match="sets must be 2-D"):
        set_sizes(sets[0])
    with pytest.raises(ValueError, match=r"target must have shape \(10,\)"):
        coverage(sets, target[:9])
    with pytest.raises(ValueError, match="class_counts must have one entry per class"):
        coverage_by_frequency_bin(sets, target, [1, 2, 3])
