"""Tests of smoothtopk.ops: exact and perturbed top-K operators.

References are brute force in float64 (Python sorting, explicit loops). Random operators
are checked statistically: means over independent draws are compared with a 1e5-sample
estimate within 4 standard errors (SE of the difference of the two means).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from smoothtopk.ops import (
    SmoothKthLargest,
    _perturbed_kth_reference,
    kth_largest,
    smooth_kth_largest,
    smooth_topk_sum,
    topk_sum,
)

N_SE = 4.0


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tied(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Small integer values: many ties."""
    return torch.randint(-3, 4, shape, generator=_gen(seed)).double()


def _separated(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Distinct values at least 0.3 apart along every axis (safe for finite differences)."""
    n = 1
    for d in shape:
        n *= d
    perm = torch.randperm(n, generator=_gen(seed)).double()
    return (0.37 * perm + 0.01 * torch.rand(n, generator=_gen(seed + 1), dtype=torch.float64)
            ).reshape(shape)


def _rows_ref(x: torch.Tensor, dim: int):
    """Iterate over the 1-D slices of x along dim as Python lists, in output order."""
    moved = x.movedim(dim, -1)
    out_shape = moved.shape[:-1]
    for idx in itertools.product(*(range(s) for s in out_shape)):
        yield idx, moved[idx].tolist()


# --------------------------------------------------------------------------- exact ops


@pytest.mark.parametrize(("shape", "dim"), [((7,), 0), ((4, 6), -1), ((4, 6), 0),
                                            ((2, 5, 3), 1), ((3, 2, 4), -3)])
def test_exact_ops_match_sorting_with_ties(shape, dim):
    x = _tied(shape, seed=sum(shape) + dim)
    size = shape[dim]
    for k in range(1, size + 1):
        got_kth = kth_largest(x, k, dim)
        got_sum = topk_sum(x, k, dim)
        for idx, row in _rows_ref(x, dim):
            srt = sorted(row, reverse=True)
            assert got_kth[idx].item() == srt[k - 1]
            assert got_sum[idx].item() == pytest.approx(sum(srt[:k]), abs=1e-12)


def test_exact_gradients_are_indicator_and_one_hot_with_ties():
    x = _tied((5, 9), seed=3).requires_grad_()
    for k in range(1, 10):
        (g_kth,) = torch.autograd.grad(kth_largest(x, k).sum(), x)
        (g_sum,) = torch.autograd.grad(topk_sum(x, k).sum(), x)
        for r in range(5):
            row = x[r].detach()
            srt = sorted(row.tolist(), reverse=True)
            # one-hot at an entry equal to the k-th largest value
            assert g_kth[r].sum().item() == 1.0
            assert ((g_kth[r] == 0) | (g_kth[r] == 1)).all()
            assert row[g_kth[r].argmax()].item() == srt[k - 1]
            # indicator of k entries whose values are the k largest (as a multiset)
            assert ((g_sum[r] == 0) | (g_sum[r] == 1)).all()
            assert sorted(row[g_sum[r] == 1].tolist(), reverse=True) == srt[:k]


@pytest.mark.parametrize("k", [1, 3, 6])
def test_exact_ops_gradcheck(k):
    x = _separated((3, 6, 2), seed=k).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: kth_largest(t, k, dim=1), (x,))
    assert torch.autograd.gradcheck(lambda t: topk_sum(t, k, dim=1), (x,))


@pytest.mark.parametrize("given_noise", [False, True])
def test_backward_keeps_only_indices(given_noise):
    """Sampled on the CPU (one node with the draws, which keeps its own array on ``ctx``)
    or from given noise (the selected sum, which saves it): only the (N, B) columns are
    kept for the backward."""
    x = torch.randn(8, 50, requires_grad=True)
    noise = torch.randn(7, 8, 50) if given_noise else None
    out = smooth_kth_largest(x, 3, n_samples=7, noise=noise)
    node = out.grad_fn
    name = "SelectedSum" if given_noise else "SampledKth"
    while name not in type(node).__name__:
        node = node.next_functions[0][0]
    if given_noise:
        (kept,) = node.saved_tensors
    else:
        assert node.saved_tensors == ()
        kept = torch.from_numpy(node.drawn)
        assert not any(isinstance(v, (torch.Tensor, np.ndarray))
                       for name, v in vars(node).items() if name != "drawn")
    assert kept.dtype == torch.int64
    assert kept.numel() == 8 * 7


@pytest.mark.parametrize("op", ["topk_sum", "kth_largest", "smooth_topk_sum",
                                "smooth_kth_largest"])
def test_rows_along_the_last_dim_get_no_view_node(op):
    """On (N, C) rows along the last dim the operator's own node is the output's (no
    reshape recorded for autograd to run back); other shapes are reshaped."""
    fn = {"topk_sum": topk_sum, "kth_largest": kth_largest,
          "smooth_topk_sum": smooth_topk_sum, "smooth_kth_largest": smooth_kth_largest}[op]
    x = torch.randn(4, 9, requires_grad=True)
    name = type(fn(x, 2).grad_fn).__name__
    assert "SelectedSum" in name or "SampledKth" in name
    assert fn(x.reshape(2, 2, 9), 2).shape == (2, 2)
    assert fn(x, 2, dim=0).shape == (9,)


# ------------------------------------------------------------------- perturbed, given noise


def test_seed_worked_example():
    """L=4, K=2, B=3, eps=1 with the three perturbed vectors of the seed: 2.47 and
    gradient (1/3, 1/3, 1/3, 0)."""
    s = torch.tensor([2.4, 2.6, 2.3, 0.5], dtype=torch.float64, requires_grad=True)
    perturbed = torch.tensor(
        [[2.6, 2.5, 2.4, 0.8], [2.5, 2.7, 2.2, 0.6], [2.3, 2.5, 2.4, 0.4]],
        dtype=torch.float64,
    )
    epsilon = 1.0
    noise = (perturbed - s.detach()) / epsilon
    value = smooth_kth_largest(s, 2, epsilon=epsilon, n_samples=3, noise=noise)
    assert round(value.item(), 2) == 2.47
    assert value.item() == pytest.approx((2.5 + 2.5 + 2.4) / 3, abs=1e-12)
    value.backward()
    torch.testing.assert_close(
        s.grad, torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0], dtype=torch.float64)
    )
    # exact operator: top_2(s) = 2.4, one-hot at the first coordinate
    assert kth_largest(s, 2).item() == 2.4


@pytest.mark.parametrize(("shape", "dim"), [((6,), 0), ((3, 7), -1), ((3, 7), 0),
                                            ((2, 5, 4), 1)])
@pytest.mark.parametrize("epsilon", [0.3, 2.0])
def test_perturbed_ops_match_brute_force_given_noise(shape, dim, epsilon):
    n_samples = 4
    x = torch.randn(shape, generator=_gen(1), dtype=torch.float64).requires_grad_()
    noise = torch.randn((n_samples, *shape), generator=_gen(2), dtype=torch.float64)
    size = shape[dim]
    for k in range(1, size + 1):
        kth = smooth_kth_largest(x, k, epsilon, n_samples, dim, noise=noise)
        tsum = smooth_topk_sum(x, k, epsilon, n_samples, dim, noise=noise)
        (g_kth,) = torch.autograd.grad(kth.sum(), x)
        (g_sum,) = torch.autograd.grad(tsum.sum(), x)
        moved_g_kth = g_kth.movedim(dim, -1)
        moved_g_sum = g_sum.movedim(dim, -1)
        for idx, row in _rows_ref(x.detach(), dim):
            val_kth = val_sum = 0.0
            grad_kth = [0.0] * size
            grad_sum = [0.0] * size
            for b in range(n_samples):
                z = noise[b].movedim(dim, -1)[idx].tolist()
                pert = [row[i] + epsilon * z[i] for i in range(size)]
                order = sorted(range(size), key=lambda i, p=pert: -p[i])
                val_kth += pert[order[k - 1]] / n_samples
                grad_kth[order[k - 1]] += 1 / n_samples
                for i in order[:k]:
                    val_sum += pert[i] / n_samples
                    grad_sum[i] += 1 / n_samples
            assert kth[idx].item() == pytest.approx(val_kth, abs=1e-12)
            assert tsum[idx].item() == pytest.approx(val_sum, abs=1e-12)
            assert moved_g_kth[idx].tolist() == pytest.approx(grad_kth, abs=1e-12)
            assert moved_g_sum[idx].tolist() == pytest.approx(grad_sum, abs=1e-12)


def test_smooth_kth_is_difference_of_smooth_sums_with_same_noise():
    x = torch.randn(4, 9, generator=_gen(5), dtype=torch.float64)
    noise = torch.randn(6, 4, 9, generator=_gen(6), dtype=torch.float64)
    for k in range(2, 10):
        diff = smooth_topk_sum(x, k, 0.7, 6, noise=noise) - smooth_topk_sum(
            x, k - 1, 0.7, 6, noise=noise)
        torch.testing.assert_close(smooth_kth_largest(x, k, 0.7, 6, noise=noise), diff)


def test_reference_returns_per_row_per_sample_pairs():
    x = torch.randn(5, 8, generator=_gen(7), dtype=torch.float64)
    noise = torch.randn(3, 5, 8, generator=_gen(8), dtype=torch.float64)
    values, indices = _perturbed_kth_reference(x, 2, 0.5, 3, None, noise)
    assert values.shape == indices.shape == (5, 3)
    assert indices.dtype == torch.int64
    pert = x.unsqueeze(0) + 0.5 * noise
    for r, b in itertools.product(range(5), range(3)):
        srt = sorted(pert[b, r].tolist(), reverse=True)
        assert values[r, b].item() == srt[1]
        assert pert[b, r, indices[r, b]].item() == srt[1]


@pytest.mark.parametrize("op", [smooth_kth_largest, smooth_topk_sum])
def test_epsilon_zero_is_exact_operator(op):
    exact = kth_largest if op is smooth_kth_largest else topk_sum
    x = _tied((6, 8), seed=11).requires_grad_()
    for k in (1, 4, 8):
        got = op(x, k, epsilon=0.0, n_samples=3, generator=_gen(0))
        want = exact(x, k)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        g1 = torch.autograd.grad(got.sum(), x)[0]
        g2 = torch.autograd.grad(want.sum(), x)[0]
        torch.testing.assert_close(g1, g2, rtol=0, atol=0)


def test_generator_makes_draws_reproducible():
    x = torch.randn(4, 10)
    a = smooth_kth_largest(x, 3, generator=_gen(42))
    b = smooth_kth_largest(x, 3, generator=_gen(42))
    c = smooth_kth_largest(x, 3, generator=_gen(43))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_keeps_dtype(dtype):
    x = torch.randn(4, 10).to(dtype).requires_grad_()
    out = smooth_kth_largest(x, 2, generator=_gen(0))
    assert out.dtype == dtype
    out.sum().backward()
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.float().sum(1), torch.ones(4), rtol=0, atol=1e-2)


def test_module_matches_function_and_removes_dim():
    layer = SmoothKthLargest(2, epsilon=0.5, n_samples=3, dim=1, generator=_gen(9))
    x = torch.randn(2, 6, 5, requires_grad=True)
    out = layer(x)
    assert out.shape == (2, 5)
    want = smooth_kth_largest(x, 2, 0.5, 3, dim=1, generator=_gen(9))
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    out.sum().backward()
    torch.testing.assert_close(x.grad.sum(1), torch.ones(2, 5))
    assert "k=2" in repr(layer)


# --------------------------------------------------------------------------- statistics


def _high_sample(x: torch.Tensor, k: int, epsilon: float, n: int, seed: int):
    """Per-draw values of (x + eps Z)_(k) for n draws, shape (n, rows), float64."""
    z = torch.randn((n, *x.shape), generator=_gen(seed), dtype=torch.float64)
    return (x + epsilon * z).sort(dim=-1, descending=True).values[..., k - 1], z


def _draws(op, x: torch.Tensor, k: int, epsilon: float, n_samples: int, m: int, seed: int):
    """m independent evaluations of op on x (rows, C): values (m, rows), grads (m, rows, C)."""
    rows, c = x.shape
    xr = x.repeat(m, 1).requires_grad_()
    out = op(xr, k, epsilon, n_samples, generator=_gen(seed))
    (grad,) = torch.autograd.grad(out.sum(), xr)
    return out.detach().view(m, rows), grad.view(m, rows, c)


@pytest.mark.parametrize(("k", "epsilon"), [(1, 1.0), (2, 0.5), (4, 2.0)])
def test_smooth_kth_largest_is_unbiased(k, epsilon):
    x = torch.tensor([[0.3, -0.2, 1.1, 0.9, -1.0, 0.0],
                      [2.0, 2.0, 2.0, -3.0, 1.5, 0.2],
                      [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]], dtype=torch.float64)
    ref, _ = _high_sample(x, k, epsilon, 100_000, seed=100 + k)
    vals, _ = _draws(smooth_kth_largest, x, k, epsilon, 5, 4000, seed=200 + k)
    # each of the 4000 draws is a mean over B = 5 samples
    se = (vals.var(0) / vals.shape[0] + ref.var(0) / ref.shape[0]).sqrt()
    assert ((vals.mean(0) - ref.mean(0)).abs() <= N_SE * se).all()


@pytest.mark.parametrize(("k", "epsilon"), [(1, 1.0), (3, 0.5)])
def test_smooth_kth_largest_gradient_matches_finite_differences(k, epsilon):
    """Mean perturbed-optimizer gradient vs central finite differences (h = 1e-2) of the
    1e5-sample estimate, with common random numbers (the same Z at s + h e_j and s - h e_j);
    the SE of the finite difference comes from its per-draw terms."""
    x = torch.tensor([[0.3, -0.2, 1.1, 0.9, -1.0, 0.0],
                      [2.0, 1.9, 2.1, -3.0, 1.5, 0.2]], dtype=torch.float64)
    h, n_ref = 1e-2, 100_000
    z = torch.randn((n_ref, *x.shape), generator=_gen(300 + k), dtype=torch.float64)
    fd_mean = torch.empty_like(x)
    fd_var = torch.empty_like(x)
    for j in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[:, j] = h
        up = (x + e + epsilon * z).sort(dim=-1, descending=True).values[..., k - 1]
        down = (x - e + epsilon * z).sort(dim=-1, descending=True).values[..., k - 1]
        d = (up - down) / (2 * h)
        fd_mean[:, j] = d.mean(0)
        fd_var[:, j] = d.var(0) / n_ref
    _, grads = _draws(smooth_kth_largest, x, k, epsilon, 5, 4000, seed=400 + k)
    se = (grads.var(0) / grads.shape[0] + fd_var).sqrt()
    assert ((grads.mean(0) - fd_mean).abs() <= N_SE * se + 1e-12).all()


def test_smooth_topk_sum_value_and_gradient_expectation():
    """topΣ_{K,ε} estimate: unbiased, and its mean gradient sums to K per row and agrees
    with the 1e5-sample frequency of each coordinate being among the K largest."""
    x = torch.tensor([[0.3, -0.2, 1.1, 0.9, -1.0, 0.0]], dtype=torch.float64)
    k, epsilon = 3, 0.8
    z = torch.randn((100_000, *x.shape), generator=_gen(500), dtype=torch.float64)
    pert = x + epsilon * z
    top = pert.topk(k, dim=-1)
    ref_val = top.values.sum(-1)
    ref_ind = torch.zeros_like(pert).scatter_(-1, top.indices, 1.0)
    vals, grads = _draws(smooth_topk_sum, x, k, epsilon, 5, 4000, seed=501)
    se_v = (vals.var(0) / 4000 + ref_val.var(0) / 1e5).sqrt()
    assert ((vals.mean(0) - ref_val.mean(0)).abs() <= N_SE * se_v).all()
    se_g = (grads.var(0) / 4000 + ref_ind.var(0) / 1e5).sqrt()
    assert ((grads.mean(0) - ref_ind.mean(0)).abs() <= N_SE * se_g).all()
    torch.testing.assert_close(grads.sum(-1), torch.full((4000, 1), float(k),
                                                         dtype=torch.float64))


# --------------------------------------------------------------------------- validation


def test_rejects_non_tensor():
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        kth_largest([1.0, 2.0], 1)


def test_rejects_integer_tensor():
    with pytest.raises(TypeError, match="x must be a floating-point"):
        topk_sum(torch.arange(4), 1)


def test_rejects_zero_dim():
    with pytest.raises(ValueError, match="at least one dimension"):
        kth_largest(torch.tensor(1.0), 1)


@pytest.mark.parametrize("k", [0, 6])
def test_rejects_k_out_of_range(k):
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        smooth_kth_largest(torch.randn(3, 5), k)


def test_rejects_non_int_k():
    with pytest.raises(TypeError, match="k must be an int"):
        topk_sum(torch.randn(3, 5), 2.0)


def test_rejects_dim_out_of_range():
    with pytest.raises(ValueError, match="dim must be in"):
        kth_largest(torch.randn(3, 5), 1, dim=2)


def test_rejects_negative_epsilon():
    with pytest.raises(ValueError, match="epsilon must be in"):
        smooth_topk_sum(torch.randn(3, 5), 2, epsilon=-0.1)


def test_rejects_n_samples_below_one():
    with pytest.raises(ValueError, match="n_samples must be"):
        smooth_kth_largest(torch.randn(3, 5), 2, n_samples=0)


def test_rejects_noise_of_wrong_shape():
    with pytest.raises(ValueError, match=r"noise must have shape \(n_samples, \*x.shape\)"):
        smooth_kth_largest(torch.randn(3, 5), 2, n_samples=4, noise=torch.randn(3, 3, 5))


def test_rejects_integer_noise():
    with pytest.raises(TypeError, match="noise must be a floating-point"):
        smooth_kth_largest(torch.randn(3, 5), 2, n_samples=1,
                           noise=torch.zeros(1, 3, 5, dtype=torch.int64))


def test_rejects_bad_generator():
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator"):
        smooth_kth_largest(torch.randn(3, 5), 2, generator=0)


def test_module_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k must be"):
        SmoothKthLargest(0)
    with pytest.raises(ValueError, match="epsilon must be in"):
        SmoothKthLargest(1, epsilon=-1.0)
    with pytest.raises(ValueError, match="n_samples must be"):
        SmoothKthLargest(1, n_samples=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_given_noise():
    x = torch.randn(6, 40, dtype=torch.float64)
    noise = torch.randn(5, 6, 40, dtype=torch.float64)
    xc = x.cuda().requires_grad_()
    out = smooth_kth_largest(xc, 4, noise=noise.cuda())
    out.sum().backward()
    xl = x.clone().requires_grad_()
    ref = smooth_kth_largest(xl, 4, noise=noise)
    ref.sum().backward()
    torch.testing.assert_close(out.cpu(), ref)
    torch.testing.assert_close(xc.grad.cpu(), xl.grad)
    g = torch.Generator(device="cuda").manual_seed(0)
    assert smooth_kth_largest(xc, 4, generator=g).device.type == "cuda"
