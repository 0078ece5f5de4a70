"""Tests of smoothtopk.losses: modules, the build_loss registry, parity with pytopk.

The formulas themselves are tested against float64 references in test_functional.py;
here each module must equal its function, and the noised losses must agree with the
paper authors' package pytopk: exactly given the same draws, and in distribution with
independent draws (means within 4 standard errors).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smoothtopk import functional as STF
from smoothtopk.losses import (
    LOSSES,
    CalibratedTopKHingeLoss,
    FocalLoss,
    ImbalancedNoisedTopKLoss,
    LDAMLoss,
    NoisedTopKLoss,
    TopKCvxHingeLoss,
    TopKHingeLoss,
    build_loss,
    loss_requires_class_counts,
)

N_SE = 4.0
COUNTS = [500, 3, 40, 17, 250, 9, 120, 60]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(n: int = 6, c: int = 8, seed: int = 0):
    x = torch.randn(n, c, generator=_gen(seed), dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=_gen(seed + 1))
    return x, y


# ------------------------------------------------------------------ modules


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_deterministic_modules_equal_functions(reduction):
    x, y = _batch()
    margins = STF.class_margins(COUNTS, 0.3)
    cases = [
        (TopKHingeLoss(3, 0.5, reduction), STF.topk_hinge_loss(x, y, 3, 0.5, reduction)),
        (TopKCvxHingeLoss(3, 0.5, reduction),
         STF.topk_cvx_hinge_loss(x, y, 3, 0.5, reduction)),
        (CalibratedTopKHingeLoss(3, 0.5, reduction),
         STF.calibrated_topk_hinge_loss(x, y, 3, 0.5, reduction)),
        (FocalLoss(1.5, reduction), STF.focal_loss(x, y, 1.5, reduction)),
        (LDAMLoss(COUNTS, 0.3, 20.0, reduction), STF.ldam_loss(x, y, margins, 20.0, reduction)),
    ]
    for module, want in cases:
        torch.testing.assert_close(module(x, y), want)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_noised_modules_equal_functions(reduction):
    x, y = _batch()
    bal = NoisedTopKLoss(2, 0.5, 4, 0.7, reduction, generator=_gen(3))
    want = STF.noised_topk_loss(x, y, 2, 0.5, 4, 0.7, generator=_gen(3), reduction=reduction)
    torch.testing.assert_close(bal(x, y), want, rtol=0, atol=0)
    imb = ImbalancedNoisedTopKLoss(COUNTS, 2, 0.5, 4, 0.3, 10.0, reduction, generator=_gen(4))
    want = STF.imbalanced_noised_topk_loss(
        x, y, STF.class_margins(COUNTS, 0.3), 2, 0.5, 4, 10.0, generator=_gen(4),
        reduction=reduction)
    torch.testing.assert_close(imb(x, y), want, rtol=0, atol=0)


def test_default_hyperparameters_follow_the_paper():
    bal = NoisedTopKLoss()
    assert (bal.k, bal.epsilon, bal.n_samples, bal.margin) == (5, 1.0, 5, 1.0)
    imb = ImbalancedNoisedTopKLoss(COUNTS)
    assert (imb.k, imb.epsilon, imb.n_samples, imb.max_margin, imb.scale) == (
        5, 0.01, 5, 0.2, 60.0)
    ldam = LDAMLoss(COUNTS)
    assert (ldam.max_margin, ldam.scale) == (0.2, 40.0)
    assert FocalLoss().gamma == 2.0


def test_margins_are_a_buffer():
    imb = ImbalancedNoisedTopKLoss(COUNTS, max_margin=0.25)
    ldam = LDAMLoss(torch.tensor(COUNTS), max_margin=0.25)
    for module in (imb, ldam):
        assert "margins" in dict(module.named_buffers())
        assert "margins" in module.state_dict()
        assert not list(module.parameters())
        torch.testing.assert_close(module.margins, STF.class_margins(COUNTS, 0.25))
        assert module.margins.max().item() == pytest.approx(0.25)
        assert module.to(torch.float64).margins.dtype == torch.float64


def test_noised_module_generator_reproducible():
    x, y = _batch()
    a = NoisedTopKLoss(3, generator=_gen(5))(x, y)
    b = NoisedTopKLoss(3, generator=_gen(5))(x, y)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_modules_low_precision_give_float32(dtype):
    x, y = _batch()
    x = x.to(dtype).requires_grad_()
    for name in LOSSES:
        kw = {"class_counts": COUNTS} if loss_requires_class_counts(name) else {}
        if name == "ce":
            continue  # torch's own loss: dtype behaviour is torch's
        out = build_loss(name, **kw)(x, y)
        assert out.dtype == torch.float32, name
        (grad,) = torch.autograd.grad(out, x)
        assert grad.dtype == dtype, name


def test_repr_names_hyperparameters():
    assert "epsilon=0.5" in repr(NoisedTopKLoss(epsilon=0.5))
    assert "num_classes=8" in repr(ImbalancedNoisedTopKLoss(COUNTS))
    assert "k=2" in repr(TopKHingeLoss(2))


# ------------------------------------------------------------------ registry


def test_registry_names():
    assert set(LOSSES) >= {"ce", "focal", "ldam", "hinge", "cvx_hinge", "cal_hinge",
                           "bal_topk", "imbal_topk"}


@pytest.mark.parametrize(("name", "cls"), [
    ("ce", nn.CrossEntropyLoss), ("focal", FocalLoss), ("ldam", LDAMLoss),
    ("hinge", TopKHingeLoss), ("cvx_hinge", TopKCvxHingeLoss),
    ("cal_hinge", CalibratedTopKHingeLoss), ("bal_topk", NoisedTopKLoss),
    ("imbal_topk", ImbalancedNoisedTopKLoss)])
def test_build_loss_builds_each_name(name, cls):
    kw = {"class_counts": COUNTS} if loss_requires_class_counts(name) else {}
    loss = build_loss(name, **kw)
    assert type(loss) is cls
    x, y = _batch()
    assert torch.isfinite(loss(x, y))


def test_build_loss_passes_kwargs():
    loss = build_loss("bal_topk", k=2, epsilon=0.2, n_samples=10)
    assert (loss.k, loss.epsilon, loss.n_samples) == (2, 0.2, 10)
    x, y = _batch()
    torch.testing.assert_close(build_loss("ce", label_smoothing=0.1)(x, y),
                               F.cross_entropy(x, y, label_smoothing=0.1))


def test_loss_requires_class_counts():
    assert {n for n in LOSSES if loss_requires_class_counts(n)} >= {"ldam", "imbal_topk"}
    for name in ("ce", "focal", "hinge", "cvx_hinge", "cal_hinge", "bal_topk"):
        assert not loss_requires_class_counts(name)


def test_build_loss_rejects_unknown_name():
    with pytest.raises(ValueError, match=r"unknown loss 'nope'.*'bal_topk'"):
        build_loss("nope")
    with pytest.raises(ValueError, match="unknown loss"):
        loss_requires_class_counts("nope")


def test_build_loss_rejects_unknown_kwarg():
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['tau'\].*'epsilon'"):
        build_loss("bal_topk", tau=1.0)


def test_build_loss_rejects_missing_class_counts():
    with pytest.raises(TypeError, match=r"needs argument\(s\) \['class_counts'\]"):
        build_loss("imbal_topk")


def test_registry_is_extensible(monkeypatch):
    def factory(class_counts, k: int = 1) -> nn.Module:
        return CalibratedTopKHingeLoss(k)

    monkeypatch.setitem(LOSSES, "custom", factory)
    assert loss_requires_class_counts("custom")
    assert build_loss("custom", class_counts=COUNTS, k=2).k == 2


# ------------------------------------------------------------------ validation


def test_modules_reject_bad_hyperparameters():
    with pytest.raises(ValueError, match="k must be"):
        NoisedTopKLoss(k=0)
    with pytest.raises(ValueError, match="epsilon must be in"):
        NoisedTopKLoss(epsilon=-1.0)
    with pytest.raises(ValueError, match="n_samples must be"):
        ImbalancedNoisedTopKLoss(COUNTS, n_samples=0)
    with pytest.raises(ValueError, match="scale must be in"):
        ImbalancedNoisedTopKLoss(COUNTS, scale=0.0)
    with pytest.raises(ValueError, match="gamma must be in"):
        FocalLoss(gamma=-0.5)
    with pytest.raises(ValueError, match="reduction must be one of"):
        TopKHingeLoss(reduction="avg")


@pytest.mark.parametrize("cls", [ImbalancedNoisedTopKLoss, LDAMLoss])
def test_modules_reject_non_positive_class_counts(cls):
    with pytest.raises(ValueError, match="class_counts must be finite and > 0"):
        cls([10, 0, 3])


@pytest.mark.parametrize("cls", [ImbalancedNoisedTopKLoss, LDAMLoss])
def test_modules_reject_class_counts_of_wrong_length(cls):
    x, y = _batch(c=8)
    with pytest.raises(ValueError, match="class_counts has 7 entries but input has 8"):
        cls(COUNTS[:7])(x, y)


def test_module_rejects_k_plus_one_above_num_classes():
    x, y = _batch(c=8)
    with pytest.raises(ValueError, match=r"k must be in \[1, 7\]"):
        NoisedTopKLoss(k=8)(x, y)


# ------------------------------------------------------------------ parity with pytopk


@pytest.fixture
def pytopk():
    return pytest.importorskip("pytopk")


def test_pytopk_margins_match(pytopk):
    ref = pytopk.ImbalNoisedTopK(k=2, epsilon=0.1, max_m=0.3, cls_num_list=COUNTS)
    torch.testing.assert_close(ImbalancedNoisedTopKLoss(COUNTS, max_margin=0.3).margins,
                               ref.m_list)


@pytest.mark.parametrize("kind", ["bal", "imbal"])
def test_pytopk_parity_given_the_same_draws(kind, pytopk):
    """pytopk's functional losses take the draws as Z (N, C, B); ours as noise (B, N, C)."""
    bal_noised_topk_loss = pytopk.functional.bal_noised_topk_loss
    imbal_noised_topk_loss = pytopk.functional.imbal_noised_topk_loss
    _noised_topk = pytopk.noised_topk._noised_topk

    x, y = _batch(10, 8, seed=7)
    x = x.float()
    noise = torch.randn(5, 10, 8, generator=_gen(8))
    z = noise.permute(1, 2, 0)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    if kind == "bal":
        ours = STF.noised_topk_loss(x1, y, 3, 0.5, 5, noise=noise)
        theirs = bal_noised_topk_loss(x2, y, 3, 0.5, _noised_topk, z)
    else:
        margins = STF.class_margins(COUNTS, 0.2)
        ours = STF.imbalanced_noised_topk_loss(x1, y, margins, 3, 0.5, 5, scale=60.0,
                                               noise=noise)
        theirs = imbal_noised_topk_loss(x2, y, 3, margins, 0.5, _noised_topk, z, 60.0)
    torch.testing.assert_close(ours, theirs)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.parametrize("kind", ["bal", "imbal"])
def test_pytopk_parity_in_distribution(kind, pytopk):
    """Our module and pytopk's, each with its own random draws, on M copies of a batch:
    the mean loss and the mean per-row gradient agree within 4 standard errors. pytopk
    only returns the batch mean, so the SE of the loss difference uses our per-copy
    variance for both samples (equal under the hypothesis tested)."""
    m, n, c, k, epsilon = 4000, 3, 8, 2, 0.7
    x = torch.tensor([[0.3, -0.2, 1.1, 0.9, -1.0, 0.0, 0.5, 0.4],
                      [2.0, 1.9, 2.1, -3.0, 1.5, 0.2, 1.95, 0.0],
                      [0.0, 0.0, 0.1, 0.0, 0.2, -0.1, 0.05, 0.0]])
    y = torch.tensor([4, 1, 2])
    if kind == "bal":
        ours = NoisedTopKLoss(k, epsilon, 5, reduction="none", generator=_gen(9))
        theirs = pytopk.BalNoisedTopK(k=k, epsilon=epsilon, n_sample=5)
    else:
        ours = ImbalancedNoisedTopKLoss(COUNTS, k, epsilon, 5, 0.2, 3.0, reduction="none",
                                        generator=_gen(9))
        theirs = pytopk.ImbalNoisedTopK(k=k, epsilon=epsilon, max_m=0.2, cls_num_list=COUNTS,
                                        scale=3.0, n_sample=5)
    xr = x.repeat(m, 1).requires_grad_()
    yr = y.repeat(m)
    per_row = ours(xr, yr)
    (g_ours,) = torch.autograd.grad(per_row.sum(), xr)
    with torch.random.fork_rng():
        torch.manual_seed(10)
        mean_theirs = theirs(xr, yr)
        (g_theirs,) = torch.autograd.grad(mean_theirs, xr)
    per_copy = per_row.detach().view(m, n).mean(1)
    se = math.sqrt(2 * per_copy.var().item() / m)
    assert abs(per_copy.mean().item() - mean_theirs.item()) <= N_SE * se
    g_ours = g_ours.view(m, n, c)
    g_theirs = g_theirs.view(m, n, c) * (m * n)  # pytopk averages over the m·n rows
    se_g = (g_ours.var(0) / m + g_theirs.var(0) / m).sqrt()
    assert ((g_ours.mean(0) - g_theirs.mean(0)).abs() <= N_SE * se_g + 1e-6).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_modules_on_cuda():
    x, y = _batch()
    gen = torch.Generator(device="cuda").manual_seed(0)
    for name in LOSSES:
        kw = {"class_counts": COUNTS} if loss_requires_class_counts(name) else {}
        if name in ("bal_topk", "imbal_topk"):
            kw["generator"] = gen
        loss = build_loss(name, **kw).cuda()
        xc = x.cuda().float().requires_grad_()
        out = loss(xc, y.cuda())
        out.backward()
        assert out.device.type == "cuda" and torch.isfinite(xc.grad).all()
