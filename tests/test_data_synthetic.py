"""Synthetic Pl@ntNet-like benchmark: long tail, genus ambiguity, determinism."""

import math

import pytest
import torch

from smoothtopk.data.longtail import share_of_rarest
from smoothtopk.data.synthetic import (
    FeatureImages,
    SyntheticConfig,
    genus_of_class,
    image_basis,
    lognormal_profile,
    make_synthetic,
)


@pytest.fixture(scope="module")
def default_data():
    return make_synthetic(SyntheticConfig(), seed=0)


def test_default_share_of_rarest_classes(default_data):
    counts = default_data.class_counts
    assert counts.numel() == 200 and int(counts.min()) >= 2
    share = share_of_rarest(counts, 0.8)
    assert 0.08 <= share <= 0.15
    assert default_data.info["share_of_rarest_80"] == pytest.approx(share)


def test_every_split_is_long_tailed(default_data):
    s = default_data
    train = s.class_counts.double()
    rare = torch.argsort(train)[:160]  # the 80% rarest training classes
    for y in (s.y_val, s.y_test):
        counts = torch.bincount(y, minlength=200).double()
        assert 0.05 <= float(counts[rare].sum() / counts.sum()) <= 0.2
        # expected eval count of every class is eval_ratio * train count (stochastic rounding)
        assert float(counts.sum()) == pytest.approx(0.125 * float(train.sum()), rel=0.05)
        assert bool(((counts - 0.125 * train).abs() < 1).all())


def test_lognormal_profile_matches_lorenz_formula():
    # without clipping, the share of the 80% rarest is Phi(Phi^-1(0.8) - sigma)
    c, sigma = 20000, 2.0
    counts = lognormal_profile(c, 1e6, sigma, 1, 10**12)
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    expected = phi(0.8416212335729143 - sigma)
    assert share_of_rarest(counts, 0.8) == pytest.approx(expected, abs=2e-3)
    assert bool((counts[:-1] >= counts[1:]).all())


def test_deterministic_from_seed():
    cfg = SyntheticConfig(num_classes=30, genus_size=3, count_median=5, count_max=50)
    a, b, c = make_synthetic(cfg, 1), make_synthetic(cfg, 1), make_synthetic(cfg, 2)
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.x_train[:10], c.x_train[:10])


def _fit_linear(x, y, num_classes, iters=60):
    mean, std = x.mean(0), x.std(0)
    w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=iters, history_size=10,
                            line_search_fn="strong_wolfe")
    xs = (x - mean) / std

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ w + b, y) + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda z: ((z - mean) / std) @ w.detach() + b.detach()


def _topk(scores, y, k):
    return float((scores.topk(k, 1).indices == y[:, None]).any(1).double().mean())


def test_genus_ambiguity_linear_top5_exceeds_top1(default_data):
    s = default_data
    model = _fit_linear(s.x_train, s.y_train, s.num_classes)
    scores = model(s.x_test)
    top1, top5 = _topk(scores, s.y_test, 1), _topk(scores, s.y_test, 5)
    assert top5 - top1 >= 0.15, (top1, top5)
    assert top5 >= 0.8  # the genus is found: the data are learnable, not noise
    # confusions stay mostly inside the genus
    genus = genus_of_class(SyntheticConfig())
    wrong = scores.argmax(1) != s.y_test
    same_genus = genus[scores.argmax(1)[wrong]] == genus[s.y_test[wrong]]
    assert float(same_genus.double().mean()) > 0.5


def test_genus_label_noise_stays_in_genus():
    cfg = SyntheticConfig(num_classes=40, genus_size=4, count_median=30, count_max=200,
                          noise_p=0.5)
    noisy = make_synthetic(cfg, 3)
    clean = make_synthetic(SyntheticConfig(**{**cfg.__dict__, "noise_p": 0.0}), 3)
    genus = genus_of_class(cfg)
    assert torch.equal(genus[noisy.y_train], genus[clean.y_train])
    assert torch.equal(noisy.x_train, clean.x_train)
    assert torch.equal(noisy.y_train_clean, clean.y_train)
    assert torch.equal(noisy.y_test, clean.y_test)
    changed = float((noisy.y_train != clean.y_train).double().mean())
    assert noisy.info["noise_fraction_changed"] == pytest.approx(changed)
    q, n = 0.5 * 3 / 4, noisy.y_train.numel()
    assert abs(changed - q) <= 3 * math.sqrt(q * (1 - q) / n)


def test_image_variant_shape_and_linearity():
    basis = image_basis(8, (3, 16, 16), seed=0)
    assert basis.shape == (8, 3 * 16 * 16)
    x = torch.randn(5, 8)
    y = torch.arange(5)
    ds = FeatureImages(x, y, basis, (3, 16, 16))
    img, label = ds[2]
    assert img.shape == (3, 16, 16) and int(label) == 2
    batch, labels = ds[torch.tensor([0, 1])]
    assert batch.shape == (2, 3, 16, 16) and labels.tolist() == [0, 1]
    # the features are recoverable from the image (the map is injective)
    recovered = torch.linalg.lstsq(basis.T, img.flatten()[:, None]).solution.squeeze(1)
    torch.testing.assert_close(recovered, x[2], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kwargs", [
    {"num_classes": 1}, {"genus_size": 0}, {"count_min": 0}, {"count_max": 1},
    {"noise_p": 1.5}, {"noise_p": -0.1}, {"class_spread": -1.0}, {"count_median": 0.0},
])
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        SyntheticConfig(**kwargs)
