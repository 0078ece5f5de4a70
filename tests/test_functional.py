"""Tests of smoothtopk.functional against plain float64 references written from the formulas.

References loop over samples and classes in Python (``sorted``, ``math.exp``). Random
losses are checked (i) exactly, given the noise draws, and (ii) statistically: means over
independent draws against a 1e5-sample estimate, within 4 standard errors of the
difference of the two means.
"""

from __future__ import annotations

import math

import pytest
import torch

from smoothtopk import functional as STF
from smoothtopk import perturbed

N_SE = 4.0
CLASS_SIZES = (2, 3, 7, 50)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inputs(n: int, c: int, seed: int, tied: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if tied:  # small integers: many ties, including with the label's score
        x = torch.randint(-2, 3, (n, c), generator=_gen(seed)).double()
    else:
        x = 2.0 * torch.randn(n, c, generator=_gen(seed), dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=_gen(seed + 1))
    return x, y


def _desc(values) -> list[float]:
    return sorted(values, reverse=True)


# ------------------------------------------------------------------ float64 references


def ref_topk_error(s: list[float], y: int, k: int) -> float:
    return 1.0 if _desc(s)[k - 1] > s[y] else 0.0


def ref_hinge(s: list[float], y: int, k: int, margin: float) -> float:
    others = [s[j] for j in range(len(s)) if j != y]
    return max(0.0, margin + _desc(others)[k - 1] - s[y])


def ref_cvx_hinge(s: list[float], y: int, k: int, margin: float) -> float:
    shifted = [s[j] + (0.0 if j == y else margin) for j in range(len(s))]
    return max(0.0, sum(_desc(shifted)[:k]) / k - s[y])


def ref_cal_hinge(s: list[float], y: int, k: int, margin: float) -> float:
    return max(0.0, margin + _desc(s)[k] - s[y])


def ref_noised(s, y, k, margin, epsilon, draws, scale=1.0) -> float:
    """scale · (margin + (1/B) Σ_b (s + ε z_b)_(k+1) − s_y)_+ for the given draws z_b."""
    top = 0.0
    for z in draws:
        top += _desc([s[j] + epsilon * z[j] for j in range(len(s))])[k] / len(draws)
    return scale * max(0.0, margin + top - s[y])


def _log_softmax_at(z: list[float], y: int) -> float:
    top = max(z)
    return z[y] - top - math.log(sum(math.exp(v - top) for v in z))


def ref_focal(s: list[float], y: int, gamma: float) -> float:
    log_p = _log_softmax_at(s, y)
    return -((1.0 - math.exp(log_p)) ** gamma) * log_p


def ref_ldam(s: list[float], y: int, margins: list[float], scale: float) -> float:
    z = [scale * (s[j] - (margins[y] if j == y else 0.0)) for j in range(len(s))]
    return -_log_softmax_at(z, y)


def ref_margins(counts: list[float], max_margin: float) -> list[float]:
    low = min(counts)
    return [max_margin * (low / n) ** 0.25 for n in counts]


def _check_rows(got: torch.Tensor, x: torch.Tensor, y: torch.Tensor, ref) -> None:
    assert got.shape == (x.shape[0],)
    for i in range(x.shape[0]):
        want = ref(x[i].tolist(), int(y[i]))
        assert got[i].item() == pytest.approx(want, abs=1e-10, rel=1e-10), i


# ------------------------------------------------------------------ deterministic losses


@pytest.mark.parametrize("c", CLASS_SIZES)
@pytest.mark.parametrize("tied", [True, False])
def test_topk_error_matches_reference(c, tied):
    x, y = _inputs(8, c, seed=c, tied=tied)
    for k in range(1, c + 1):
        got = STF.topk_error(x, y, k, reduction="none")
        _check_rows(got, x, y, lambda s, t, k=k: ref_topk_error(s, t, k))


@pytest.mark.parametrize("c", CLASS_SIZES)
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("margin", [1.0, 0.3])
def test_topk_hinge_matches_reference(c, tied, margin):
    x, y = _inputs(8, c, seed=2 * c, tied=tied)
    for k in range(1, c):
        got = STF.topk_hinge_loss(x, y, k, margin, reduction="none")
        _check_rows(got, x, y, lambda s, t, k=k: ref_hinge(s, t, k, margin))


@pytest.mark.parametrize("c", CLASS_SIZES)
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("margin", [1.0, 0.3])
def test_topk_cvx_hinge_matches_reference(c, tied, margin):
    x, y = _inputs(8, c, seed=3 * c, tied=tied)
    for k in range(1, c + 1):
        got = STF.topk_cvx_hinge_loss(x, y, k, margin, reduction="none")
        _check_rows(got, x, y, lambda s, t, k=k: ref_cvx_hinge(s, t, k, margin))


@pytest.mark.parametrize("c", CLASS_SIZES)
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("margin", [1.0, 0.3])
def test_calibrated_hinge_matches_reference(c, tied, margin):
    x, y = _inputs(8, c, seed=4 * c, tied=tied)
    for k in range(1, c):
        got = STF.calibrated_topk_hinge_loss(x, y, k, margin, reduction="none")
        _check_rows(got, x, y, lambda s, t, k=k: ref_cal_hinge(s, t, k, margin))


@pytest.mark.parametrize("c", CLASS_SIZES)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_matches_reference(c, gamma):
    x, y = _inputs(8, c, seed=5 * c, tied=False)
    got = STF.focal_loss(x, y, gamma, reduction="none")
    _check_rows(got, x, y, lambda s, t: ref_focal(s, t, gamma))


@pytest.mark.parametrize("c", CLASS_SIZES)
def test_ldam_matches_reference(c):
    x, y = _inputs(8, c, seed=6 * c, tied=False)
    counts = torch.randint(1, 500, (c,), generator=_gen(c)).tolist()
    margins = ref_margins(counts, 0.2)
    got = STF.ldam_loss(x, y, torch.tensor(margins, dtype=torch.float64), 40.0,
                        reduction="none")
    _check_rows(got, x, y, lambda s, t: ref_ldam(s, t, margins, 40.0))


def test_class_margins_matches_reference():
    counts = [3, 1000, 17, 250, 3]
    got = STF.class_margins(torch.tensor(counts), 0.2)
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx(ref_margins(counts, 0.2), rel=1e-6)
    assert got.max().item() == pytest.approx(0.2)


@pytest.mark.parametrize("c", (3, 7, 50))
@pytest.mark.parametrize("tied", [True, False])
def test_noised_losses_match_reference_given_noise(c, tied):
    x, y = _inputs(6, c, seed=7 * c, tied=tied)
    n_samples, epsilon = 3, 0.7
    noise = torch.randn(n_samples, 6, c, generator=_gen(c), dtype=torch.float64)
    counts = torch.randint(1, 100, (c,), generator=_gen(c + 1)).tolist()
    margins = ref_margins(counts, 0.2)
    for k in range(1, c):
        bal = STF.noised_topk_loss(x, y, k, epsilon, n_samples, margin=1.0, noise=noise,
                                   reduction="none")
        imb = STF.imbalanced_noised_topk_loss(
            x, y, torch.tensor(margins, dtype=torch.float64), k, epsilon, n_samples,
            scale=60.0, noise=noise, reduction="none")
        for i in range(6):
            s, t = x[i].tolist(), int(y[i])
            draws = [noise[b, i].tolist() for b in range(n_samples)]
            assert bal[i].item() == pytest.approx(
                ref_noised(s, t, k, 1.0, epsilon, draws), abs=1e-10)
            assert imb[i].item() == pytest.approx(
                ref_noised(s, t, k, margins[t], epsilon, draws, scale=60.0), abs=1e-9)


def test_noised_gradient_given_noise_is_seed_formula():
    """∇ = 1{margin + top^ ≥ s_y} · ((1/B) Σ_b onehot(argtop_{K+1}(s + εZ_b)) − δ_y)."""
    x, y = _inputs(5, 9, seed=8, tied=False)
    x.requires_grad_()
    noise = torch.randn(4, 5, 9, generator=_gen(9), dtype=torch.float64)
    k, epsilon = 3, 0.5
    loss = STF.noised_topk_loss(x, y, k, epsilon, 4, noise=noise, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    for i in range(5):
        s, t = x[i].tolist(), int(y[i])
        want = [0.0] * 9
        draws = [noise[b, i].tolist() for b in range(4)]
        if ref_noised(s, t, k, 1.0, epsilon, draws) > 0:
            for z in draws:
                pert = [s[j] + epsilon * z[j] for j in range(9)]
                want[sorted(range(9), key=lambda j, p=pert: -p[j])[k]] += 0.25
            want[t] -= 1.0
        assert grad[i].tolist() == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("fn", [STF.topk_hinge_loss, STF.topk_cvx_hinge_loss,
                                STF.calibrated_topk_hinge_loss])
def test_hinge_gradcheck(fn):
    x, y = _inputs(4, 6, seed=10, tied=False)
    x.requires_grad_()
    for k in range(1, 6):
        assert torch.autograd.gradcheck(lambda t, k=k: fn(t, y, k, reduction="none"), (x,))


def test_focal_and_ldam_gradcheck():
    x, y = _inputs(3, 5, seed=11, tied=False)
    x.requires_grad_()
    margins = torch.linspace(0.05, 0.2, 5, dtype=torch.float64)
    for gamma in (0.0, 0.5, 2.0):
        assert torch.autograd.gradcheck(lambda t, g=gamma: STF.focal_loss(t, y, g), (x,))
    assert torch.autograd.gradcheck(lambda t: STF.ldam_loss(t, y, margins, 3.0), (x,))


def test_noised_gradcheck_given_noise():
    """With the draws fixed the estimate is piecewise linear: gradcheck away from kinks."""
    x, y = _inputs(4, 6, seed=12, tied=False)
    x.requires_grad_()
    noise = torch.randn(3, 4, 6, generator=_gen(13), dtype=torch.float64)
    margins = torch.linspace(0.1, 0.3, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda t: STF.noised_topk_loss(t, y, 2, 0.5, 3, noise=noise), (x,))
    assert torch.autograd.gradcheck(
        lambda t: STF.imbalanced_noised_topk_loss(t, y, margins, 2, 0.5, 3, scale=2.0,
                                                  noise=noise), (x,))


def test_epsilon_zero_equals_calibrated_hinge():
    x, y = _inputs(10, 12, seed=14, tied=True)
    x.requires_grad_()
    for k in range(1, 12):
        cal = STF.calibrated_topk_hinge_loss(x, y, k)
        bal = STF.noised_topk_loss(x, y, k, epsilon=0.0, n_samples=3, generator=_gen(0))
        torch.testing.assert_close(bal, cal, rtol=0, atol=0)
        g_cal = torch.autograd.grad(cal, x)[0]
        g_bal = torch.autograd.grad(bal, x)[0]
        torch.testing.assert_close(g_bal, g_cal, rtol=0, atol=0)
    margins = torch.full((12,), 1.0, dtype=torch.float64)
    imb = STF.imbalanced_noised_topk_loss(x, y, margins, 3, epsilon=0.0, scale=2.5)
    torch.testing.assert_close(imb, 2.5 * STF.calibrated_topk_hinge_loss(x, y, 3))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_reductions(reduction):
    x, y = _inputs(6, 5, seed=15, tied=False)
    margins = torch.full((5,), 0.2, dtype=torch.float64)
    noise = torch.randn(5, 6, 5, dtype=torch.float64, generator=_gen(16))
    calls = [
        lambda r: STF.topk_error(x, y, 2, reduction=r),
        lambda r: STF.topk_hinge_loss(x, y, 2, reduction=r),
        lambda r: STF.topk_cvx_hinge_loss(x, y, 2, reduction=r),
        lambda r: STF.calibrated_topk_hinge_loss(x, y, 2, reduction=r),
        lambda r: STF.noised_topk_loss(x, y, 2, noise=noise, reduction=r),
        lambda r: STF.imbalanced_noised_topk_loss(x, y, margins, 2, noise=noise,
                                                  reduction=r),
        lambda r: STF.focal_loss(x, y, reduction=r),
        lambda r: STF.ldam_loss(x, y, margins, reduction=r),
    ]
    for call in calls:
        per_sample = call("none")
        want = {"none": per_sample, "mean": per_sample.mean(), "sum": per_sample.sum()}
        torch.testing.assert_close(call(reduction), want[reduction])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_computed_in_float32(dtype):
    x32, y = _inputs(6, 8, seed=17, tied=False)
    x32 = x32.float()
    x = x32.to(dtype).requires_grad_()
    noise = torch.randn(5, 6, 8, generator=_gen(18))
    margins = torch.full((8,), 0.2)
    for fn, kw in [(STF.noised_topk_loss, {"noise": noise}),
                   (STF.calibrated_topk_hinge_loss, {}),
                   (STF.focal_loss, {}),
                   (STF.ldam_loss, {"margins": margins})]:
        if fn is STF.focal_loss:
            out = fn(x, y, **kw)
            ref = fn(x.detach().float(), y, **kw)
        elif fn is STF.ldam_loss:
            out = fn(x, y, **kw)
            ref = fn(x.detach().float(), y, **kw)
        else:
            out = fn(x, y, 3, **kw)
            ref = fn(x.detach().float(), y, 3, **kw)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref)
        (grad,) = torch.autograd.grad(out, x)
        assert grad.dtype == dtype


def test_generator_reproducible():
    x, y = _inputs(6, 8, seed=19, tied=False)
    a = STF.noised_topk_loss(x, y, 2, generator=_gen(1), reduction="none")
    b = STF.noised_topk_loss(x, y, 2, generator=_gen(1), reduction="none")
    c = STF.noised_topk_loss(x, y, 2, generator=_gen(2), reduction="none")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


# ------------------------------------------------------------------ statistics

# Rows whose hinge is active (first and third) or inactive (second) for every draw: there
# the loss is linear in top^ and its expectation over draws is the smoothed loss. (Where
# the kink lies inside the noise, E[(·)_+] over B-sample estimates exceeds the smoothed
# loss by Jensen's inequality, so an honest comparison is restricted to these rows; the
# estimator itself is checked exactly, given the noise, above.) In 2e5 simulated B=5
# draws of each configuration below, the hinge argument of the active rows stayed > 0.88
# and that of the inactive row < -3.9.
STAT_X = torch.tensor([[0.3, -0.2, 1.1, 0.9, -1.0, 0.0],
                       [0.3, -0.2, 8.0, 0.9, -1.0, 0.0],
                       [2.0, 1.2, 2.4, -3.0, 1.5, 2.2]], dtype=torch.float64)
STAT_Y = torch.tensor([4, 2, 1])
STAT_ACTIVE = torch.tensor([True, False, True])
STAT_MARGINS = torch.tensor([0.1, 0.8, 0.2, 0.25, 0.9, 0.15], dtype=torch.float64)


def _loss(kind: str, x, y, k, epsilon, n_samples, generator=None, noise=None):
    if kind == "bal":
        return STF.noised_topk_loss(x, y, k, epsilon, n_samples, generator=generator,
                                    noise=noise, reduction="none")
    return STF.imbalanced_noised_topk_loss(x, y, STAT_MARGINS, k, epsilon, n_samples,
                                           scale=3.0, generator=generator, noise=noise,
                                           reduction="none")


def _draws(kind: str, k: int, epsilon: float, m: int, seed: int):
    """m independent B=5 evaluations: per-row losses (m, rows), gradients (m, rows, C)."""
    rows, c = STAT_X.shape
    xr = STAT_X.repeat(m, 1).requires_grad_()
    loss = _loss(kind, xr, STAT_Y.repeat(m), k, epsilon, 5, generator=_gen(seed))
    (grad,) = torch.autograd.grad(loss.sum(), xr)
    return loss.detach().view(m, rows), grad.view(m, rows, c)


def _kth_draws(x: torch.Tensor, k: int, epsilon: float, z: torch.Tensor) -> torch.Tensor:
    """(x + ε z_b)_(k) for every draw b: (n, rows)."""
    return (x + epsilon * z).sort(dim=-1, descending=True).values[..., k - 1]


@pytest.mark.parametrize("kind", ["bal", "imbal"])
@pytest.mark.parametrize(("k", "epsilon"), [(1, 1.0), (2, 0.5)])
def test_noised_loss_mean_matches_high_sample_estimate(kind, k, epsilon):
    n_ref, m = 100_000, 4000
    scale = 1.0 if kind == "bal" else 3.0
    margin = torch.ones(3, dtype=torch.float64) if kind == "bal" else STAT_MARGINS[STAT_Y]
    z = torch.randn((n_ref, *STAT_X.shape), generator=_gen(20 + k), dtype=torch.float64)
    top = _kth_draws(STAT_X, k + 1, epsilon, z)
    s_y = STAT_X.gather(1, STAT_Y[:, None]).squeeze(1)
    ref = scale * (margin + top.mean(0) - s_y).clamp_min(0)
    ref_se = scale * top.std(0) / math.sqrt(n_ref) * STAT_ACTIVE
    losses, _ = _draws(kind, k, epsilon, m, seed=30 + k)
    assert (losses[:, STAT_ACTIVE] > 0).all() and (losses[:, ~STAT_ACTIVE] == 0).all()
    se = (losses.var(0) / m + ref_se**2).sqrt()
    assert ((losses.mean(0) - ref).abs() <= N_SE * se).all()


@pytest.mark.parametrize("kind", ["bal", "imbal"])
@pytest.mark.parametrize(("k", "epsilon"), [(1, 1.0), (2, 0.5)])
def test_noised_loss_mean_gradient_matches_finite_differences(kind, k, epsilon):
    """Mean gradient of the B=5 loss over 4000 draws vs central finite differences
    (h = 1e-2) of the 1e5-sample loss, with common random numbers (the same Z at
    s ± h e_j). On these rows the hinge is linear, so the finite difference is a mean of
    per-draw terms, whose spread gives its SE."""
    n_ref, m, h = 100_000, 4000, 1e-2
    scale = 1.0 if kind == "bal" else 3.0
    z = torch.randn((n_ref, *STAT_X.shape), generator=_gen(40 + k), dtype=torch.float64)
    rows, c = STAT_X.shape
    fd_mean = torch.zeros(rows, c, dtype=torch.float64)
    fd_var = torch.zeros(rows, c, dtype=torch.float64)
    for j in range(c):
        e = torch.zeros_like(STAT_X)
        e[:, j] = h
        # per-draw loss terms scale·(m_y + top_b − s_y); linear on these rows
        d = (_kth_draws(STAT_X + e, k + 1, epsilon, z)
             - _kth_draws(STAT_X - e, k + 1, epsilon, z)) / (2 * h)
        d = d - (STAT_Y == j).double()  # derivative of −s_y
        d = scale * d * STAT_ACTIVE
        fd_mean[:, j] = d.mean(0)
        fd_var[:, j] = d.var(0) / n_ref
    _, grads = _draws(kind, k, epsilon, m, seed=50 + k)
    se = (grads.var(0) / m + fd_var).sqrt()
    assert ((grads.mean(0) - fd_mean).abs() <= N_SE * se + 1e-12).all()


# ------------------------------------------------------------------ validation


def test_rejects_input_not_2d():
    with pytest.raises(ValueError, match=r"input must be 2-D"):
        STF.calibrated_topk_hinge_loss(torch.randn(4), torch.zeros(4, dtype=torch.int64), 1)


def test_rejects_integer_input():
    with pytest.raises(TypeError, match="input must be a floating-point"):
        STF.topk_hinge_loss(torch.zeros(2, 4, dtype=torch.int64),
                            torch.zeros(2, dtype=torch.int64), 1)


def test_rejects_target_dtype():
    with pytest.raises(TypeError, match=r"target must have dtype torch\.int64"):
        STF.noised_topk_loss(torch.randn(3, 6), torch.zeros(3, dtype=torch.int32), 2)


def test_rejects_target_shape():
    with pytest.raises(ValueError, match=r"target must have shape \(3,\)"):
        STF.focal_loss(torch.randn(3, 6), torch.zeros(3, 1, dtype=torch.int64))


@pytest.mark.parametrize("bad", [-1, 6])
def test_rejects_target_out_of_range(bad):
    with pytest.raises(ValueError, match=r"target values must be in \[0, 6\)"):
        STF.topk_cvx_hinge_loss(torch.randn(3, 6), torch.tensor([0, bad, 1]), 2)


@pytest.mark.parametrize("bad", [-1, 6, 2**40])
@pytest.mark.parametrize("case", ["float32", "float64", "float16", "eps0", "noise",
                                  "imbalanced", "torch_hinge"])
def test_noised_losses_reject_target_out_of_range(bad, case, monkeypatch):
    """The noised losses check the range of ``target`` in their fused hinge (the compiled
    pass on CPU float tensors, ``check_index_range`` on the torch formulas)."""
    if case == "torch_hinge":
        monkeypatch.setattr(perturbed, "_compiled_forward", lambda *a: False)
    dtype = {"float64": torch.float64, "float16": torch.float16}.get(case, torch.float32)
    x = torch.randn(3, 6, dtype=dtype)
    target = torch.tensor([0, bad, 1])
    kwargs = {"epsilon": 0.0} if case == "eps0" else {}
    if case == "noise":
        kwargs["noise"] = torch.randn(5, 3, 6)
    with pytest.raises(ValueError, match=rf"target values must be in \[0, 6\), found {bad}"):
        if case == "imbalanced":
            STF.imbalanced_noised_topk_loss(x, target, torch.rand(6), k=2)
        else:
            STF.noised_topk_loss(x, target, k=2, **kwargs)


def test_rejects_k_below_one():
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        STF.calibrated_topk_hinge_loss(torch.randn(3, 6), torch.zeros(3, dtype=torch.int64), 0)


@pytest.mark.parametrize("fn", [STF.calibrated_topk_hinge_loss, STF.noised_topk_loss])
def test_rejects_k_plus_one_above_num_classes(fn):
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\].*\(k\+1\)-th"):
        fn(torch.randn(3, 6), torch.zeros(3, dtype=torch.int64), 6)


def test_imbalanced_rejects_k_plus_one_above_num_classes():
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\].*\(k\+1\)-th"):
        STF.imbalanced_noised_topk_loss(torch.randn(3, 6), torch.zeros(3, dtype=torch.int64),
                                        torch.full((6,), 0.1), k=6)


def test_lapin_hinge_rejects_k_equal_num_classes():
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        STF.topk_hinge_loss(torch.randn(3, 6), torch.zeros(3, dtype=torch.int64), 6)


def test_topk_error_rejects_k_above_num_classes():
    with pytest.raises(ValueError, match=r"k must be in \[1, 6\]"):
        STF.topk_error(torch.randn(3, 6), torch.zeros(3, dtype=torch.int64), 7)


def test_rejects_negative_epsilon():
    with pytest.raises(ValueError, match="epsilon must be in"):
        STF.noised_topk_loss(torch.randn(3, 6), torch.zeros(3, dtype=torch.int64), 2,
                             epsilon=-1e-3)


def test_rejects_n_samples_below_one():
    with pytest.raises(ValueError, match="n_samples must be"):
        STF.noised_topk_loss(torch.randn(3, 6), torch.zeros(3, dtype=torch.int64), 2,
                             n_samples=0)


def test_rejects_noise_shape():
    with pytest.raises(ValueError, match="noise must have shape"):
        STF.noised_topk_loss(torch.randn(3, 6), torch.zeros(3, dtype=torch.int64), 2,
                             n_samples=2, noise=torch.randn(2, 6, 3))


def test_rejects_margins_shape():
    with pytest.raises(ValueError, match=r"margins must have shape \(6,\)"):
        STF.ldam_loss(torch.randn(3, 6), torch.zeros(3, dtype=torch.int64),
                      torch.full((5,), 0.1))


def test_rejects_non_tensor_margins():
    with pytest.raises(TypeError, match="margins must be a torch"):
        STF.imbalanced_noised_topk_loss(torch.randn(3, 6), torch.zeros(3, dtype=torch.int64),
                                        [0.1] * 6)


def test_rejects_non_positive_scale():
    with pytest.raises(ValueError, match="scale must be in"):
        STF.ldam_loss(torch.randn(3, 6), torch.zeros(3, dtype=torch.int64),
                      torch.full((6,), 0.1), scale=0.0)


def test_rejects_negative_gamma():
    with pytest.raises(ValueError, match="gamma must be in"):
        STF.focal_loss(torch.randn(3, 6), torch.zeros(3, dtype=torch.int64), gamma=-1.0)


def test_rejects_bad_reduction():
    with pytest.raises(ValueError, match="reduction must be one of"):
        STF.topk_error(torch.randn(3, 6), torch.zeros(3, dtype=torch.int64), 1,
                       reduction="avg")


@pytest.mark.parametrize("counts", [[3, 0, 5], [3, -1, 5], [], [[1, 2]]])
def test_class_margins_rejects_bad_counts(counts):
    with pytest.raises(ValueError, match="class_counts must"):
        STF.class_margins(counts, 0.2)


def test_class_margins_rejects_negative_max_margin():
    with pytest.raises(ValueError, match="max_margin must be in"):
        STF.class_margins([1, 2], -0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_losses_match_cpu():
    x, y = _inputs(16, 30, seed=60, tied=False)
    noise = torch.randn(5, 16, 30, dtype=torch.float64)
    margins = torch.linspace(0.05, 0.2, 30, dtype=torch.float64)
    for fn, args in [(STF.noised_topk_loss, (3,)), (STF.calibrated_topk_hinge_loss, (3,)),
                     (STF.topk_hinge_loss, (3,)), (STF.topk_cvx_hinge_loss, (3,)),
                     (STF.focal_loss, ()), (STF.ldam_loss, (margins,))]:
        kw = {"noise": noise.cuda()} if fn is STF.noised_topk_loss else {}
        xc = x.cuda().requires_grad_()
        out = fn(xc, y.cuda(), *args, **kw)
        (g,) = torch.autograd.grad(out, xc)
        kw = {"noise": noise} if fn is STF.noised_topk_loss else {}
        xl = x.clone().requires_grad_()
        ref = fn(xl, y, *args, **kw)
        (gl,) = torch.autograd.grad(ref, xl)
        torch.testing.assert_close(out.cpu(), ref)
        torch.testing.assert_close(g.cpu(), gl)
    gen = torch.Generator(device="cuda").manual_seed(0)
    out = STF.noised_topk_loss(x.cuda().half(), y.cuda(), 3, generator=gen)
    assert out.dtype == torch.float32 and out.device.type == "cuda"
