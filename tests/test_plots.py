"""Figures: level-set values against direct formulas, Lorenz points, PNG files."""

from __future__ import annotations

import math

import pytest
import torch

from smoothtopk.plots import (
    SEED_PANELS,
    level_set_values,
    lorenz_points,
    plane_scores,
    plot_level_sets,
    plot_run_figures,
)

PNG = b"\x89PNG\r\n\x1a\n"


def brute(scores: torch.Tensor, fn) -> torch.Tensor:
    values = torch.tensor([fn(sorted(s.tolist(), reverse=True), s.tolist()) for s in scores],
                          dtype=torch.float64)
    return values / values.max()


def test_plane_is_sum_zero_and_label_points_down():
    u, v, scores = plane_scores(resolution=5, extent=2.0)
    assert scores.shape == (25, 3)
    assert torch.allclose(scores.sum(1), torch.zeros(25, dtype=torch.float64), atol=1e-12)
    # straight down (u = 0, v < 0) raises s_3 above the two others
    bottom = scores[(u.reshape(-1) == 0) & (v.reshape(-1) < 0)]
    assert bool((bottom[:, 2] > bottom[:, 0]).all() and (bottom[:, 2] > bottom[:, 1]).all())


@pytest.mark.parametrize("loss,k,formula", [
    ("ce", 2, lambda ordered, s: math.log(sum(math.exp(x) for x in s)) - s[2]),
    ("topk_error", 2, lambda ordered, s: float(ordered[1] > s[2])),
    ("topk_error", 1, lambda ordered, s: float(ordered[0] > s[2])),
    ("hinge", 2, lambda ordered, s: max(0.0, 1 + sorted(s[:2], reverse=True)[1] - s[2])),
    ("cal_hinge", 2, lambda ordered, s: max(0.0, 1 + ordered[2] - s[2])),
    ("cal_hinge", 1, lambda ordered, s: max(0.0, 1 + ordered[1] - s[2])),
])
def test_level_set_values_match_formula(loss, k, formula):
    u, v, values = level_set_values(loss, k, resolution=21)
    _, _, scores = plane_scores(resolution=21)
    assert values.shape == u.shape == v.shape == (21, 21)
    assert float(values.max()) == pytest.approx(1.0)
    expected = brute(scores, formula).reshape(21, 21)
    assert torch.allclose(values, expected, atol=1e-6)


def test_noised_level_set_tends_to_calibrated_hinge_as_epsilon_vanishes():
    _, _, noised = level_set_values("bal_topk", 2, epsilon=1e-7, resolution=21)
    _, _, hinge = level_set_values("cal_hinge", 2, resolution=21)
    assert torch.allclose(noised, hinge, atol=1e-5)
    _, _, smooth = level_set_values("bal_topk", 2, epsilon=1.0, resolution=21)
    assert not torch.allclose(smooth, hinge, atol=1e-2)


def test_unknown_level_set_loss():
    with pytest.raises(ValueError, match="loss must be one of"):
        level_set_values("nope")


def test_level_set_figure(tmp_path):
    path = plot_level_sets(SEED_PANELS, tmp_path / "sub" / "ls.png", k=2, resolution=31)
    assert path.read_bytes()[:8] == PNG


def test_lorenz_points():
    xs, ys = lorenz_points([2, 1, 1])
    assert xs == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert ys == pytest.approx([0, 0.25, 0.5, 1])


def test_run_figures(tmp_path):
    history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1),
                "train_top3": 0.5, "val_top3": 0.4, "val_macro_top3": 0.3} for e in range(3)]
    bins = {"labels": ["0-10", ">10"], "k": [1, 3], "num_classes": [2, 1],
            "accuracy": [[0.1, None], [0.5, 0.9]]}
    results = {"k": 3, "epochs": history, "train_class_counts": [1, 5, 50],
               "test": {"by_frequency_bin": bins}}
    paths = plot_run_figures(results, tmp_path)
    assert [p.name for p in paths] == ["learning_curves.png", "accuracy_by_frequency_bin.png",
                                       "lorenz_curve.png"]
    assert all(p.read_bytes()[:8] == PNG for p in paths)
