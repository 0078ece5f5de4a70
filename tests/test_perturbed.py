"""Tests of the exact fast samplers of ``smoothtopk.perturbed``: the compiled CPU kernel
(``sample_perturbed_kth`` on CPU tensors, :mod:`smoothtopk.perturbed_cpu`) and the
torch-only sampler used on other devices (``_sample_torch``, run here on the CPU).

Two kinds of checks against the straightforward definition (every Gaussian drawn, then the
k-th largest of each perturbed row), written here in float64 loops-free brute force and
also taken from ``smoothtopk.ops._perturbed_kth_reference``:

* given the same draws (``noise=``), the pruning (candidates, threshold, exceedances) must
  return bit for bit the reference's values and columns, on adversarial inputs;
* sampling its own draws, the law must match: means and variances of the values and the
  per-column selection frequencies within 4 standard errors (two independent samples).
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from numba import njit

from sampling_checks import (
    Z_MAX,
    adversarial,
    assert_same_or_tied,
    non_finite_noise,
    two_sample_checks,
)
from smoothtopk import functional as STF
from smoothtopk import ops, perturbed, perturbed_cpu
from smoothtopk.functional import noised_topk_loss
from smoothtopk.ops import _perturbed_kth_reference, smooth_kth_largest
from smoothtopk.perturbed import _exceedance_columns, _sample_torch, sample_perturbed_kth

SAMPLERS = {"kernel": sample_perturbed_kth, "torch": _sample_torch}

def _brute_force(x: torch.Tensor, k: int, epsilon: float, noise: torch.Tensor):
    """k-th largest of each row of x + ε·noise, by a full sort in float64."""
    perturbed = x.double().unsqueeze(0) + epsilon * noise.double()
    order = torch.sort(perturbed, dim=-1, descending=True, stable=True)
    return order.values[..., k - 1].t(), order.indices[..., k - 1].t()


# the torch sampler assumes finite scores; the CPU kernel draws non-finite rows in full
_SAMPLER_SCORES = [(sampler, scores) for sampler in SAMPLERS
                   for scores in ["normal", "flat", "ties", "peaked", "nonfinite"]
                   if (sampler, scores) != ("torch", "nonfinite")]


@pytest.mark.parametrize(("sampler", "scores"), _SAMPLER_SCORES)
@pytest.mark.parametrize("epsilon", [1e-6, 0.1, 1.0, 1e3])
@pytest.mark.parametrize(("cols", "k", "n_candidates"),
                         [(7, 1, None), (40, 3, None), (100, 6, None), (300, 6, None),
                          (300, 6, 6)])
def test_equals_reference_given_noise(sampler, scores, epsilon, cols, k, n_candidates):
    gen = torch.Generator().manual_seed(cols + k)
    x = adversarial(scores, 16, cols, gen)
    noise = torch.randn(5, 16, cols, generator=gen)
    values, indices = SAMPLERS[sampler](x, k, epsilon, 5, noise=noise,
                                        n_candidates=n_candidates)
    ref_values, ref_indices = _perturbed_kth_reference(x, k, epsilon, 5, None, noise)
    torch.testing.assert_close(values, ref_values, rtol=0, atol=0, equal_nan=True)
    assert_same_or_tied(x, noise, epsilon, indices, ref_indices)
    if scores == "nonfinite":
        return
    # and the reference itself is the brute-force definition
    bf_values, bf_indices = _brute_force(x, k, epsilon, noise)
    torch.testing.assert_close(values.double(), bf_values, rtol=0, atol=1e-6 * (1 + epsilon))
    if scores != "ties":  # float64 has no rounding ties
        assert torch.equal(indices, bf_indices)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("epsilon", [1e-6, 1.0, 1e3])
def test_equals_reference_given_noise_huge_c(sampler, epsilon):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 100_000, generator=gen)
    noise = torch.randn(3, 2, 100_000, generator=gen)
    got = SAMPLERS[sampler](x, 6, epsilon, 3, noise=noise)
    ref = _perturbed_kth_reference(x, 6, epsilon, 3, None, noise)
    assert torch.equal(got[0], ref[0])
    assert_same_or_tied(x, noise, epsilon, got[1], ref[1])


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("epsilon", [0.1, 1.0])
@pytest.mark.parametrize("cols", [300, 5000])
def test_equals_reference_on_non_finite_given_noise(sampler, epsilon, cols):
    """Given draws holding NaN or infinities on finite scores (the candidates' path, the
    broad rows' path, many candidates): the reference's order, NaN above everything."""
    gen = torch.Generator().manual_seed(cols)
    x = adversarial("peaked" if epsilon < 1 else "normal", 4, cols, gen)
    noise = non_finite_noise(x, gen)
    values, indices = SAMPLERS[sampler](x, 6, epsilon, 6, noise=noise)
    ref_values, ref_indices = _perturbed_kth_reference(x, 6, epsilon, 6, None, noise)
    torch.testing.assert_close(values, ref_values, rtol=0, atol=0, equal_nan=True)
    assert_same_or_tied(x, noise, epsilon, indices, ref_indices)  # among NaN: any NaN


_LAW_CASES = [
    ("normal", 200, 3, 0.3, 3),  # torch: many exceedances over the candidates
    ("normal", 200, 6, 1.0, None),  # kernel: a short row (no search), broad
    ("normal", 2000, 6, 1.0, None),  # kernel: broad, the top classes ordered, the rest listed
    ("normal", 2000, 6, 0.5, None),  # kernel: broad, the rest's upper part ordered later
    ("leader", 2000, 6, 1.0, None),  # kernel: broad, the ordered part deeper than its depth
    ("peaked", 1000, 6, 0.1, None),  # few candidates matter
    ("peaked", 1000, 6, 0.1, 6),  # kernel: a few proposals under the common bound
    ("flat", 300, 6, 1.0, None),  # every class alike
    ("flat", 3000, 6, 1e-3, None),  # every class alike, tiny noise
    ("ties", 300, 2, 1e-6, None),  # ties broken by tiny noise only
    ("normal", 300, 6, 1e3, None),  # noise dominates: every class can win
    ("normal", 100, 1, 0.5, None),  # kernel: a short row, every class a candidate
]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(("scores", "cols", "k", "epsilon", "n_candidates"), _LAW_CASES)
def test_law_matches_reference(monkeypatch, sampler, scores, cols, k, epsilon, n_candidates):
    # torch sampler: keep the sparse path even where it would switch to full draws
    monkeypatch.setattr(perturbed, "_DENSE_FRACTION", 1.0)
    monkeypatch.setattr(perturbed, "_DENSE_SPREAD", math.inf)
    gen = torch.Generator().manual_seed(cols * k)
    row = adversarial(scores, 1, cols, gen)
    x = row.expand(4000, cols).contiguous()  # 4000 rows x 5 draws of one row's law
    fast = SAMPLERS[sampler](x, k, epsilon, 5, generator=gen, n_candidates=n_candidates)
    ref = _perturbed_kth_reference(x, k, epsilon, 5, gen, None)
    groups = row[0].long() if scores == "ties" else None  # tied classes: one group
    two_sample_checks(fast, ref, cols, groups)


@pytest.mark.slow
@pytest.mark.parametrize(("scores", "epsilon"), [("flat", 1.0), ("normal", 1e-3),
                                                 ("normal", 1e3)])
def test_law_matches_reference_huge_c(scores, epsilon):
    """Adversarial inputs for the lazy revealing: 50 000 classes, all alike or tiny noise."""
    gen = torch.Generator().manual_seed(13)
    cols = 50_000
    row = adversarial(scores, 1, cols, gen)
    x = row.expand(600, cols).contiguous()
    fast = sample_perturbed_kth(x, 6, epsilon, 5, generator=gen)
    ref = _perturbed_kth_reference(x, 6, epsilon, 5, gen, None)
    two_sample_checks(fast, ref, cols)


def test_dense_switch_keeps_the_law():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1, 400, generator=gen).expand(4000, 400).contiguous()
    fast = _sample_torch(x, 6, 2.0, 5, generator=gen)  # eps >> spread: full draws
    ref = _perturbed_kth_reference(x, 6, 2.0, 5, gen, None)
    two_sample_checks(fast, ref, 400)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("cols", [1, 2, 6])
def test_k_equal_to_c_and_tiny_rows(sampler, cols):
    gen = torch.Generator().manual_seed(cols)
    x = torch.randn(3, cols, generator=gen)
    values, indices = SAMPLERS[sampler](x, cols, 1.0, 4, generator=gen)
    assert values.shape == (3, 4) and indices.shape == (3, 4)
    assert bool(((indices >= 0) & (indices < cols)).all())
    # the C-th largest is the minimum of the perturbed row, at the column it was read from
    assert bool((values <= x.gather(1, indices) + 10.0).all())


def test_kernel_gaussians_have_the_normal_law():
    """One class per row, k = 1: each value is x + εZ with the kernel's own Gaussian
    (ziggurat, tail included): mean, variance and tail frequencies within 4 s.e."""
    gen = torch.Generator().manual_seed(21)
    n = 400_000
    values, _ = sample_perturbed_kth(torch.zeros(n // 4, 1), 1, 1.0, 4, generator=gen)
    z = values.double().flatten()
    assert abs(z.mean().item()) <= Z_MAX / math.sqrt(n)
    assert abs(z.var().item() - 1.0) <= Z_MAX * math.sqrt(2.0 / n)
    for level in (0.5, 1.0, 2.0, 3.0, 3.7):  # 3.7: beyond the ziggurat's base strip
        p = math.erfc(level / math.sqrt(2))  # P(|Z| > level)
        freq = (z.abs() > level).double().mean().item()
        assert abs(freq - p) <= Z_MAX * math.sqrt(p * (1 - p) / n)


def test_kernel_result_does_not_depend_on_threads():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(64, 3000, generator=gen).numpy()
    one = perturbed_cpu.kth_draws(x, 6, 1.0, 5, 14, seed=1234, threads=1)
    three = perturbed_cpu.kth_draws(x, 6, 1.0, 5, 14, seed=1234, threads=3)
    assert (one[0] == three[0]).all() and (one[1] == three[1]).all()
    other = perturbed_cpu.kth_draws(x, 6, 1.0, 5, 14, seed=1235, threads=1)
    assert not (one[0] == other[0]).all()


def test_kernel_follows_the_generator():
    x = torch.randn(32, 500)
    first = sample_perturbed_kth(x, 6, 0.5, 5, generator=torch.Generator().manual_seed(9))
    again = sample_perturbed_kth(x, 6, 0.5, 5, generator=torch.Generator().manual_seed(9))
    other = sample_perturbed_kth(x, 6, 0.5, 5, generator=torch.Generator().manual_seed(10))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    torch.manual_seed(3)
    default = sample_perturbed_kth(x, 6, 0.5, 5)
    torch.manual_seed(3)
    assert torch.equal(default[0], sample_perturbed_kth(x, 6, 0.5, 5)[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_kernel_keeps_the_dtype(dtype):
    x = torch.randn(8, 300).to(dtype)
    values, indices = sample_perturbed_kth(x, 6, 0.5, 5)
    assert values.dtype == dtype and indices.dtype == torch.int64
    # the value is the perturbed score of the column it names: within a few ε of it
    assert bool(((values.double() - x.double().gather(1, indices)).abs() < 0.5 * 8).all())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [None, math.nan, math.inf, -math.inf])
def test_chunk_maxima_of_strided_chunks(bad, dtype):
    """Chunk c holds the columns c + t·n (t < 16); a NaN or an infinity makes its top NaN
    (the check runs in the row's dtype, so no fast-math rule may drop it)."""
    gen = torch.Generator().manual_seed(4)
    row = torch.randn(16 * 37 + 5, generator=gen).numpy().astype(dtype)
    if bad is not None:
        row[3 + 37 * 7] = bad
    tops = np.empty(37, dtype)
    perturbed_cpu._chunk_tops(row, tops)
    for c in range(37):
        chunk = [float(row[c + 37 * t]) for t in range(16)]
        if c == 3 and bad is not None:
            assert math.isnan(tops[c])
        else:
            assert tops[c] == max(chunk)


@pytest.mark.parametrize(("scores", "epsilon"), [("normal", 1.0), ("peaked", 0.1),
                                                 ("peaked", 10.0), ("flat", 1.0),
                                                 ("ties", 1e-6)])
def test_candidates_are_the_columns_reaching_the_bound(scores, epsilon):
    """Every column >= u and none below, at least k + 1 of them, by decreasing score (when
    few); fewer on peaked scores with a small ε."""
    gen = torch.Generator().manual_seed(6)
    x = adversarial(scores, 8, 1081, gen).numpy()
    k, m = 6, 14
    counts = []
    for row in x:
        cols = row.shape[0]
        cand_col, cand_x = np.empty(cols, np.int64), np.empty(cols)
        tops = np.empty(cols // 16 + 1, np.float32)
        chosen, select = np.empty(cols // 16 + 1, np.int64), np.empty(k + 2)
        perturbed_cpu._chunk_tops(row, tops[:cols // 16])  # the caller's part of step 1
        perturbed_cpu._select_largest(tops[:cols // 16], k, select, np.empty(cols),
                                      np.empty(cols, np.int64))
        count, u, finite = perturbed_cpu._candidates(row, k, m, epsilon, cand_col, cand_x,
                                                     tops, chosen, select, np.empty(cols),
                                                     np.empty(cols, np.int64))
        assert finite and count >= k + 1
        assert sorted(cand_col[:count].tolist()) == np.flatnonzero(row >= u).tolist()
        if count <= perturbed_cpu._SORTED_CANDIDATES:
            assert (np.diff(cand_x[:count]) <= 0).all()
        assert (cand_x[:count] == row[cand_col[:count]]).all()
        counts.append(count)
    if scores == "peaked" and epsilon == 0.1:  # 5 classes ahead: the gap rule applies
        assert max(counts) <= 2 * (k + 2)


@pytest.mark.parametrize(("scores", "epsilon", "searched"),
                         [("peaked", 0.1, {True}), ("normal", 0.3, {True, False}),
                          ("normal", 3.0, {False}), ("flat", 1.0, {False})])
def test_short_rows_search_their_candidates_when_few_compete(scores, epsilon, searched):
    """A short row (fewer than ``16 (M + 2)`` classes) takes each class as its own chunk
    and searches its candidates when at most ``M + 1`` classes lie within 1.5ε of its k-th
    largest score (then few others can be proposed): the columns ``>= u``, at least
    ``k + 1`` and at most ``M + 1`` of them; otherwise every class is a candidate."""
    gen = torch.Generator().manual_seed(8)
    x = adversarial(scores, 12, 100, gen).numpy()
    k, m = 6, 14
    seen = set()
    for row in x:
        cols = row.shape[0]
        kth = np.sort(row.astype(np.float64))[-k]
        expected = int((row.astype(np.float64) >= kth - 1.5 * epsilon).sum()) <= m + 1
        cand_col, cand_x = np.empty(cols, np.int64), np.empty(cols)
        count, u, finite = perturbed_cpu._candidates(
            row, k, m, epsilon, cand_col, cand_x, np.empty(cols // 16 + 1, np.float32),
            np.empty(cols // 16 + 1, np.int64), np.empty(k + 2), np.empty(cols),
            np.empty(cols, np.int64))
        assert finite
        if expected:
            assert k + 1 <= count <= m + 1
            assert sorted(cand_col[:count].tolist()) == np.flatnonzero(row >= u).tolist()
            assert (cand_x[:count] == row[cand_col[:count]]).all()
        else:
            assert count == cols and u == -np.inf
        seen.add(expected)
    assert seen == searched


def _law_case_row(scores, cols, k):
    """The row of a ``_LAW_CASES`` case (as the law test draws it) and its chunk maxima,
    as the kernel computes them."""
    row = adversarial(scores, 1, cols, torch.Generator().manual_seed(cols * k))[0].numpy()
    tops = np.empty(cols // 16, np.float32)
    perturbed_cpu._chunk_tops(row, tops)
    return row, tops


def _law_case_is_broad(scores, cols, k, epsilon, n_candidates):
    """Whether the kernel orders the row of a ``_LAW_CASES`` case by buckets from the outset
    (the broad path), from the same chunk maxima as the kernel: by their spread, or for a
    short row (too few chunks for the search) by :func:`perturbed_cpu._short_is_broad`."""
    m = k + perturbed.DEFAULT_EXTRA_CANDIDATES if n_candidates is None else n_candidates
    row, tops = _law_case_row(scores, cols, k)
    if cols // 16 > m + 1:
        return bool(perturbed_cpu._is_broad(tops, float(row.max()), m, epsilon))
    if cols < perturbed_cpu._SHORT_BROAD * (k + perturbed_cpu._BROAD_FULL):
        return False
    return bool(perturbed_cpu._short_is_broad(row, float(row.max()), k, epsilon))


#: On 300 classes (k = 6), ``B`` for which the ``B`` draws' Gaussians of the classes drawn in
#: full do not fit in ``C`` entries: the kernel then draws them draw by draw.
_UNBATCHED = [("normal", 1.0, 12), ("peaked", 0.1, 60)]


def _draw_by_draw(scores: str, epsilon: float, n_samples: int, cols: int = 300,
                  k: int = 6) -> bool:
    """Whether the kernel surely draws a row's Gaussians draw by draw: ``B`` times the
    classes drawn in full per draw (a broad row's ``k + 24``, at least ``k + 1``
    candidates otherwise) exceed ``C``."""
    broad = _law_case_is_broad(scores, cols, k, epsilon, None)
    return n_samples * (k + perturbed_cpu._BROAD_FULL if broad else k + 1) > cols


@pytest.mark.parametrize(("scores", "epsilon", "n_samples"), _UNBATCHED)
def test_law_matches_reference_draw_by_draw(scores, epsilon, n_samples):
    """Many draws of a short row, whose Gaussians the kernel draws draw by draw (the law
    cases above, with ``B = 5``, draw them at once), on a broad row and a searched one."""
    cols, k = 300, 6
    assert _draw_by_draw(scores, epsilon, n_samples, cols, k)
    gen = torch.Generator().manual_seed(cols * k)
    row = adversarial(scores, 1, cols, gen)
    x = row.expand(24_000 // n_samples, cols).contiguous()
    fast = sample_perturbed_kth(x, k, epsilon, n_samples, generator=gen)
    ref = _perturbed_kth_reference(x, k, epsilon, n_samples, gen, None)
    two_sample_checks(fast, ref, cols)


@pytest.mark.parametrize(("scores", "epsilon", "n_samples"),
                         [("normal", 1.0, 5), ("peaked", 0.1, 5), *_UNBATCHED])
def test_draws_of_a_row_are_independent(scores, epsilon, n_samples):
    """The ``B`` draws of a row use fresh Gaussians each, drawn at once (``B = 5``) or draw
    by draw: with ``z`` a row's standardised values, ``(Σ_b z_b)² / B`` averages 1 over the
    rows within 4 s.e. A draw reusing another's noise would add twice their correlation
    (close to 1), divided by ``B``."""
    gen = torch.Generator().manual_seed(23)
    cols, rows = 300, 20_000 // n_samples
    assert _draw_by_draw(scores, epsilon, n_samples, cols) == (n_samples > 5)
    row = adversarial(scores, 1, cols, gen)
    values, _ = sample_perturbed_kth(row.expand(rows, cols).contiguous(), 6, epsilon,
                                     n_samples, generator=gen)
    z = values.double()
    z = (z - z.mean()) / z.std()
    per_row = z.sum(dim=1) ** 2 / n_samples
    se = per_row.std().item() / math.sqrt(rows)
    assert abs(per_row.mean().item() - 1.0) <= Z_MAX * se


def _broad_layout(scores, cols, k, epsilon, n_candidates):
    """How the kernel orders the (broad) row of a ``_LAW_CASES`` case: ``"every"`` class,
    or its classes down to ``_BROAD_DEPTH·ε`` below the largest score (``"split"``), or down
    to a lower cut (``"deeper"``: fewer than the head reach that depth), and the rest of
    the classes, with the cut (:func:`perturbed_cpu._broad_cut`)."""
    row, tops = _law_case_row(scores, cols, k)
    top, full = float(row.max()), k + perturbed_cpu._BROAD_FULL
    lists = np.empty(cols + 16, np.uint32), np.empty(cols + 16, np.uint32)
    cut, _, rest = perturbed_cpu._broad_cut(row, top, epsilon, full, tops, *lists)
    if rest == 0:
        return "every", rest, cut
    depth = float(np.float32(top - perturbed_cpu._BROAD_DEPTH * epsilon))
    return ("split" if cut == depth else "deeper"), rest, cut


def test_law_cases_cover_the_broad_layouts():
    """The law tests run broad rows ordered in every layout: every class; the top classes
    down to the depth, or deeper, with the rest listed; and (``ε = 0.5``) a rest that would
    make more than ``_REST_EXTEND`` proposals over a row's draws at the reference's median
    k-th largest value, so that the kernel orders its upper part in most rows."""
    layouts = {case: _broad_layout(*case) for case in _LAW_CASES
               if _law_case_is_broad(*case)}
    assert {layout for layout, _, _ in layouts.values()} == {"every", "split", "deeper"}
    case = ("normal", 2000, 6, 0.5, None)
    _, rest, cut = layouts[case]
    row = torch.from_numpy(_law_case_row(*case[:3])[0])
    values, _ = _perturbed_kth_reference(row.expand(200, 2000), 6, 0.5, 5,
                                         torch.Generator().manual_seed(1), None)
    level = perturbed_cpu._level((values.double().median().item() - cut) / 0.5)
    assert level[0] * rest * 5 > 2 * perturbed_cpu._REST_EXTEND


def test_law_cases_cover_both_paths():
    """The law tests above run broad rows (ordered from the outset) and searched ones, and
    short rows of both kinds (too few chunks for the search): broad, and every class a
    candidate."""
    broad = [_law_case_is_broad(*case) for case in _LAW_CASES]
    assert _law_case_is_broad("normal", 2000, 6, 1.0, None)
    assert not _law_case_is_broad("peaked", 1000, 6, 0.1, None)
    assert 3 <= sum(broad) <= len(broad) - 3
    assert _law_case_is_broad("normal", 200, 6, 1.0, None)
    assert _law_case_is_broad("normal", 200, 3, 0.3, 3)
    assert not _law_case_is_broad("normal", 100, 1, 0.5, None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_short_broad_rows(dtype):
    """A short row (fewer than ``16 (M + 2)`` classes) is drawn as a broad row when at
    least ``k + 24`` classes lie within 4ε of its largest score and at least an eighth of
    its classes under the cut, 2.5ε below it."""
    k, cols = 6, 100
    row = torch.randn(cols, generator=torch.Generator().manual_seed(3)).numpy().astype(dtype)

    def broad(r, epsilon):
        return perturbed_cpu._short_is_broad(r, float(r.max()), k, epsilon)

    assert broad(row, 1.0)
    assert not broad(row, 0.2)  # few classes near the top: the candidates' path
    assert not broad(row, 10.0)  # none under the cut: every Gaussian drawn
    peaked = row.copy()
    peaked[:5] += 8.0
    assert not broad(peaked, 0.1)
    # the counts at their bounds: exactly k + 24 classes within 4ε, an eighth under the cut
    edge = np.zeros(cols, dtype)
    edge[:k + perturbed_cpu._BROAD_FULL] = 4.0
    edge[0] = 5.0
    edge[cols - cols // 8:] = -10.0
    assert broad(edge, 1.0)
    edge[1] = 0.5  # one class fewer near the top
    assert not broad(edge, 1.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("column", [7, 99])  # in a chunk, after the chunks
def test_short_rows_with_non_finite_scores(bad, column):
    """Short rows broad enough for the broad path (N(0, 1) scores, ε = 1, k = 1) but
    holding a NaN or +∞, in a chunk or after the chunks, are drawn in full, in
    torch.topk's order: their largest perturbed entry is that one, in every draw."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(8, 100, generator=gen)
    assert perturbed_cpu._short_is_broad(x[0].numpy(), float(x[0].max()), 1, 1.0)
    x[:, column] = bad
    values, indices = sample_perturbed_kth(x, 1, 1.0, 5, generator=gen)
    assert bool((indices == column).all())
    if math.isnan(bad):
        assert bool(values.isnan().all())
    else:
        assert bool((values == bad).all())


@pytest.mark.parametrize(("scores", "epsilon"), [("normal", 1.0), ("normal", 0.05),
                                                 ("ties", 1.0), ("flat", 1.0),
                                                 ("subnormal", 1e3)])
@pytest.mark.parametrize("columns", ["every", "below u", "listed"])
def test_bucket_order_groups_the_columns_by_score(scores, epsilon, columns):
    """The counting sort orders each of its columns once: every column (a broad row, the
    largest score as u), or the columns listed (a broad row's top part), or every column
    with those at or above u last (a searched row's candidates); non-decreasing buckets,
    and bucket i holds scores in (u − (i+1)w, u − iw]: the last one open-ended, float
    rounding aside; ``ranked`` gives the bucket at each position. Subnormal gaps under a
    huge ε: the bucket width's inverse underflows their distance to u, and they still
    belong to bucket 0. The exact order: by bucket, then by stream (the i-th column sorted
    in stream ``i mod 4``, those past the last multiple of 4 in stream 0), then in the
    order given."""
    gen = torch.Generator().manual_seed(8)
    cols = 703  # not a multiple of 4: 3 columns past the streams' last full step
    if scores == "subnormal":
        x = np.zeros((4, cols))
        x[:, ::3] = 5e-324
    else:
        x = adversarial(scores, 4, cols, gen).double().numpy()
    width, n_buckets = epsilon * perturbed_cpu._BUCKET_WIDTH, 64
    for row in x:
        u = float(np.sort(row)[-15]) if columns == "below u" else float(row.max())
        # a listed subset, not in column order, its length not a multiple of 4
        given = np.flatnonzero(row >= np.median(row))[::-1][:cols // 3 * 2 + 1]
        sorted_ = given if columns == "listed" else np.arange(cols)
        n = sorted_.size
        order, ranked = np.empty(n, np.uint32), np.empty(n, np.uint8)
        bucket = np.empty(n, np.uint8)
        tally = np.empty(4 * (n_buckets + 1), np.uint32)
        at_u = n_buckets if columns == "below u" else 0
        listed = given.astype(np.uint32) if columns == "listed" else None
        perturbed_cpu._bucket_order(row, listed, n, u, width, n_buckets, at_u, order, ranked,
                                    bucket, tally)
        stream = np.where(np.arange(n) < n // 4 * 4, np.arange(n) % 4, 0)
        expected = sorted(range(n), key=lambda i: (bucket[i], stream[i], i))
        assert order.tolist() == sorted_[expected].tolist()
        assert ranked.tolist() == bucket[expected].tolist()
        count = n - int((row[sorted_] >= u).sum()) if columns == "below u" else n
        ids = ranked[:count].astype(np.int64)
        assert (np.diff(ids) >= 0).all() and ((ids >= 0) & (ids < n_buckets)).all()
        scores_in = row[order[:count]]
        assert (scores_in <= u - ids * width * (1 - 1e-9)).all()
        inner = ids < n_buckets - 1
        assert (scores_in[inner] > u - (ids[inner] + 1) * width * (1 + 1e-9)).all()
        if columns == "below u":
            assert (ranked[count:] == n_buckets).all()  # the candidates: last
            assert (row[order[count:]] >= u).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cols", [5, 16, 703, 4096])
@pytest.mark.parametrize("band", ["above", "between"])
def test_split_lists_a_band_and_what_lies_below(dtype, cols, band):
    """``_split``: the columns with lo <= x < hi, and those with x < lo, each in increasing
    order, with entries equal to lo and hi at the edges; the same from the vector path (16
    columns at a time, the kernel's when LLVM has the compress) and the column-by-column
    one."""
    rng = np.random.default_rng(cols)
    row = rng.integers(-8, 8, cols).astype(dtype) / dtype(4)  # many entries equal the bounds
    lo = float(dtype(-0.5))
    hi = np.inf if band == "above" else float(dtype(0.75))
    want_band = np.flatnonzero((row >= lo) & (row < hi))
    want_below = np.flatnonzero(row < lo)
    assert (want_band.size and want_below.size) or cols < 16
    vector = perturbed_cpu._VECTOR_COMPRESS
    assert perturbed_cpu._split is (perturbed_cpu._split_vector if vector
                                    else perturbed_cpu._split_serial)
    for split in [perturbed_cpu._split_serial] + [perturbed_cpu._split_vector] * vector:
        band_out = np.full(cols + 16, 99999, np.uint32)
        below_out = np.full(cols + 16, 99999, np.uint32)
        n, m = split(row, lo, hi, band_out, below_out)
        assert band_out[:n].tolist() == want_band.tolist()
        assert below_out[:m].tolist() == want_below.tolist()


@pytest.mark.parametrize("n", [6, 30, 48, 49, 100, 997])
@pytest.mark.parametrize("k", [1, 6, 40])
@pytest.mark.parametrize("values", ["normal", "ties", "ascending", "descending"])
def test_select_many_gives_the_k_best_in_topk_order(n, k, values):
    """The k best of n entries, past the floor of the slices' maxima: the same entries and
    order as a full sort by (value descending, column ascending), with ties (many entries
    equal to the floor) and monotone runs, where every slice maximum sits at one end of
    its slice."""
    k = min(k, n)  # 1 <= k <= n by contract
    rng = np.random.default_rng(n * 100 + k)
    vals = {"normal": rng.standard_normal(n), "ties": rng.integers(0, 3, n).astype(float),
            "ascending": np.arange(n, dtype=float),
            "descending": -np.arange(n, dtype=float)}[values]
    cols = rng.permutation(10 * n)[:n].astype(np.int64)
    top_val, top_col = np.empty(k), np.empty(k, np.int64)
    perturbed_cpu._select_many(vals.copy(), cols, n, k, top_val, top_col,
                              np.empty(n, np.int64))
    best = sorted(range(n), key=lambda i: (-vals[i], cols[i]))[:k]
    assert top_val.tolist() == [vals[i] for i in best]
    assert top_col.tolist() == [cols[i] for i in best]


@pytest.mark.parametrize("values", ["normal", "ties", "equal"])
def test_rank_counts_the_entries_ranked_above(values):
    """``_rank``: the position of each entry in a stable sort by decreasing value (the earlier
    entry first among equal values), over the first n entries only; ``_ranks``: every
    entry's at once, in that order or with the smaller key first among equal values."""
    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 30):
        vals = {"normal": rng.standard_normal(n + 5), "ties": rng.integers(0, 3, n + 5),
                "equal": np.zeros(n + 5)}[values].astype(float)
        stable = sorted(range(n), key=lambda i: (-vals[i], i))
        ranks = [perturbed_cpu._rank(vals, n, i) for i in range(n)]
        assert ranks == [stable.index(i) for i in range(n)]
        # padded with −∞ to a multiple of 8 (at most the array's length): the same ranks
        padded = perturbed_cpu._pad(vals, n)
        assert padded == min(-(-n // 8) * 8, n + 5) and (vals[n:padded] == -np.inf).all()
        assert [perturbed_cpu._rank(vals, padded, i) for i in range(n)] == ranks
        # all at once: equal values by position, or by keys (a shuffle of the positions)
        at_once = np.full(padded, -1, np.int64)
        perturbed_cpu._ranks(vals, None, n, padded, at_once)
        assert at_once[:n].tolist() == ranks
        keys = rng.permutation(padded)
        perturbed_cpu._ranks(vals, keys, n, padded, at_once)
        by_key = sorted(range(n), key=lambda i: (-vals[i], keys[i]))
        assert at_once[:n].tolist() == [by_key.index(i) for i in range(n)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eight_floor_is_reached_by_seven_entries(dtype):
    """``_eight_floor``: the second smallest, ties counted, of the maxima of the slices
    ``c mod 8`` (the last ``n mod 8`` entries joining slice 0), so that at least 7 entries
    reach it."""
    rng = np.random.default_rng(8)
    for n in (8, 9, 15, 16, 67, 200):
        for tops in (rng.standard_normal(n), np.round(rng.standard_normal(n)), np.ones(n),
                     np.arange(n) % 2):
            tops = tops.astype(dtype)
            whole = n // 8 * 8
            slices = [tops[s:whole:8].tolist() + (tops[whole:].tolist() if s == 0 else [])
                      for s in range(8)]
            floor = perturbed_cpu._eight_floor(tops)
            assert floor == sorted(max(v) for v in slices)[1]
            assert (tops >= floor).sum() >= 7


@pytest.mark.parametrize("values", ["normal", "ties"])
@pytest.mark.parametrize("k", [1, 6, 30])
def test_head_best_gives_the_k_best_whatever_the_guess(values, k):
    """A broad row's head (``_head_best``): the k best of 30 entries in torch.topk's order
    (ranked by counting; the buffer's slot k is a sink, its other slots start as NaN), for
    guesses that let every entry, some, exactly k, fewer than k (then every entry
    is ranked: the guess failed) or none through; the return value says whether at least k
    reached the guess."""
    rng = np.random.default_rng(k)
    n = 30
    for _ in range(40):
        vals = (rng.standard_normal(n) if values == "normal"
                else rng.integers(0, 4, n).astype(float))
        order = rng.permutation(4 * n)[:n].astype(np.uint32)
        ranked = np.sort(vals)[::-1]
        best = sorted(range(n), key=lambda i: (-vals[i], order[i]))[:k]
        for guess in (-np.inf, ranked[min(2 * k, n - 1)], ranked[k - 1],
                      np.nextafter(ranked[k - 1], np.inf), np.inf):
            top_val, top_col = np.full(k + 1, np.nan), np.full(k + 1, -1, np.int64)
            held = perturbed_cpu._head_best(vals, order, n, k, guess, top_val, top_col,
                                            np.empty(n + 7), np.empty(n + 7, np.int64),
                                            np.empty(n + 7, np.int64))
            assert held == (int((vals >= guess).sum()) >= k)
            assert top_val[:k].tolist() == [vals[i] for i in best]
            assert top_col[:k].tolist() == [int(order[i]) for i in best]


def test_batched_gaussians_have_the_normal_law():
    """``_normals`` (first steps vectorised, rare draws finished one by one): mean,
    variance and tail frequencies of 400 000 draws within 4 s.e., and independent of the
    batch they share (lag-1 correlation)."""
    n, size = 400_000, 997
    out, bits = np.empty(size), np.empty(size, np.uint64)
    state, z = np.uint64(12345), []
    for _ in range(n // size + 1):
        state = np.uint64(perturbed_cpu._normals(state, out, bits))
        z.append(out.copy())
    z = np.concatenate(z)[:n]
    assert abs(z.mean()) <= Z_MAX / math.sqrt(n)
    assert abs(z.var() - 1.0) <= Z_MAX * math.sqrt(2.0 / n)
    assert abs(np.mean(z[1:] * z[:-1])) <= Z_MAX / math.sqrt(n)
    for level in (0.5, 1.0, 2.0, 3.0, 3.7):  # 3.7: beyond the ziggurat's base strip
        p = math.erfc(level / math.sqrt(2))
        freq = np.mean(np.abs(z) > level)
        assert abs(freq - p) <= Z_MAX * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("kind", ["normal", "peaked", "ties", "flat", "two_levels"])
@pytest.mark.parametrize("epsilon", [1e-3, 0.1, 1.0, 50.0])
@pytest.mark.parametrize("k", [1, 6, 7, 8, 12])
def test_threshold_of_the_chunk_maxima(kind, epsilon, k):
    """u: at least k + 1 maxima reach it (so k + 1 columns) and at most m + 1 unless ties at
    the (k+1)-th largest force more; when at most m + 1 maxima reach the gap rule's value
    (the largest maximum ≤ k-th − 4ε), u is that value. k + 1 <= 7 and above: the two
    floors of the k + 1 largest maxima (:func:`_eight_floor`, then the slices')."""
    rng = np.random.default_rng(11)
    m = k + 8
    for _ in range(50):
        n = int(rng.integers(m + 2, 200))
        tops = rng.standard_normal(n).astype(np.float32)
        if kind == "peaked":
            tops[rng.choice(n, 5, replace=False)] += 8.0
        elif kind == "ties":
            tops = np.round(tops * 2).astype(np.float32) / 2
        elif kind == "flat":
            tops[:] = 1.5
        elif kind == "two_levels":
            tops = np.where(rng.random(n) < 0.5, 0.0, 1.0).astype(np.float32)
        select = np.full(k + 2, np.nan)
        perturbed_cpu._select_largest(tops, k, select, np.empty(n), np.empty(n, np.int64))
        assert select[:k + 1].tolist() == sorted(tops.tolist(), reverse=True)[:k + 1]
        u = perturbed_cpu._threshold(tops, k, m, epsilon, select)
        ranked = np.sort(tops.astype(np.float64))[::-1]
        reach = int((tops >= u).sum())
        assert reach >= k + 1 and u <= ranked[k]
        assert reach <= m + 1 or (tops >= ranked[k]).sum() > m + 1
        below = ranked[ranked <= ranked[k - 1] - perturbed_cpu._GAP * epsilon]
        gap_u = below[0] if below.size else -math.inf
        if (tops >= gap_u).sum() <= m + 1:
            assert u == gap_u


def test_levels_lie_below_the_threshold_on_the_grid():
    """``_level(a)``: the largest grid point at least 2⁻²⁰ below ``a`` (the grid's last beyond
    it, −∞ below it and for NaN), with its exact tail ``Φ̄``, ``1/log(1 − Φ̄)``, the rate
    of Robert's sampler and its inverse; on and between grid points, at their edges and far
    off the grid."""
    gen = np.random.default_rng(2)
    grid = perturbed_cpu._GRID_A
    slack = perturbed_cpu._GRID_SLACK
    points = np.concatenate([gen.uniform(-9.0, 11.0, 4000), grid, np.nextafter(grid, -20),
                             np.nextafter(grid, 20), grid + slack, grid + slack / 2,
                             [40.0, 1e3, -1e3, math.inf, -math.inf, math.nan]])
    for a in points:
        q, inv_log_fail, a_q, rate, inv_rate = perturbed_cpu._level(a)
        below = grid[grid <= a - slack] if a == a else grid[:0]
        if below.size == 0:
            assert (q, a_q) == (1.0, -math.inf)  # every trial proposed: no gap, no rate
            continue
        assert a_q == below[-1]
        assert math.isclose(q, 0.5 * math.erfc(a_q / math.sqrt(2)), rel_tol=1e-12)
        assert math.isclose(inv_log_fail, 1.0 / math.log1p(-q), rel_tol=1e-14)
        assert math.isclose(rate, 0.5 * (a_q + math.sqrt(a_q * a_q + 4.0)), rel_tol=1e-15)
        assert math.isclose(inv_rate, 1.0 / rate, rel_tol=1e-15)


@pytest.mark.parametrize("epsilon", [0.05, 1.0, 7.3])
def test_bucket_levels_step_on_the_grid(epsilon):
    """``_bucket_level(_bucket_base(T, u, ε), c)``, read off the grid: for every score that
    the counting sort puts in bucket ``c`` below ``u`` (at the edges of the buckets, within
    them and in the open-ended last one), the level lies at least 2⁻²⁰ below ``(T − x)/ε``
    and at most one grid point below ``_level`` of ``(T − top of the bucket)/ε``; with its
    tail, rate and inverse rate; every trial a proposal when ``T`` lies more than 8ε below
    ``u``. Thresholds on and next to grid points, far above and below ``u``."""
    gen = np.random.default_rng(5)
    grid, slack = perturbed_cpu._GRID_A, perturbed_cpu._GRID_SLACK
    width, n_buckets = epsilon * perturbed_cpu._BUCKET_WIDTH, perturbed_cpu._BROAD_BUCKETS
    for _ in range(12):
        u = float(gen.normal(0.0, 3.0))
        tops = u - np.arange(n_buckets) * width
        x = np.concatenate([tops, np.nextafter(tops, -np.inf), np.nextafter(tops, np.inf),
                            gen.uniform(u - n_buckets * width, u, 2000),
                            u - gen.uniform(1.0, 40.0, 50) * n_buckets * width])
        x = x[x < u]
        bucket = np.empty(x.size, np.uint8)
        perturbed_cpu._bucket_ids(x, None, x.size, u, 1.0 / width, n_buckets - 1.0, 0,
                                  bucket)
        offsets = np.concatenate([gen.uniform(-9.0, 12.0, 6), grid[::97],
                                  grid[::97] + slack, grid[::97] + 2 * slack,
                                  np.nextafter(grid[::97] + 2 * slack, -np.inf)])
        for offset in offsets:
            t = u + offset * epsilon
            base = perturbed_cpu._bucket_base(t, u, 1.0 / epsilon)
            for c in np.unique(bucket):
                q, inv_log_fail, a_q, rate, inv_rate = perturbed_cpu._bucket_level(base, c)
                if base < 0:
                    assert (q, a_q) == (1.0, -math.inf) and (t - u) / epsilon < -8.0 + 2e-6
                    continue
                assert (a_q <= (t - x[bucket == c]) / epsilon - slack).all()
                top = perturbed_cpu._level((t - (u - c * width)) / epsilon)[2]
                assert a_q >= top - 1.0 / 64.0
                i = np.searchsorted(grid, a_q)
                assert grid[i] == a_q
                assert q == perturbed_cpu._GRID_TAIL[i] and rate == perturbed_cpu._GRID_RATE[i]
                assert inv_log_fail == perturbed_cpu._GRID_INV_LOG_FAIL[i]
                assert inv_rate == perturbed_cpu._GRID_INV_RATE[i]


@pytest.mark.parametrize("level", [-math.inf, -3.0, -0.5, 0.0, 0.4, 1.5, 4.0, 10.0])
def test_truncated_gaussians_have_the_truncated_law(level):
    """``_normal_above(a)`` against N(0, 1) conditioned on Z > a: every draw above ``a``, the
    mean ``φ(a)/Φ̄(a)``, the variance ``1 + a·m − m²`` and the probability of exceeding
    ``a + 1/m`` (halfway up the tail), each within 4 standard errors."""
    if level == -math.inf:
        mean, var = 0.0, 1.0
    else:
        tail = 0.5 * math.erfc(level / math.sqrt(2))
        mean = math.exp(-0.5 * level * level) / math.sqrt(2 * math.pi) / tail
        var = 1.0 + level * mean - mean * mean
    rate = 0.0 if level == -math.inf else 0.5 * (level + math.sqrt(level * level + 4.0))
    inv_rate = 0.0 if rate == 0.0 else 1.0 / rate
    n = 20000
    draws = np.empty(n)
    state = np.uint64(20261124)
    for i in range(n):
        state, draws[i] = perturbed_cpu._normal_above(state, level, rate, inv_rate)
        state = np.uint64(state)
    assert (draws > level).all()
    assert abs(draws.mean() - mean) <= Z_MAX * math.sqrt(var / n)
    fourth = np.mean((draws - mean) ** 4)
    assert abs(draws.var() - var) <= Z_MAX * math.sqrt((fourth - var * var) / n)
    if level > -math.inf:
        cut = level + 1.0 / mean if mean > 0 else level + 1.0
        p = 0.5 * math.erfc(cut / math.sqrt(2)) / tail
        assert abs((draws > cut).mean() - p) <= Z_MAX * math.sqrt(p * (1 - p) / n)


def test_exponentials_have_the_exponential_law():
    """``_exponential`` (256-layer ziggurat): mean, variance and tail frequencies of 400 000
    draws within 4 s.e. (beyond the base strip's edge r = 7.7 too, through a shifted
    count), every draw positive."""
    n = 400_000
    e = _fill_exponentials(np.uint64(7), np.empty(n))
    assert (e >= 0).all()
    assert abs(e.mean() - 1.0) <= Z_MAX / math.sqrt(n)
    assert abs(e.var() - 1.0) <= Z_MAX * math.sqrt(8.0 / n)  # Var((E − 1)²) = 8
    for level in (0.1, 0.5, 1.0, 3.0, 6.0, 7.5):
        p = math.exp(-level)
        assert abs(np.mean(e > level) - p) <= Z_MAX * math.sqrt(p * (1 - p) / n)
    tail = e[e > 6.0] - 6.0  # memoryless: Exp(1) again, across the edge at 7.7
    assert abs(tail.mean() - 1.0) <= Z_MAX / math.sqrt(tail.size)


@njit
def _fill_exponentials(state, out):
    for i in range(out.shape[0]):
        state, out[i] = perturbed_cpu._exponential(state)
    return out


@pytest.mark.parametrize("q", [1e-30, 1e-12, 1e-4, 0.01, 0.3, 0.9])
def test_geometric_gaps_are_floors_of_exponentials(q):
    """``_geometric``: ``⌊E / −log(1 − q)⌋`` from the stream's next exponential, ``inf`` once
    that reaches the limit; 0 for ``q = 1`` and ``inf`` for ``q = 0``; and the law
    ``P(gap >= n) = (1 − q)^n`` for 20 000 gaps (4 s.e.)."""
    level = (q, 1.0 / math.log1p(-q), 0.0, 0.0, 0.0)
    for limit in (1, 10, 1000, 10**6):
        for seed in range(100):
            state = np.uint64(seed * 7919 + 1)
            _, gap = perturbed_cpu._geometric(state, level, limit)
            _, e = perturbed_cpu._exponential(state)
            exact = math.floor(e / -math.log1p(-q))
            assert gap == (math.inf if exact >= limit else exact)
    gaps = _gaps(np.uint64(99), level, 20000)
    for n in (1, 2, 10):
        p = (1.0 - q) ** n
        freq = np.mean(gaps >= n)
        assert abs(freq - p) <= Z_MAX * math.sqrt(p * (1 - p) / gaps.size) + 1e-12
    assert perturbed_cpu._geometric(np.uint64(1), (1.0, -0.0, -math.inf, 0.0, 0.0), 5)[1] == 0
    assert math.isinf(perturbed_cpu._geometric(np.uint64(1), (0.0, -0.0, 10.0, 0.0, 0.0),
                                               5)[1])


@njit
def _gaps(state, level, n):
    out = np.empty(n)
    for i in range(n):
        state, out[i] = perturbed_cpu._geometric(state, level, 1e300)
    return out


def test_exceedance_columns_are_bernoulli_trials():
    gen = torch.Generator().manual_seed(5)
    num_cols, reps = 60, 3000
    levels = torch.tensor([0.0, 1e-3, 0.05, 0.4, 1.0], dtype=torch.float64)
    q = levels.repeat(reps)
    pair, col = _exceedance_columns(q, num_cols, gen)
    assert bool((col >= 0).all()) and bool((col < num_cols).all())
    key = pair * num_cols + col
    assert bool((key[1:] > key[:-1]).all())  # grouped by pair, strictly increasing columns
    hits = torch.zeros(q.numel(), num_cols).index_put_((pair, col), torch.tensor(1.0),
                                                       accumulate=True)
    for i, level in enumerate(levels.tolist()):
        block = hits[i::levels.numel()]  # (reps, num_cols)
        freq = block.mean(0)
        se = math.sqrt(max(level * (1 - level), 1e-12) / reps)
        assert bool(((freq - level).abs() <= Z_MAX * se).all())
        counts = block.sum(1)
        var = num_cols * level * (1 - level)
        assert abs(counts.mean().item() - num_cols * level) <= Z_MAX * math.sqrt(var / reps)
        if var > 0:  # count variance of a binomial: independence across columns
            se_var = var * math.sqrt(2.0 / reps) * 1.5
            assert abs(counts.var().item() - var) <= Z_MAX * se_var


def test_public_operator_uses_the_law_of_the_definition():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 500, generator=gen)
    x[0, :5] += 8.0
    xs = x.expand(3000, 500)
    out = smooth_kth_largest(xs, 6, 0.1, 5, generator=gen)  # default (fast) path
    draws = torch.randn(5, 3000, 500, generator=gen)
    ref = smooth_kth_largest(xs, 6, 0.1, 5, noise=draws)  # explicit draws: the reference
    se = math.sqrt((out.var() + ref.var()).item() / 3000)
    assert abs((out.mean() - ref.mean()).item()) <= Z_MAX * se


@pytest.mark.parametrize("peaked", [False, True])
def test_backward_keeps_no_per_draw_tensor(peaked):
    """Saved for backward: indices of size N·B only (no B·N·C tensor)."""
    gen = torch.Generator().manual_seed(2)
    n, c, b = 64, 2000, 5
    x = torch.randn(n, c, generator=gen)
    target = torch.randint(0, c, (n,), generator=gen)
    if peaked:
        x[torch.arange(n), target] += 8.0
    x.requires_grad_()
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = noised_topk_loss(x, target, k=5, epsilon=0.1 if peaked else 1.0,
                                n_samples=b, generator=gen)
    loss.backward()
    assert max(saved) <= n * c  # nothing bigger than the scores themselves
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize(("scores", "epsilon", "dense"), [
    ("peaked", 0.1, False),
    ("peaked", 3.0, True),  # noise beyond the scores' spread: all drawn at once
    ("plateau", 1.0, True),  # wide spread, but half the classes tied at the top
])
def test_torch_sampler_switches_to_full_draws_only_when_most_classes_compete(
    monkeypatch, scores, epsilon, dense
):
    calls = {"dense": 0, "sparse": 0}
    real_dense, real_sparse = perturbed._dense, perturbed._exceedance_columns

    def count(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(perturbed, "_dense", count("dense", real_dense))
    monkeypatch.setattr(perturbed, "_exceedance_columns", count("sparse", real_sparse))
    gen = torch.Generator().manual_seed(4)
    if scores == "peaked":
        x = torch.randn(64, 1000, generator=gen)
        x[:, :5] += 8.0
    else:
        x = torch.zeros(64, 1000)
        x[:, 500:] = -100.0
    _sample_torch(x, 6, epsilon, 5, generator=gen)
    assert calls == ({"dense": 1, "sparse": 0} if dense else {"dense": 0, "sparse": 1})


@pytest.mark.parametrize("epsilon", [0.0, 0.5])
@pytest.mark.parametrize("imbalanced", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("compiled", [True, False])
def test_fused_hinge_equals_composed_autograd(epsilon, imbalanced, dtype, reduction, compiled,
                                              monkeypatch):
    """noised_hinge (one autograd node, one gradient buffer; margins indexed and the loss
    reduced inside) == smooth_kth_largest + indexing + gather + relu + reduction: per-row
    losses and the gradients of the scores and per-class margins bitwise (the reductions to
    rounding: the compiled one adds in float64); on the compiled CPU passes and
    on the torch formulas of other devices (``compiled=False``, the composed operators then
    adding the draws with torch too; torch's sum of the draws follows their memory layout,
    which differs between the two, so there the values agree to rounding)."""
    if not compiled:
        monkeypatch.setattr(perturbed, "_compiled_forward", lambda *a: False)
        monkeypatch.setattr(perturbed, "_compiled_backward", lambda *a: False)
        monkeypatch.setattr(ops, "compiled_on_cpu", lambda t: False)
    gen = torch.Generator().manual_seed(8)
    n, c, b = 40, 30, 5  # n = 40: 1/n is inexact, as a mean's gradient
    scores = torch.randn(n, c, generator=gen, dtype=dtype)
    target = torch.randint(0, c, (n,), generator=gen)
    target[:5] = scores[:5].topk(4, dim=1).indices[:, -1]  # label = the (K+1)-th largest
    target[5:9] = target[9]  # repeated labels: their margin gradients add up
    noise = torch.randn(b, n, c, generator=gen, dtype=dtype)
    margins = torch.rand(c, generator=gen, dtype=dtype).requires_grad_()
    scale = 60.0 if imbalanced else None
    weights = (torch.rand(n, generator=gen, dtype=dtype) if reduction == "none"
               else torch.tensor(0.7, dtype=dtype))

    x1 = scores.clone().requires_grad_()
    margin1 = margins[target] if imbalanced else 0.3
    top = smooth_kth_largest(x1, 4, epsilon, b, dim=1, noise=noise)
    label = x1.gather(1, target.unsqueeze(1)).squeeze(1)
    composed = torch.relu(margin1 + top - label)
    composed = composed if scale is None else scale * composed
    composed = {"none": composed, "mean": composed.mean(), "sum": composed.sum()}[reduction]
    (composed * weights).sum().backward()

    x2 = scores.clone().requires_grad_()
    margins2 = margins.detach().clone().requires_grad_()
    x2d = x2.detach()
    values, indices = (perturbed.sample_perturbed_kth(x2d, 4, epsilon, b, noise=noise)
                       if epsilon > 0 else
                       (x2d.topk(4, dim=1).values[:, -1:], x2d.topk(4, dim=1).indices[:, -1:]))
    fused = perturbed.noised_hinge(x2, target, margins2 if imbalanced else 0.3, values,
                                   indices, scale, reduction, per_class=imbalanced)
    (fused * weights).sum().backward()

    assert fused.shape == composed.shape
    if compiled and reduction == "none":
        assert torch.equal(fused, composed)
    else:  # a compiled reduction adds in float64 (torch's own order is its own)
        torch.testing.assert_close(fused, composed)
    assert torch.equal(x2.grad, x1.grad)
    if imbalanced:
        assert torch.equal(margins2.grad, margins.grad)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fused_hinge_per_row_margins(reduction):
    """Per-row margin tensors (``per_class=False``) get their own gradient, as composed."""
    gen = torch.Generator().manual_seed(9)
    scores = torch.randn(12, 7, generator=gen)
    target = torch.randint(0, 7, (12,), generator=gen)
    values = torch.randn(12, 3, generator=gen)
    indices = torch.randint(0, 7, (12, 3), generator=gen)
    grads = []
    for fused in (True, False):
        m = torch.rand(12, generator=torch.Generator().manual_seed(1)).requires_grad_()
        if fused:
            loss = perturbed.noised_hinge(scores, target, m, values, indices, 2.0, reduction)
        else:
            loss = perturbed.noised_hinge(scores, target, m, values, indices, 2.0)
            loss = loss.mean() if reduction == "mean" else loss.sum()
        loss.backward()
        grads.append(m.grad)
    assert torch.equal(grads[0], grads[1])
    assert bool((grads[0] == 0).any()) and bool((grads[0] != 0).any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("imbalanced", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_sampled_hinge_equals_sampler_then_fused_hinge(dtype, reduction, imbalanced, layout):
    """cpu_noised_hinge_loss (draws and hinge in one node) == sample_perturbed_kth, then
    noised_hinge, from the same generator state: loss and gradients of the scores and the
    per-class margins bitwise, on contiguous and transposed (non-contiguous) scores."""
    gen = torch.Generator().manual_seed(11)
    n, c, b = 37, 300, 5
    base = torch.randn(c, n, generator=gen, dtype=dtype).t()  # transposed: non-contiguous
    scores = base.contiguous() if layout == "contiguous" else base
    target = torch.randint(0, c, (n,), generator=gen)
    target[1:4] = target[0]  # repeated labels: their margin gradients add up
    margins = torch.rand(c, generator=gen, dtype=dtype)
    scale = 60.0 if imbalanced else None
    weights = (torch.rand(n, generator=gen, dtype=dtype) if reduction == "none"
               else torch.tensor(0.7, dtype=dtype))
    results = []
    for fused in (True, False):
        x = scores.detach().clone() if layout == "contiguous" else scores.detach().t().clone().t()
        x.requires_grad_()
        m = margins.clone().requires_grad_() if imbalanced else 0.4
        draws = torch.Generator().manual_seed(12)
        if fused:
            loss = perturbed.cpu_noised_hinge_loss(x, target, 6, 0.8, b, draws, m, scale,
                                                   reduction)
        else:
            values, indices = sample_perturbed_kth(x.detach(), 6, 0.8, b, draws)
            loss = perturbed.noised_hinge(x, target, m, values, indices, scale, reduction,
                                          per_class=imbalanced)
        (loss * weights).sum().backward()
        results.append((loss, x.grad, m.grad if imbalanced else None))
    (loss1, grad1, margin1), (loss2, grad2, margin2) = results
    assert torch.equal(loss1, loss2)
    assert torch.equal(grad1, grad2)
    assert bool((grad1 != 0).any())
    if imbalanced:
        assert torch.equal(margin1, margin2)


@pytest.mark.parametrize("changed", ["target", "returned hinge"])
def test_sampled_hinge_in_place_changes_raise(changed):
    """The sampled hinge keeps its drawn columns and hinge on ``ctx`` but saves the
    caller's target, and the hinge when it is the returned loss (reduction 'none', no
    scale): changing either in place before the backward raises, as in torch's losses."""
    x = torch.randn(8, 30, requires_grad=True)
    target = torch.randint(0, 30, (8,))
    loss = perturbed.cpu_noised_hinge_loss(x, target, 4, 0.5, 3, None, 1.0, None, "none")
    if changed == "target":
        target.zero_()
    else:
        loss.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.sum().backward()


def test_kernel_seed_is_the_randint_draw():
    """The kernel's seed is the number ``torch.randint(−2⁶³, 2⁶³ − 1, ())`` draws from the
    same generator state (explicit or default), which advances alike; from another thread
    too (each thread draws into its own tensor)."""
    def randint(gen):
        return int(torch.randint(-(2**63), 2**63 - 1, (), generator=gen, dtype=torch.int64))

    gen = torch.Generator().manual_seed(7)
    got = [perturbed._kernel_seed(gen) for _ in range(3)]
    gen.manual_seed(7)
    assert got == [randint(gen) for _ in range(3)]
    assert len(set(got)) == 3
    torch.manual_seed(8)
    got = perturbed._kernel_seed(None)
    torch.manual_seed(8)
    assert got == randint(None)
    gen.manual_seed(9)
    other: list[int] = []
    worker = threading.Thread(target=lambda: other.append(perturbed._kernel_seed(gen)))
    worker.start()
    worker.join()
    gen.manual_seed(9)
    assert other == [randint(gen)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(37, 300), (4, 3, 300)])
def test_sampled_operator_equals_sampler_then_selected_sum(dtype, shape):
    """smooth_kth_largest on CPU float rows (cpu_smooth_kth: draws and mean in one node) ==
    sample_perturbed_kth, then the selected sum, from the same generator state: values and
    gradients bitwise, also under ``.mean()`` (a stride-0 gradient) and on a 3-d input."""
    gen = torch.Generator().manual_seed(13)
    scores = torch.randn(*shape, generator=gen, dtype=dtype)
    results = []
    for fused in (True, False):
        x = scores.clone().requires_grad_()
        draws = torch.Generator().manual_seed(14)
        if fused:
            out = smooth_kth_largest(x, 6, 0.8, 5, generator=draws)
        else:
            x2d = x.reshape(-1, shape[-1])
            values, indices = sample_perturbed_kth(x2d.detach(), 6, 0.8, 5, draws)
            out = ops._SelectedSum.apply(x2d, values, indices, 1.0 / 5).reshape(shape[:-1])
        out.mean().backward()
        results.append((out, x.grad))
    (out1, grad1), (out2, grad2) = results
    assert out1.shape == shape[:-1] and out1.dtype == dtype
    assert torch.equal(out1, out2)
    assert torch.equal(grad1, grad2)
    assert bool((grad1 != 0).any())


def test_operator_takes_the_sampled_node_on_cpu(monkeypatch):
    """On CPU float tensors without given noise, smooth_kth_largest runs cpu_smooth_kth
    (one node); with given noise or ε = 0, the selected sum."""
    calls = []
    real = perturbed._SampledKth.apply
    monkeypatch.setattr(perturbed._SampledKth, "apply", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(8, 20, requires_grad=True)
    smooth_kth_largest(x, 3, 0.5, 4).sum().backward()
    assert calls == [1]
    smooth_kth_largest(x, 3, 0.5, 4, noise=torch.randn(4, 8, 20)).sum().backward()
    smooth_kth_largest(x, 3, 0.0, 4).sum().backward()
    smooth_kth_largest(x.detach().half(), 3, 0.5, 4)
    assert calls == [1]


@pytest.mark.parametrize("imbalanced", [False, True])
def test_noised_losses_take_the_sampled_hinge_on_cpu(imbalanced, monkeypatch):
    """On CPU float tensors without given noise, the noised losses run
    cpu_noised_hinge_loss; with given noise, the sampler and noised_hinge."""
    calls = []
    real = perturbed._SampledNoisedHinge.apply
    monkeypatch.setattr(perturbed._SampledNoisedHinge, "apply",
                        lambda *a: calls.append(1) or real(*a))
    x = torch.randn(8, 20, requires_grad=True)
    target = torch.randint(0, 20, (8,))

    def loss(**kwargs):
        if imbalanced:
            return STF.imbalanced_noised_topk_loss(x, target, torch.rand(20), k=3, **kwargs)
        return noised_topk_loss(x, target, k=3, **kwargs)

    loss().backward()
    assert calls == [1]
    loss(noise=torch.randn(5, 8, 20)).backward()
    assert calls == [1]


@pytest.mark.parametrize("path", ["sampled hinge", "given noise", "operator"])
def test_create_graph_gives_the_plain_gradient_once(path):
    """The CPU nodes' backward under ``create_graph=True`` (through once_differentiable)
    gives the plain backward's gradient, bit for bit, and that gradient cannot be
    differentiated again."""
    x = torch.randn(16, 200, generator=torch.Generator().manual_seed(2))
    target = torch.randint(0, 200, (16,), generator=torch.Generator().manual_seed(3))
    noise = torch.randn(5, 16, 200, generator=torch.Generator().manual_seed(4))

    def grad(create_graph):
        leaf = x.clone().requires_grad_()
        draws = torch.Generator().manual_seed(5)
        if path == "operator":
            out = smooth_kth_largest(leaf, 6, 0.8, 5, generator=draws).sum()
        else:
            out = noised_topk_loss(leaf, target, k=5, epsilon=0.8, generator=draws,
                                   noise=noise if path == "given noise" else None)
        return leaf, torch.autograd.grad(out, leaf, create_graph=create_graph)[0]

    _, plain = grad(False)
    leaf, twice = grad(True)
    assert torch.equal(plain, twice) and bool((plain != 0).any())
    with pytest.raises(RuntimeError):
        torch.autograd.grad(twice.sum(), leaf)


@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_leaves_torch_threads_alone(threads):
    """numba's threading must not reset torch's OpenMP thread count."""
    torch.set_num_threads(threads)
    x = torch.randn(64, 2000, requires_grad=True)
    noised_topk_loss(x, torch.randint(0, 2000, (64,)), k=5).backward()
    assert torch.get_num_threads() == threads
