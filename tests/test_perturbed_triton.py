"""Tests of the Triton kernels (:mod:`smoothtopk.perturbed_triton`).

On a machine without a GPU they run on the CPU under ``TRITON_INTERPRET=1`` (set by
``conftest.py`` before anything imports Triton, and here for a run of this file alone),
with small sizes; on a CUDA machine they run the compiled
kernels, with larger samples, and also compare the CUDA losses with the CPU path.

Checks: on given draws, the selection equals the reference bit for bit (adversarial rows);
the generator's normals have the normal law and the stated bound; the sampled law matches
the reference's (4 standard errors); the hinge kernels equal the torch autograd function.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from sampling_checks import (  # noqa: E402
    Z_MAX,
    adversarial,
    assert_same_or_tied,
    non_finite_noise,
    two_sample_checks,
)
from smoothtopk import perturbed  # noqa: E402
from smoothtopk import perturbed_triton as pt  # noqa: E402
from smoothtopk.functional import imbalanced_noised_topk_loss, noised_topk_loss  # noqa: E402
from smoothtopk.ops import _perturbed_kth_reference  # noqa: E402

DEVICE = torch.device("cuda" if ON_GPU else "cpu")
SCALE = 10 if ON_GPU else 1  # sample sizes grow on a GPU
LAW_ROWS = 20_000 if ON_GPU else 80  # the interpreter runs ~20 ms per (row, draw)


def _on(*tensors):
    return [t.to(DEVICE) for t in tensors]


@pytest.mark.parametrize("scores", ["normal", "flat", "ties", "peaked", "nonfinite"])
@pytest.mark.parametrize("epsilon", [1e-6, 1.0, 1e3])
@pytest.mark.parametrize(("cols", "k"), [(7, 1), (7, 7), (300, 6), (2100, 6)])
def test_given_draws_equal_reference(scores, epsilon, cols, k):
    gen = torch.Generator().manual_seed(cols + k)
    x = adversarial(scores, 6, cols, gen)
    noise = torch.randn(3, 6, cols, generator=gen)
    perturbed_scores = torch.add(x, noise, alpha=epsilon)
    xd, pd = _on(x, perturbed_scores)
    values, indices = pt.kth_draws(xd, k, epsilon, 3, perturbed=pd)
    ref_values, ref_indices = _perturbed_kth_reference(x, k, epsilon, 3, None, noise)
    torch.testing.assert_close(values.cpu(), ref_values, rtol=0, atol=0, equal_nan=True)
    assert_same_or_tied(x, noise, epsilon, indices.cpu(), ref_indices)


@pytest.mark.parametrize("epsilon", [0.1, 1.0])
def test_given_non_finite_draws_equal_reference(epsilon):
    """Given draws holding NaN or infinities on finite scores: NaN above everything."""
    gen = torch.Generator().manual_seed(3)
    x = adversarial("peaked" if epsilon < 1 else "normal", 4, 300, gen)
    noise = non_finite_noise(x, gen)
    xd, pd = _on(x, torch.add(x, noise, alpha=epsilon))
    values, indices = pt.kth_draws(xd, 6, epsilon, 6, perturbed=pd)
    ref_values, ref_indices = _perturbed_kth_reference(x, 6, epsilon, 6, None, noise)
    torch.testing.assert_close(values.cpu(), ref_values, rtol=0, atol=0, equal_nan=True)
    assert_same_or_tied(x, noise, epsilon, indices.cpu(), ref_indices)


@triton.jit
def _normals_kernel(seed_ptr, out_ptr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    counter = (pid * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    r0, r1, r2, r3 = tl.randint4x(tl.load(seed_ptr), counter)
    z0, z1 = pt._normal_pair(r0, r1)
    z2, z3 = pt._normal_pair(r2, r3)
    base = out_ptr + pid * 4 * BLOCK + tl.arange(0, BLOCK)
    tl.store(base, z0)
    tl.store(base + BLOCK, z1)
    tl.store(base + 2 * BLOCK, z2)
    tl.store(base + 3 * BLOCK, z3)


def test_generator_normals_have_the_normal_law_and_the_bound():
    """The kernel's N(0, 1) (Philox + Box–Muller): mean, variance, tails and the pair's
    correlation within 4 s.e.; every |Z| below ``Z_BOUND``."""
    block, programs = 4096, 64 * SCALE * SCALE
    seed = torch.tensor([987654321], dtype=torch.int64, device=DEVICE)
    out = torch.empty(programs * 4 * block, device=DEVICE)
    _normals_kernel[(programs,)](seed, out, BLOCK=block)
    z = out.double().cpu()
    n = z.numel()
    assert bool(z.isfinite().all()) and z.abs().max().item() < pt.Z_BOUND
    assert abs(z.mean().item()) <= Z_MAX / math.sqrt(n)
    assert abs(z.var().item() - 1.0) <= Z_MAX * math.sqrt(2.0 / n)
    for level in (0.5, 1.0, 2.0, 3.0, 4.0):
        p = math.erfc(level / math.sqrt(2))  # P(|Z| > level)
        freq = (z.abs() > level).double().mean().item()
        assert abs(freq - p) <= Z_MAX * math.sqrt(p * (1 - p) / n) + 1.0 / n
    pairs = z.reshape(programs, 4, block)
    corr = (pairs[:, 0] * pairs[:, 1]).mean().item()  # the two outputs of one transform
    assert abs(corr) <= Z_MAX / math.sqrt(n / 4)


_LAW_CASES = [
    ("normal", 40, 6, 1.0),  # every class can enter
    ("normal", 300, 1, 0.3),
    ("peaked", 2100 if ON_GPU else 600, 6, 0.1),  # a few classes far ahead
    ("flat", 40, 3, 1e-3),  # every class alike
    ("ties", 40, 2, 1e-6),  # ties broken by tiny noise only
]


@pytest.mark.parametrize(("scores", "cols", "k", "epsilon"), _LAW_CASES)
def test_law_matches_reference(scores, cols, k, epsilon):
    gen = torch.Generator().manual_seed(cols * k)
    row = adversarial(scores, 1, cols, gen)
    if scores == "peaked":
        row = row.flip(1)
    rows = LAW_ROWS
    x = row.expand(rows, cols).contiguous()
    (xd,) = _on(x)
    fast = pt.kth_draws(xd, k, epsilon, 5, torch.Generator(DEVICE).manual_seed(cols))
    ref = _perturbed_kth_reference(x, k, epsilon, 5, gen, None)
    groups = row[0].long() if scores == "ties" else None  # tied classes: one group
    two_sample_checks([t.cpu() for t in fast], ref, cols, groups)


def test_follows_the_generator_and_handles_edge_shapes():
    x = torch.randn(4, 50).to(DEVICE)
    first = pt.kth_draws(x, 3, 0.5, 2, torch.Generator(DEVICE).manual_seed(9))
    again = pt.kth_draws(x, 3, 0.5, 2, torch.Generator(DEVICE).manual_seed(9))
    other = pt.kth_draws(x, 3, 0.5, 2, torch.Generator(DEVICE).manual_seed(10))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    one = pt.kth_draws(x[:, :1], 1, 1.0, 3)  # C = 1: the only column
    assert bool((one[1] == 0).all())
    empty = pt.kth_draws(x[:0], 3, 1.0, 2)
    assert empty[0].shape == (0, 2) and empty[1].shape == (0, 2)
    if ON_GPU:  # the default generator: seeded by torch.manual_seed, advanced by each call
        torch.manual_seed(3)
        first = pt.kth_draws(x, 3, 0.5, 2)
        torch.manual_seed(3)
        again, following = pt.kth_draws(x, 3, 0.5, 2), pt.kth_draws(x, 3, 0.5, 2)
        assert torch.equal(first[0], again[0]) and not torch.equal(again[0], following[0])
        first = pt.kth_draws(x, 3, 0.5, 2, torch.Generator(DEVICE).manual_seed(9))
    strided = x.t().contiguous().t()  # column stride != 1
    got = pt.kth_draws(strided, 3, 0.5, 2, torch.Generator(DEVICE).manual_seed(9))
    assert torch.equal(got[0], first[0]) and torch.equal(got[1], first[1])


@pytest.mark.parametrize("margin_kind", ["float", "per_row", "per_class"])
@pytest.mark.parametrize("scale", [None, 60.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_hinge_kernels_equal_the_torch_function(margin_kind, scale, reduction):
    """Forward (with its reduction) and backward kernels against ``_NoisedHinge`` + torch's
    reduction, on a CPU, in float64-free float32; gradients for the scores and margins."""
    gen = torch.Generator().manual_seed(4)
    n, c, b = 37, 50, 5
    scores = torch.randn(c, n, generator=gen).t()  # non-contiguous rows
    target = torch.randint(0, c, (n,), generator=gen)
    values = torch.randn(n, b, generator=gen)
    indices = torch.randint(0, c, (n, b), generator=gen)
    indices[0] = target[0]  # a draw that picks the label
    values[1] = scores[1, target[1]] + 5.0  # a large hinge; row 2 below: no hinge
    values[2] = scores[2, target[2]] - 5.0
    margins = torch.rand(n if margin_kind == "per_row" else c, generator=gen)
    weights = torch.rand(n, generator=gen) if reduction == "none" else torch.tensor(0.7)

    ref_x = scores.clone().requires_grad_()
    ref_margins = margins.clone().requires_grad_()
    margin = (1.0 if margin_kind == "float" else
              ref_margins[target] if margin_kind == "per_class" else ref_margins)
    ref = perturbed._NoisedHinge.apply(ref_x, target, margin, values, indices, scale, "none",
                                      False)
    ref = {"none": ref, "mean": ref.mean(), "sum": ref.sum()}[reduction]
    (ref * weights).sum().backward()

    x = scores.to(DEVICE).requires_grad_()
    dev_margins = margins.to(DEVICE).requires_grad_()
    out = pt.NoisedHingeFunction.apply(
        x, target.to(DEVICE), 1.0 if margin_kind == "float" else dev_margins,
        values.to(DEVICE), indices.to(DEVICE), scale, reduction, margin_kind == "per_class")
    assert out.shape == ref.shape
    (out * weights.to(DEVICE)).sum().backward()
    torch.testing.assert_close(out.detach().cpu(), ref.detach(), rtol=1e-6, atol=1e-5)
    # a GPU fuses count·share − g into one rounding: 1 ulp of g where they cancel
    ulp = 1e-6 * (1.0 if scale is None else scale)
    torch.testing.assert_close(x.grad.cpu(), ref_x.grad, rtol=1e-6, atol=ulp)
    if margin_kind != "float":
        torch.testing.assert_close(dev_margins.grad.cpu(), ref_margins.grad, rtol=1e-6,
                                   atol=1e-7)


@pytest.mark.skipif(not ON_GPU, reason="the interpreter ignores device assertions")
@pytest.mark.parametrize("bad", [10, -1])
def test_hinge_kernel_asserts_the_target_range(bad):
    """An out-of-range target fails in the kernel with a device-side assertion naming the
    range, as ``F.cross_entropy``'s does; run in a subprocess, since the assertion ends
    that process's CUDA context."""
    code = (
        "import torch\n"
        "from smoothtopk.functional import noised_topk_loss\n"
        "x = torch.randn(4, 10, device='cuda')\n"
        f"t = torch.tensor([0, 1, {bad}, 2], device='cuda')\n"
        "noised_topk_loss(x, t, k=3).item()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    assert "target values must be in [0, C)" in done.stdout + done.stderr


def test_noised_hinge_loss_equals_draws_then_hinge():
    """The fused entry point is kth_draws followed by the hinge, on the same generator."""
    gen = torch.Generator().manual_seed(12)
    scores = torch.randn(16, 300, generator=gen).to(DEVICE)
    target = torch.randint(0, 300, (16,), generator=gen).to(DEVICE)
    margins = torch.rand(300, generator=gen).to(DEVICE)
    loss = pt.noised_hinge_loss(scores, target, 6, 0.3, 5,
                                torch.Generator(DEVICE).manual_seed(1), margins, 60.0, "mean")
    values, _ = pt.kth_draws(scores, 6, 0.3, 5, torch.Generator(DEVICE).manual_seed(1))
    label = scores.gather(1, target[:, None])[:, 0]
    expected = (60.0 * torch.relu(margins[target] + values.mean(1) - label)).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the losses on a GPU

cuda_only = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")


@cuda_only
@pytest.mark.parametrize("imbalanced", [False, True])
def test_cuda_loss_equals_cpu_loss_on_given_noise(imbalanced):
    gen = torch.Generator().manual_seed(2)
    n, c = 64, 1081
    scores = torch.randn(n, c, generator=gen)
    target = torch.randint(0, c, (n,), generator=gen)
    noise = torch.randn(5, n, c, generator=gen)
    margins = torch.rand(c, generator=gen)
    results = []
    for device in ["cpu", "cuda"]:
        x = scores.clone().to(device).requires_grad_()
        if imbalanced:
            loss = imbalanced_noised_topk_loss(x, target.to(device), margins.to(device), k=5,
                                               epsilon=0.1, noise=noise.to(device))
        else:
            loss = noised_topk_loss(x, target.to(device), k=5, noise=noise.to(device))
        loss.backward()
        results.append((loss.detach().cpu(), x.grad.cpu()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-5, atol=1e-7)


@cuda_only
@pytest.mark.parametrize(("regime", "epsilon"), [("normal", 1.0), ("peaked", 0.1)])
def test_cuda_loss_has_the_law_of_the_cpu_loss(regime, epsilon):
    """Per-row losses of many calls: CUDA (Triton) and CPU (compiled kernel) samples agree
    in mean and variance within 4 s.e."""
    gen = torch.Generator().manual_seed(5)
    c = 10_000
    row = adversarial(regime, 1, c, gen)
    x = row.expand(20_000, c).contiguous()
    target = torch.zeros(20_000, dtype=torch.long)
    cpu = noised_topk_loss(x, target, k=5, epsilon=epsilon, reduction="none", generator=gen)
    cuda = noised_topk_loss(x.cuda(), target.cuda(), k=5, epsilon=epsilon, reduction="none")
    two_sample_checks((cuda.cpu(), torch.zeros(20_000, dtype=torch.long)),
                      (cpu, torch.zeros(20_000, dtype=torch.long)), 1)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_sampler_keeps_the_dtype(dtype):
    x = torch.randn(8, 300, device="cuda").to(dtype)
    values, indices = perturbed.sample_perturbed_kth(x, 6, 0.5, 5)
    assert values.dtype == dtype and indices.dtype == torch.int64
    assert bool(((values.double() - x.double().gather(1, indices)).abs() < 0.5 * 7).all())
