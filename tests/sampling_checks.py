"""Checks shared by the sampler tests (``test_perturbed.py``, ``test_perturbed_triton.py``):
adversarial score rows, equality up to float ties, and two-sample comparisons of laws."""

from __future__ import annotations

import math

import torch

Z_MAX = 4.0  # standard errors allowed in every statistical comparison
_TAIL = math.erfc(Z_MAX / math.sqrt(2))  # two-sided tail of one 4-s.e. comparison


def adversarial(name: str, rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    if name == "normal":
        return torch.randn(rows, cols, generator=gen)
    if name == "flat":  # every class tied: candidates are an arbitrary subset of ties
        return torch.zeros(rows, cols)
    if name == "ties":  # few distinct values, ties across the candidate boundary
        return torch.randint(0, 4, (rows, cols), generator=gen).float()
    if name == "leader":  # one class 2.5 above the others, which are N(0, 1)
        x = torch.randn(rows, cols, generator=gen)
        x[:, 0] = x.max(dim=1).values + 2.5
        return x
    if name == "peaked":  # a trained network's scores: a few classes far ahead
        x = torch.randn(rows, cols, generator=gen)
        x[:, :5] += 8.0
        return x
    if name == "nonfinite":  # NaN, ±inf: drawn in full, in torch.topk's order
        x = torch.randn(rows, cols, generator=gen)
        x[0, 1] = math.nan
        x[1, 2] = math.inf
        x[2, :] = -math.inf
        x[2, : cols // 2] = 0.0
        x[3, 0] = -math.inf
        return x
    raise ValueError(name)


def non_finite_noise(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """6 standard-normal draws for the 4 rows of ``x`` holding NaN and infinities: NaN in a
    class far from the top (it still enters the top-k), in the top class, in more entries
    than k, in a whole draw; +inf in one entry, −inf in every other entry of a row."""
    rows, cols = x.shape
    assert rows == 4
    noise = torch.randn(6, rows, cols, generator=gen)
    noise[0, 0, 7] = math.nan
    noise[1, 0, x[0].argmax()] = math.nan
    noise[2, 1, : cols // 2] = math.nan
    noise[3, 2] = math.nan
    noise[4, 2, 3] = math.inf
    noise[5, 3, ::2] = -math.inf
    return noise


def assert_same_or_tied(x, noise, epsilon, indices, ref_indices):
    """Same column, or (float32 rounding made the perturbed entries equal) an entry with
    the same perturbed value: torch.topk breaks such ties by position in its input."""
    full = torch.add(x, noise, alpha=epsilon)  # (B, R, C)
    got = full.gather(-1, indices.t().unsqueeze(-1))
    ref = full.gather(-1, ref_indices.t().unsqueeze(-1))
    assert torch.equal(got.nan_to_num(), ref.nan_to_num())
    distinct = [len(set(r.tolist())) == r.numel() for r in full.reshape(-1, full.shape[-1])]
    if all(distinct):
        assert torch.equal(indices, ref_indices)


def two_sample_checks(fast, ref, cols: int, groups: torch.Tensor | None = None) -> None:
    """Means, variances and per-column frequencies of two samples agree (4 s.e.).

    ``groups`` (column -> group id) compares frequencies per group instead: float32
    rounding can make perturbed entries exactly equal, and ``torch.topk`` then breaks the
    tie by position, which differs between a full row and a candidate list."""
    (fv, fi), (rv, ri) = fast, ref
    if groups is not None:
        fi, ri, cols = groups[fi], groups[ri], int(groups.max()) + 1
    fv, rv = fv.double().flatten(), rv.double().flatten()
    n = fv.numel()
    se_mean = math.sqrt((fv.var() + rv.var()).item() / n)
    assert abs((fv.mean() - rv.mean()).item()) <= Z_MAX * se_mean + 1e-12
    # variance of the sample variance: (m4 - var^2) / n, pooled
    pooled = torch.cat([fv, rv])
    centred = pooled - pooled.mean()
    se_var = math.sqrt(2 * ((centred**4).mean() - centred.var() ** 2).item() / n)
    assert abs((fv.var() - rv.var()).item()) <= Z_MAX * se_var + 1e-12
    f_freq = torch.bincount(fi.flatten(), minlength=cols).double() / n
    r_freq = torch.bincount(ri.flatten(), minlength=cols).double() / n
    p = (f_freq + r_freq) / 2
    se = (2 * p * (1 - p) / n).sqrt()
    # one test per column: Bonferroni, so that the family errs as rarely as one 4-s.e. test
    cells = int((p > 0).sum())
    z_cell = -torch.special.ndtri(torch.tensor(_TAIL / cells, dtype=torch.float64)).item()
    assert bool(((f_freq - r_freq).abs() <= z_cell * se + 1.0 / n).all())
