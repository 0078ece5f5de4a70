"""Tests of :mod:`smoothtopk.hinge_cpu`: the compiled forward and backward of the fused
noised hinge must equal, bit for bit, the same formulas written with torch operations
(what ``_NoisedHinge`` runs off the CPU), the draws being added left to right."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smoothtopk import hinge_cpu, perturbed, perturbed_cpu


def _torch_formula(grad, hinge, scale, indices, target, num_classes):
    """``scale · grad · 1{hinge > 0} · ((1/B) Σ_b onehot(indices) − onehot(target))`` with
    torch operations, in the order ``_NoisedHinge`` documents."""
    if scale is not None:
        grad = grad * scale
    grad = grad * (hinge > 0)
    share = (grad * (1.0 / indices.shape[-1])).unsqueeze(-1).expand(indices.shape)
    out = grad.new_zeros((grad.shape[0], num_classes)).scatter_add_(1, indices, share)
    out.scatter_add_(1, target.unsqueeze(1), -grad.unsqueeze(1))
    return out, grad


def _left_to_right(values, weight):
    """``weight · Σ_m values[:, m]`` with torch additions in column order."""
    total = values[:, 0].clone()
    for m in range(1, values.shape[1]):
        total = total + values[:, m]
    return total * weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weighted_row_sums_left_to_right(dtype):
    gen = torch.Generator().manual_seed(1)
    for width in (1, 2, 5, 9, 33):
        values = torch.randn(50, width, generator=gen, dtype=dtype) * 10.0 ** torch.randint(
            -4, 5, (50, width), generator=gen).to(dtype)
        got = torch.from_numpy(hinge_cpu.weighted_row_sums(values.numpy(), 1.0 / width))
        assert got.dtype == dtype
        assert torch.equal(got, _left_to_right(values, 1.0 / width))
        assert torch.allclose(got, values.double().mean(1).to(dtype), rtol=1e-4, atol=1e-3)
    assert hinge_cpu.weighted_row_sums(np.empty((3, 0), np.float32), 1.0).tolist() == [0.0] * 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [None, 60.0, 0.3])
@pytest.mark.parametrize("margin_kind", ["float", "per_row", "per_class"])
def test_forward_equals_torch_formula_bitwise(dtype, scale, margin_kind):
    gen = torch.Generator().manual_seed(2)
    n, c, b = 60, 20, 5
    scores = torch.randn(n, c, generator=gen, dtype=dtype)
    target = torch.randint(0, c, (n,), generator=gen)
    values = torch.randn(n, b, generator=gen, dtype=dtype)
    values[0, 2] = float("nan")  # NaN stays NaN through relu
    margin = {"float": 0.3, "per_row": torch.rand(n, generator=gen, dtype=dtype),
              "per_class": torch.rand(c, generator=gen, dtype=dtype)}[margin_kind]
    hinge, loss = hinge_cpu.hinge_forward(
        scores.numpy(), target.numpy(), margin if margin_kind == "float" else margin.numpy(),
        values.numpy(), scale, per_class=margin_kind == "per_class")
    label = scores.gather(1, target.unsqueeze(1)).squeeze(1)
    m = margin[target] if margin_kind == "per_class" else margin
    ref = torch.relu(m + _left_to_right(values, 1.0 / b) - label)
    assert bool((ref == 0).any()) and bool((ref > 0).any())
    assert torch.equal(torch.from_numpy(hinge).nan_to_num(), ref.nan_to_num())
    assert bool(torch.from_numpy(hinge)[0].isnan())
    ref_loss = ref if scale is None else scale * ref
    assert torch.equal(torch.from_numpy(loss).nan_to_num(), ref_loss.nan_to_num())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_forward_reduction_in_float64(dtype, reduction):
    """The mean / sum of the per-row loss: added row by row in float64, then rounded to
    the dtype; NaN propagates; the mean of no rows is NaN (as torch's), their sum 0."""
    gen = torch.Generator().manual_seed(3)
    n, c, b = 333, 20, 5
    scores = torch.randn(n, c, generator=gen, dtype=dtype) * 100.0
    target = torch.randint(0, c, (n,), generator=gen)
    values = torch.randn(n, b, generator=gen, dtype=dtype) * 100.0
    args = (scores.numpy(), target.numpy(), 0.3, values.numpy(), 60.0)
    _, rows = hinge_cpu.hinge_forward(*args)
    _, reduced = hinge_cpu.hinge_forward(*args, reduction=reduction)
    assert reduced.shape == () and reduced.dtype == scores.numpy().dtype
    total = 0.0
    for v in rows:  # row by row in float64 (Python floats)
        total += float(v)
    expected = total / n if reduction == "mean" else total
    assert abs(total - math.fsum(float(v) for v in rows)) <= 1e-12 * abs(total)
    assert float(reduced) == float(np.array(expected, dtype=reduced.dtype))
    values[7, 1] = float("nan")
    _, reduced = hinge_cpu.hinge_forward(scores.numpy(), target.numpy(), 0.3, values.numpy(),
                                         60.0, reduction=reduction)
    assert math.isnan(float(reduced))
    empty = (scores.numpy()[:0], target.numpy()[:0], 0.3, values.numpy()[:0], None)
    _, reduced = hinge_cpu.hinge_forward(*empty, reduction=reduction)
    assert math.isnan(float(reduced)) if reduction == "mean" else float(reduced) == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("margin_kind", ["float", "per_row", "per_class"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("threads", [1, 2])
def test_noised_hinge_forward_is_the_draws_then_the_hinge(dtype, margin_kind, reduction,
                                                          threads):
    """``noised_hinge_forward`` (one compiled call) == ``kth_draws``, then
    ``hinge_forward`` on their values, from the same seed: the same columns, hinge and loss,
    bit for bit; a target out of range raises the same ``ValueError``."""
    rng = np.random.default_rng(9)
    n, c, b, k = 37, 300, 5, 6
    scores = rng.standard_normal((n, c)).astype(dtype)
    target = rng.integers(0, c, n)
    scores[:10][np.arange(10), target[:10]] += 10.0  # labels far ahead: a zero hinge
    margin = {"float": 0.4, "per_row": rng.random(n).astype(dtype),
              "per_class": rng.random(c).astype(dtype)}[margin_kind]
    per_class = margin_kind == "per_class"
    indices, hinge, loss = hinge_cpu.noised_hinge_forward(
        scores, target, margin, k, 0.8, b, k + 8, 123, 60.0, per_class, reduction, threads)
    values, columns = perturbed_cpu.kth_draws(scores, k, 0.8, b, k + 8, 123, threads=threads)
    ref_hinge, ref_loss = hinge_cpu.hinge_forward(scores, target, margin, values, 60.0,
                                                  per_class, reduction)
    assert np.array_equal(indices, columns)
    assert hinge.dtype == loss.dtype == dtype
    assert np.array_equal(hinge, ref_hinge) and np.array_equal(loss, ref_loss)
    assert (hinge > 0).any() and (hinge == 0).any()
    target[5] = c
    with pytest.raises(ValueError, match=f"target values must be in \\[0, {c}\\), found {c}"):
        hinge_cpu.noised_hinge_forward(scores, target, margin, k, 0.8, b, k + 8, 123, None,
                                       per_class, reduction, threads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_kth_mean_forward_is_the_draws_then_their_mean(dtype, threads):
    """``kth_mean_forward`` == ``kth_draws``, then ``weighted_row_sums`` of their values
    with weight ``1/B``, from the same seed: the same columns and means, bit for bit."""
    rng = np.random.default_rng(10)
    n, c, b, k = 37, 300, 5, 6
    x = rng.standard_normal((n, c)).astype(dtype)
    indices, means = hinge_cpu.kth_mean_forward(x, k, 0.8, b, k + 8, 321, threads)
    values, columns = perturbed_cpu.kth_draws(x, k, 0.8, b, k + 8, 321, threads=threads)
    assert np.array_equal(indices, columns)
    assert means.dtype == dtype
    assert np.array_equal(means, hinge_cpu.weighted_row_sums(values, 1.0 / b))


def _inputs(n, c, b, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    grad = torch.randn(n, generator=gen, dtype=dtype)
    hinge = torch.randn(n, generator=gen, dtype=dtype).clamp_min(0.0)  # ~half zero
    indices = torch.randint(0, c, (n, b), generator=gen)
    indices[: n // 4, 1:] = indices[: n // 4, :1]  # repeated columns
    target = torch.randint(0, c, (n,), generator=gen)
    target[n // 4: n // 2] = indices[n // 4: n // 2, 0]  # the label among the draws
    return grad, hinge, indices, target


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [None, 60.0, 0.3])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_equals_torch_formula_bitwise(dtype, scale, threads, layout):
    """Also on strided arrays (every other row of bigger ones), as the backward passes them
    on: the kernel reads any strides."""
    n, c, b = (300, 1000, 5) if threads > 1 else (40, 17, 3)  # 300 x 1000: parallel rows
    grad, hinge, indices, target = _inputs(n, c, b, dtype)
    grad[3] = float("nan")
    grad[5] = float("inf")
    hinge[5] = 0.0  # inf · 0 = NaN, as torch gives
    arrays = [grad.numpy(), hinge.numpy(), indices.numpy(), target.numpy()]
    if layout == "strided":
        arrays = [np.repeat(a, 2, axis=0)[::2] for a in arrays]
        assert not any(a.flags.c_contiguous for a in arrays)
    grad_np, hinge_np, indices_np, target_np = arrays
    out, masked = hinge_cpu.hinge_grad(grad_np, hinge_np, scale, indices_np, target_np, c,
                                       threads)
    ref_out, ref_masked = _torch_formula(grad, hinge, scale, indices, target, c)
    assert out.dtype == masked.dtype == grad.numpy().dtype
    assert torch.equal(torch.from_numpy(out).nan_to_num(), ref_out.nan_to_num())
    assert torch.equal(torch.from_numpy(out).isnan(), ref_out.isnan())
    assert torch.equal(torch.from_numpy(masked).nan_to_num(), ref_masked.nan_to_num())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reduced_gradient_as_torch_backward(dtype, reduction):
    """``grad (1,)`` of a mean or a sum: each row gets what torch's mean / sum backward
    passes it (``grad / N``, ``grad``), then the hinge's formula; N = 37 (1/N inexact)."""
    n, c, b = 37, 23, 5
    _, hinge, indices, target = _inputs(n, c, b, dtype, seed=7)
    for value in (0.7, 1.0, 3e-5, 123.456):
        grad = torch.tensor([value], dtype=dtype)
        out, masked = hinge_cpu.hinge_grad(grad.numpy(), hinge.numpy(), 60.0, indices.numpy(),
                                           target.numpy(), c, 1, reduction)
        leaf = torch.zeros(n, dtype=dtype, requires_grad=True)  # torch's own backward
        (leaf.mean() if reduction == "mean" else leaf.sum()).backward(grad[0])
        ref_out, ref_masked = _torch_formula(leaf.grad, hinge, 60.0, indices, target, c)
        assert torch.equal(torch.from_numpy(out), ref_out)
        assert torch.equal(torch.from_numpy(masked), ref_masked)


def test_noised_hinge_backward_uses_it_and_matches_torch_path(monkeypatch):
    """``_NoisedHinge`` on CPU float tensors runs the compiled backward; forcing the torch
    path gives the same gradients (scores and per-row margins), bit for bit, under a mean
    reduction (whose gradient reaches the node as an expanded, non-contiguous tensor)."""
    n, c, b = 64, 50, 5
    _, _, indices, target = _inputs(n, c, b, torch.float32, seed=3)
    scores = torch.randn(n, c, generator=torch.Generator().manual_seed(4))
    values = torch.randn(n, b, generator=torch.Generator().manual_seed(5))
    margins = torch.rand(n, generator=torch.Generator().manual_seed(6))

    def run():
        x = scores.clone().requires_grad_()
        m = margins.clone().requires_grad_()
        perturbed.noised_hinge(x, target, m, values, indices, 60.0).mean().backward()
        return x.grad, m.grad

    calls = []
    real = hinge_cpu.hinge_grad
    monkeypatch.setattr(hinge_cpu, "hinge_grad", lambda *a: calls.append(1) or real(*a))
    compiled = run()
    assert calls == [1]
    monkeypatch.setattr(perturbed, "_compiled_backward", lambda *a: False)
    composed = run()
    assert calls == [1]
    assert torch.equal(compiled[0], composed[0])
    assert torch.equal(compiled[1], composed[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "expanded"])
def test_selected_grad_equals_torch_scatter_bitwise(dtype, threads, layout):
    """``selected_grad`` against ``zeros.scatter_add_`` of ``grad · weight``: repeated
    columns (added up), a weight that float32 rounds, rows big enough for the parallel
    kernel, and the stride-0 gradient that ``.mean()``'s backward passes."""
    gen = torch.Generator().manual_seed(6)
    for rows, cols, width in ((7, 5, 3), (300, 1000, 5)):
        indices = torch.randint(0, cols, (rows, width), generator=gen)
        indices[0] = indices[0, 0]  # every draw on one column
        if layout == "expanded":
            grad = torch.full((), 0.37, dtype=dtype).expand(rows)
        else:
            grad = torch.randn(rows, generator=gen, dtype=dtype) * 1e3
        weight = 1.0 / width
        share = (grad * weight).unsqueeze(-1).expand(indices.shape)
        expected = grad.new_zeros((rows, cols)).scatter_add_(1, indices, share)
        got = hinge_cpu.selected_grad(grad.numpy(), indices.numpy(), weight, cols, threads)
        assert got.dtype == expected.numpy().dtype
        assert torch.equal(torch.from_numpy(got), expected)
