"""Tests of smoothtopk.svm: the smoothed top-K SVM loss (Berrada et al.).

The reference enumerates every K-subset (itertools.combinations) in float64 and evaluates
the two log-sum-exps of the definition. Its own rounding is about ``eps64·τ·(|LSE| + 1)``
(a difference of two log-sum-exps), which sets the absolute part of the tolerance; the
relative part is the acceptance bound 1e-6.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import smoothtopk
from smoothtopk import svm
from smoothtopk.losses import LOSSES, build_loss
from smoothtopk.svm import SmoothTopKSVMLoss, smooth_topk_svm

EPS64 = torch.finfo(torch.float64).eps


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _brute(s: torch.Tensor, y: torch.Tensor, k: int, tau: float, alpha: float):
    """Per-row loss from the definition and its rounding scale, float64."""
    s, c = s.double(), s.shape[1]
    subsets = torch.tensor(list(itertools.combinations(range(c), k)))  # (M, K)
    sums = s[:, subsets].sum(-1) / k  # (N, M)
    has_y = (subsets.unsqueeze(0) == y.view(-1, 1, 1)).any(-1)  # (N, M)
    first = (alpha * (~has_y) + sums) / tau
    second = (sums / tau).masked_fill(~has_y, -math.inf)
    lse1, lse2 = torch.logsumexp(first, 1), torch.logsumexp(second, 1)
    scale = tau * (torch.maximum(lse1.abs(), lse2.abs()) + 1.0)
    return tau * (lse1 - lse2), scale


def _assert_matches_brute(s, y, k, tau, alpha):
    out = smooth_topk_svm(s, y, k, tau, alpha, reduction="none")
    ref, scale = _brute(s, y, k, tau, alpha)
    err = (out - ref).abs()
    bound = 1e-6 * ref.abs() + 64 * EPS64 * scale
    assert bool((err <= bound).all()), (k, tau, alpha, (err - bound).max().item())


def _scores(kind: str, n: int, c: int, seed: int) -> torch.Tensor:
    g = _gen(seed)
    if kind == "normal":
        return torch.randn(n, c, generator=g, dtype=torch.float64) * 2
    if kind == "ties":  # small integers: many exact ties
        return torch.randint(-2, 3, (n, c), generator=g).double()
    # "spread": some rows with huge gaps (hard rows, split path), some moderate
    s = torch.randn(n, c, generator=g, dtype=torch.float64)
    return s * torch.tensor([1.0, 30.0, 300.0, 3000.0], dtype=torch.float64).repeat(n)[:n, None]


@pytest.mark.parametrize("kind", ["normal", "ties", "spread"])
@pytest.mark.parametrize("c", range(2, 13))
def test_matches_subset_enumeration(c, kind):
    for k in range(1, c):
        for i, (tau, alpha) in enumerate([(1.0, 1.0), (0.1, 1.0), (3.0, 0.0), (0.02, 0.5)]):
            s = _scores(kind, 8, c, seed=100 * c + 10 * k + i)
            y = torch.randint(0, c, (8,), generator=_gen(c + k + i))
            _assert_matches_brute(s, y, k, tau, alpha)


@pytest.mark.parametrize("route", ["log_bulk", "branch_free"])
def test_other_routes_match_subset_enumeration(route, monkeypatch):
    """The log-space bulk (used when K·Λ > 700) and the branch-free route of accelerators
    (no row skipping, always split), forced on CPU."""
    if route == "log_bulk":
        monkeypatch.setattr(svm, "_LINEAR_RANGE", 0.0)
    else:
        monkeypatch.setattr(svm, "_syncs_freely", lambda device: False)
    for c in (3, 7, 10):
        for k in range(1, c):
            for kind in ("normal", "spread"):
                s = _scores(kind, 8, c, seed=7 * c + k)
                y = torch.randint(0, c, (8,), generator=_gen(c * k))
                _assert_matches_brute(s, y, k, 0.5, 1.0)


def test_split_route_matches_subset_enumeration():
    """One row with a dominant score sends the whole (CPU) batch through the top/bulk
    split; all other rows must be unaffected."""
    c, k, tau = 9, 3, 0.1
    s = _scores("normal", 6, c, seed=3)
    y = torch.randint(0, c, (6,), generator=_gen(4))
    s[0, (y[0] + 1) % c] = 500.0
    _assert_matches_brute(s, y, k, tau, 1.0)


@pytest.mark.parametrize(("c", "k", "tau"), [(6, 2, 0.3), (9, 4, 1.0), (12, 11, 0.5),
                                             (40, 5, 1.0), (40, 5, 0.05)])
def test_gradcheck(c, k, tau):
    s = (torch.randn(4, c, generator=_gen(c + k), dtype=torch.float64) * 2).requires_grad_()
    y = torch.randint(0, c, (4,), generator=_gen(k))
    assert torch.autograd.gradcheck(lambda x: smooth_topk_svm(x, y, k, tau, 1.0, "none"), (s,))


def test_gradcheck_split_and_log_routes(monkeypatch):
    s = torch.randn(3, 10, generator=_gen(0), dtype=torch.float64) * 2
    y = torch.tensor([1, 5, 9])
    s[0, 2] = 400.0  # split route
    s.requires_grad_()

    def fn(x: torch.Tensor) -> torch.Tensor:
        return smooth_topk_svm(x, y, 3, 0.1, 1.0, "none")

    assert torch.autograd.gradcheck(fn, (s,))
    monkeypatch.setattr(svm, "_LINEAR_RANGE", 0.0)
    assert torch.autograd.gradcheck(fn, (s,))


@pytest.mark.parametrize("k", [5, 10])
def test_float32_extremes_finite_and_accurate(k):
    """No NaN/inf in value or gradient in float32 for every τ and scores up to 1e4, and
    the result agrees with the float64 computation on the same scores."""
    c, n = 1081, 12
    y = torch.randint(0, c, (n,), generator=_gen(k))
    base = torch.randn(n, c, generator=_gen(k + 1))
    for tau in (1e-3, 1e-2, 0.1, 1.0, 10.0):
        for scale in (1.0, 1e2, 1e4):
            s32 = (base * scale).requires_grad_()
            loss32 = smooth_topk_svm(s32, y, k, tau)
            loss32.backward()
            assert torch.isfinite(loss32) and bool(torch.isfinite(s32.grad).all())
            s64 = s32.detach().double().requires_grad_()
            loss64 = smooth_topk_svm(s64, y, k, tau)
            loss64.backward()
            assert abs(loss32.item() - loss64.item()) <= 1e-5 * abs(loss64.item())
            gap = (s32.grad.double() - s64.grad).abs().max().item()
            assert gap <= 1e-5 * s64.grad.abs().max().item()


def test_large_c_and_k_closed_form():
    """Equal scores: σ_j = C(n, j), so L = τ·softplus(α/τ + log((n−K+1)/K)), at C = 1e5."""
    c, k, tau, alpha = 100_000, 20, 0.5, 1.0
    s = torch.zeros(2, c, requires_grad=True)
    y = torch.tensor([0, c - 1])
    loss = smooth_topk_svm(s, y, k, tau, alpha, reduction="none")
    n = c - 1
    ref = tau * math.log1p(math.exp(alpha / tau + math.log((n - k + 1) / k)))
    torch.testing.assert_close(loss, torch.full((2,), ref), rtol=1e-6, atol=0.0)
    loss.sum().backward()
    assert bool(torch.isfinite(s.grad).all())
    # the gradient sums to zero on every row (shift invariance)
    assert s.grad.sum(1).abs().max().item() <= 1e-6


def test_large_c_float32_matches_float64():
    """C = 1e5, K = 20 on random scores: float32 (linear bulk) against float64 (whose
    K·Λ > 700 sends the bulk through the log-space product)."""
    c, k = 100_000, 20
    s = torch.randn(2, c, generator=_gen(5)) * 3
    y = torch.tensor([3, 77])
    s32, s64 = s.clone().requires_grad_(), s.double().requires_grad_()
    l32, l64 = smooth_topk_svm(s32, y, k, 0.2), smooth_topk_svm(s64, y, k, 0.2)
    (l32 + l64).backward()
    assert abs(l32.item() - l64.item()) <= 1e-5 * abs(l64.item())
    gap = (s32.grad.double() - s64.grad).abs().max().item()
    assert gap <= 1e-5 * s64.grad.abs().max().item()


def _hinge(s: torch.Tensor, y: torch.Tensor, k: int, alpha: float) -> torch.Tensor:
    """Hard top-K SVM argument ``α + (top_K(s∖y) − s_y)/K``."""
    others = s.scatter(1, y[:, None], -math.inf)
    return alpha + (others.topk(k, 1).values[:, -1] - s.gather(1, y[:, None])[:, 0]) / k


def test_hard_rows_are_the_hinge_with_softplus():
    """Scores 10 apart at τ = 0.05: every gap is far beyond the threshold, so each row is
    τ·softplus(hinge/τ), including rows whose hinge argument is 0."""
    g = _gen(1)
    s = torch.stack([torch.randperm(30, generator=g) for _ in range(8)]).double() * 10
    y = torch.randint(0, 30, (8,), generator=g)
    k, tau, alpha = 4, 0.05, 10.0
    arg = _hinge(s, y, k, alpha) / tau
    expected = tau * torch.logaddexp(arg, torch.zeros_like(arg))
    torch.testing.assert_close(smooth_topk_svm(s, y, k, tau, alpha, "none"), expected,
                               rtol=1e-12, atol=0.0)


def test_small_tau_tends_to_the_hinge():
    """0 <= L − max(0, hinge) <= τ·log C(C, K) (log-sum-exp against max)."""
    s = torch.randn(6, 30, generator=_gen(2), dtype=torch.float64)
    y = torch.randint(0, 30, (6,), generator=_gen(3))
    k, tau = 4, 1e-4
    diff = smooth_topk_svm(s, y, k, tau, 1.0, "none") - _hinge(s, y, k, 1.0).clamp_min(0)
    assert bool((diff >= -1e-12).all())
    assert bool((diff <= tau * math.log(math.comb(30, k))).all())


def test_k1_is_scaled_cross_entropy():
    s = torch.randn(5, 7, generator=_gen(3))
    y = torch.randint(0, 7, (5,), generator=_gen(4))
    tau, alpha = 0.5, 0.7
    margin = alpha * (1 - F.one_hot(y, 7).float())
    ref = tau * F.cross_entropy((s + margin) / tau, y, reduction="none")
    torch.testing.assert_close(smooth_topk_svm(s, y, 1, tau, alpha, "none"), ref)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_difftopk_parity():
    difftopk = pytest.importorskip("difftopk")
    compared = 0
    for seed, (c, k, tau) in enumerate([(20, 2, 1.0), (50, 5, 1.0), (100, 5, 0.5),
                                        (100, 3, 2.0), (300, 10, 1.0)]):
        s = torch.randn(16, c, generator=_gen(seed)) * 2
        y = torch.randint(0, c, (16,), generator=_gen(seed + 50))
        peer = difftopk.SmoothTopKLoss(c, k, tau)(s.clone(), y)
        if not bool(torch.isfinite(peer)):
            continue
        ours = smooth_topk_svm(s, y, k, tau, alpha=1.0)
        assert abs(ours.item() - peer.item()) <= 1e-4 * abs(peer.item()), (c, k, tau)
        compared += 1
    assert compared >= 4


def test_reductions_dtypes_and_module():
    s = torch.randn(6, 9, generator=_gen(8))
    y = torch.randint(0, 9, (6,), generator=_gen(9))
    per = smooth_topk_svm(s, y, 3, 0.5, 1.0, "none")
    assert per.shape == (6,) and per.dtype == torch.float32 and bool((per >= 0).all())
    torch.testing.assert_close(smooth_topk_svm(s, y, 3, 0.5, 1.0, "sum"), per.sum())
    torch.testing.assert_close(smooth_topk_svm(s, y, 3, 0.5, 1.0), per.mean())
    assert smooth_topk_svm(s.double(), y, 3).dtype == torch.float64
    half = smooth_topk_svm(s.half(), y, 3, 0.5, 1.0, "none")
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, per, rtol=1e-2, atol=1e-3)
    module = SmoothTopKSVMLoss(k=3, tau=0.5, alpha=1.0, reduction="none")
    torch.testing.assert_close(module(s, y), per)
    assert "k=3" in repr(module)


def test_registry_and_exports():
    assert smoothtopk.SmoothTopKSVMLoss is SmoothTopKSVMLoss
    assert smoothtopk.functional.smooth_topk_svm is smooth_topk_svm
    s = torch.randn(4, 8, generator=_gen(10))
    y = torch.randint(0, 8, (4,), generator=_gen(11))
    loss = build_loss("smooth_topk", k=3, tau=0.5)
    torch.testing.assert_close(loss(s, y), smooth_topk_svm(s, y, 3, 0.5))
    top1 = build_loss("smooth_top1", tau=0.5)
    torch.testing.assert_close(top1(s, y), smooth_topk_svm(s, y, 1, 0.5))
    assert "smooth_topk" in LOSSES and "smooth_top1" in LOSSES
    with pytest.raises(TypeError, match="k"):
        build_loss("smooth_top1", k=3)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tau": 0.0}, ValueError, "tau"),
        ({"tau": -1.0}, ValueError, "tau"),
        ({"alpha": -0.1}, ValueError, "alpha"),
        ({"k": 0}, ValueError, r"k must be in \[1, 5\]"),
        ({"k": 6}, ValueError, r"k must be in \[1, 5\]"),
        ({"k": 2.0}, TypeError, "k must be an int"),
        ({"reduction": "avg"}, ValueError, "reduction"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    s = torch.randn(3, 6)
    y = torch.tensor([0, 1, 5])
    with pytest.raises(error, match=match):
        smooth_topk_svm(s, y, **kwargs)


def test_bad_input_and_target():
    s = torch.randn(3, 6)
    with pytest.raises(ValueError, match="target"):
        smooth_topk_svm(s, torch.tensor([0, 1, 6]))
    with pytest.raises(TypeError, match="target"):
        smooth_topk_svm(s, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="input"):
        smooth_topk_svm(torch.randn(6), torch.tensor([0]))
    with pytest.raises(TypeError, match="input"):
        smooth_topk_svm(torch.ones(3, 6, dtype=torch.long), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="k"):
        SmoothTopKSVMLoss(k=0)
    with pytest.raises(ValueError, match="tau"):
        SmoothTopKSVMLoss(tau=0.0)
