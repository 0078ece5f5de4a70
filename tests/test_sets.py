"""Tests of smoothtopk.sets: top-K, average-K and split-conformal set predictors.

Reference implementations here are written out with Python loops in float64. Statistical
checks state their tolerance: means within 4 standard errors, a KS test at level 1e-3.
"""

from __future__ import annotations

import math

import pytest
import torch

from smoothtopk.sets import (
    AverageKSets,
    ConformalSets,
    TopKSets,
    conformal_quantile,
    fit_temperature,
    min_calibration_size,
)

# --------------------------------------------------------------------------- fixtures


def held_out_scores(n: int, c: int, seed: int, signal: float = 1.5,
                    class_probs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of an imperfect classifier: Gaussian noise plus ``signal`` on the true class."""
    g = torch.Generator().manual_seed(seed)
    if class_probs is None:
        labels = torch.randint(0, c, (n,), generator=g)
    else:
        labels = torch.multinomial(class_probs, n, replacement=True, generator=g)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * 1.5
    logits[torch.arange(n), labels] += signal
    return logits.float(), labels


def ref_softmax(row: list[float]) -> list[float]:
    top = max(row)
    e = [math.exp(v - top) for v in row]
    total = sum(e)
    return [v / total for v in e]


def ref_score(row: list[float], y: int, kind: str, u: float = 1.0) -> float:
    """Conformity score of label ``y`` for one row of logits, written out."""
    p = ref_softmax(row)
    if kind == "lac":
        return 1.0 - p[y]
    order = sorted(range(len(p)), key=lambda j: -p[j])  # stable: ties by class index
    before = 0.0
    for j in order:
        if j == y:
            return before + u * p[j]
        before += p[j]
    raise AssertionError("unreachable")


def ref_threshold(values: list[float], alpha: float) -> float:
    n = len(values)
    rank = math.ceil((n + 1) * (1 - alpha))  # 1-based rank of the split-conformal quantile
    return sorted(values)[rank - 1]


# --------------------------------------------------------------------------- min size


@pytest.mark.parametrize("alpha", [0.5, 0.3, 0.2, 0.1, 0.05, 0.01, 0.37, 0.9, 0.999, 1e-3])
def test_min_calibration_size_matches_rank_formula_and_closed_form(alpha):
    # smallest n with ceil((n+1)(1-alpha)) <= n, by brute force
    brute = next(n for n in range(1, 10_000) if math.ceil((n + 1) * (1 - alpha)) <= n)
    assert min_calibration_size(alpha) == brute
    assert brute == max(1, math.ceil(1 / alpha) - 1)


def test_too_small_calibration_set_names_the_minimum():
    alpha = 0.1  # needs n >= ceil(10) - 1 = 9
    logits, labels = held_out_scores(9, 4, seed=0)
    ConformalSets(alpha).fit(logits, labels)  # 9 is enough
    with pytest.raises(ValueError, match=r"at least .*= 9") as err:
        ConformalSets(alpha).fit(logits[:8], labels[:8])
    assert "8 samples" in str(err.value)
    with pytest.raises(ValueError, match="at least"):
        conformal_quantile(torch.rand(18, dtype=torch.float64), 0.05)  # needs 19


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_alpha_outside_open_unit_interval(alpha):
    with pytest.raises(ValueError, match=r"alpha must be in \(0\.0, 1\.0\)"):
        ConformalSets(alpha)


def test_alpha_wrong_type():
    with pytest.raises(TypeError, match="alpha"):
        ConformalSets("0.1")


@pytest.mark.parametrize("cls", [TopKSets, AverageKSets])
def test_k_outside_one_to_c(cls):
    logits, labels = held_out_scores(20, 5, seed=1)
    with pytest.raises(ValueError, match=r"k must be .*1"):
        cls(0)
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        cls(6).fit(logits, labels)
    cls(5).fit(logits, labels)  # C itself is allowed


def test_topk_k_must_be_int():
    with pytest.raises(TypeError, match="k must be an int"):
        TopKSets(2.5)


@pytest.mark.parametrize("predictor", [TopKSets(1), AverageKSets(2), ConformalSets(0.2)])
def test_scores_labels_mismatch_and_types(predictor):
    logits, labels = held_out_scores(30, 5, seed=2)
    with pytest.raises(ValueError, match=r"labels must have shape \(30,\)"):
        predictor.fit(logits, labels[:29])
    with pytest.raises(TypeError, match=r"labels must have dtype torch\.int64"):
        predictor.fit(logits, labels.int())
    with pytest.raises(TypeError, match="scores must be a floating-point tensor"):
        predictor.fit(logits.long(), labels)
    with pytest.raises(ValueError, match="scores must be 2-D"):
        predictor.fit(logits[0], labels)
    with pytest.raises(ValueError, match=r"labels values must be in \[0, 5\)"):
        predictor.fit(logits, torch.full_like(labels, 5))


@pytest.mark.parametrize("predictor", [TopKSets(1), AverageKSets(2), ConformalSets(0.2)])
def test_predict_before_fit_and_wrong_width(predictor):
    logits, labels = held_out_scores(30, 5, seed=3)
    with pytest.raises(RuntimeError, match="not fitted"):
        predictor.predict(logits)
    predictor.fit(logits, labels)
    with pytest.raises(ValueError, match="scores must have 5 class columns"):
        predictor.predict(logits[:, :4])


def test_conformal_options_are_checked():
    with pytest.raises(ValueError, match="score must be one of"):
        ConformalSets(0.1, score="raps")
    with pytest.raises(ValueError, match="rare_class_fallback must be one of"):
        ConformalSets(0.1, class_conditional=True, rare_class_fallback="drop")
    with pytest.raises(ValueError, match="randomized=True applies to score='aps'"):
        ConformalSets(0.1, score="lac", randomized=True)
    with pytest.raises(TypeError, match="class_conditional must be a bool"):
        ConformalSets(0.1, class_conditional=1)
    with pytest.raises(ValueError, match="temperature must be in"):
        AverageKSets(2, temperature=0.0)
    logits, labels = held_out_scores(30, 5, seed=4)
    aps = ConformalSets(0.2, score="aps", randomized=True)
    with pytest.raises(ValueError, match=r"noise must have shape \(30,\)"):
        aps.fit(logits, labels, noise=torch.rand(29))


# --------------------------------------------------------------------------- top-K


def test_topk_sets_are_the_k_largest_scores():
    logits, labels = held_out_scores(50, 8, seed=5)
    for k in (1, 3, 8):
        sets = TopKSets(k).fit(logits, labels).predict(logits)
        assert sets.dtype == torch.bool and sets.shape == (50, 8)
        for i, row in enumerate(logits.tolist()):
            expected = sorted(range(8), key=lambda j, row=row: -row[j])[:k]
            assert sorted(torch.nonzero(sets[i]).flatten().tolist()) == sorted(expected)


# --------------------------------------------------------------------------- temperature


def test_fit_temperature_matches_grid_search():
    logits, labels = held_out_scores(400, 10, seed=6)
    logits = logits * 3.0  # overconfident: T > 1 expected
    t = fit_temperature(logits, labels)
    grid = torch.logspace(-1, 1.5, 2501, dtype=torch.float64)  # step 0.001 in log10

    def nll(temps: torch.Tensor) -> torch.Tensor:  # mean NLL for each temperature
        scaled = logits.double()[None] / temps[:, None, None]
        true = scaled[:, torch.arange(len(labels)), labels]
        return (scaled.logsumexp(2) - true).mean(1)

    values = nll(grid)
    best = int(values.argmin())
    assert abs(math.log10(t) - math.log10(float(grid[best]))) <= 1e-3
    assert float(nll(torch.tensor([t], dtype=torch.float64))[0]) <= float(values[best]) + 1e-12
    assert t > 1.0


def test_fit_temperature_clamps_on_separable_data():
    labels = torch.arange(6) % 3
    logits = torch.nn.functional.one_hot(labels, 3).float()  # every sample correct
    assert fit_temperature(logits, labels) == pytest.approx(1e-2)


# --------------------------------------------------------------------------- average-K


@pytest.mark.parametrize("k", [1, 2, 4])
def test_average_k_threshold_matches_sorted_probabilities(k):
    logits, labels = held_out_scores(300, 7, seed=7)
    pred = AverageKSets(k).fit(logits, labels)
    assert pred.temperature_ == pytest.approx(fit_temperature(logits, labels), rel=1e-12)
    probs = [v for row in logits.double().tolist()
             for v in ref_softmax([x / pred.temperature_ for x in row])]
    expected = sorted(probs, reverse=True)[k * 300 - 1]
    assert float(pred.threshold_) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    sets = pred.predict(logits)
    assert int(sets.sum()) == k * 300  # continuous scores: exactly K on average
    assert pred.tie_probability_ == 1.0


def test_average_k_maximises_expected_coverage_at_equal_total_size():
    # oracle probabilities: the average-K sets hold the K*N largest p_ij, the best any
    # assignment of K*N memberships can do; top-K is one such assignment.
    g = torch.Generator().manual_seed(8)
    probs = torch.distributions.Dirichlet(torch.full((6,), 0.5)).sample((200,))
    probs = probs.clamp_min(1e-12)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
    logits = probs.log()
    for k in (1, 2, 3):
        avg = AverageKSets(k, temperature=1.0).fit(logits, labels).predict(logits)
        top = TopKSets(k).fit(logits, labels).predict(logits)
        mass_avg = float((probs * avg).sum())
        mass_top = float((probs * top).sum())
        best = sum(sorted(probs.flatten().tolist(), reverse=True)[: k * 200])
        assert int(avg.sum()) == int(top.sum()) == k * 200
        assert mass_avg == pytest.approx(best, rel=1e-6)
        assert mass_avg >= mass_top - 1e-9


def test_average_k_breaks_ties_to_meet_k_in_expectation():
    g = torch.Generator().manual_seed(9)
    logits = torch.randint(0, 3, (200, 5), generator=g).float()  # many exact ties
    labels = torch.randint(0, 5, (200,), generator=g)
    k = 2.3
    pred = AverageKSets(k, temperature=1.0).fit(logits, labels)
    assert 0.0 < pred.tie_probability_ < 1.0
    with_ties = pred.predict(logits, noise=torch.zeros(200)).sum().item()
    without = pred.predict(logits, noise=torch.ones(200)).sum().item()
    expected = without + pred.tie_probability_ * (with_ties - without)
    assert expected / 200 == pytest.approx(k, abs=1e-9)
    means = torch.tensor([
        pred.predict(logits, generator=g).sum(1).double().mean().item() for _ in range(200)
    ])
    se = means.std().item() / math.sqrt(200)
    assert abs(means.mean().item() - k) <= 4 * se + 1e-12


# --------------------------------------------------------------------------- conformal parity


@pytest.mark.parametrize("kind", ["lac", "aps"])
@pytest.mark.parametrize("alpha", [0.1, 0.25])
def test_conformal_threshold_and_sets_match_loops(kind, alpha):
    cal_logits, cal_labels = held_out_scores(120, 6, seed=10)
    test_logits, _ = held_out_scores(40, 6, seed=11)
    pred = ConformalSets(alpha, score=kind).fit(cal_logits, cal_labels)
    rows = cal_logits.double().tolist()
    cal_scores = [ref_score(r, y, kind) for r, y in zip(rows, cal_labels.tolist(), strict=True)]
    q = ref_threshold(cal_scores, alpha)
    assert float(pred.threshold_) == pytest.approx(q, abs=1e-12)
    sets = pred.predict(test_logits)
    checked = 0
    for i, row in enumerate(test_logits.double().tolist()):
        for j in range(6):
            s = ref_score(row, j, kind)
            if abs(s - q) > 1e-9:
                assert bool(sets[i, j]) == (s <= q)
                checked += 1
    assert checked >= 6 * 40 - 2


def test_randomized_aps_uses_the_given_noise():
    cal_logits, cal_labels = held_out_scores(80, 5, seed=12)
    u = torch.rand(80, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pred = ConformalSets(0.2, score="aps", randomized=True).fit(cal_logits, cal_labels, noise=u)
    rows = cal_logits.double().tolist()
    scores = [ref_score(r, y, "aps", float(ui))
              for r, y, ui in zip(rows, cal_labels.tolist(), u.tolist(), strict=True)]
    assert float(pred.threshold_) == pytest.approx(ref_threshold(scores, 0.2), abs=1e-12)
    # u = 1 everywhere gives the deterministic score back
    det = ConformalSets(0.2, score="aps").fit(cal_logits, cal_labels)
    again = ConformalSets(0.2, score="aps", randomized=True).fit(
        cal_logits, cal_labels, noise=torch.ones(80))
    assert float(again.threshold_) == pytest.approx(float(det.threshold_), abs=1e-12)


@pytest.mark.parametrize("fallback", ["marginal", "include"])
def test_class_conditional_thresholds_match_loops(fallback):
    alpha = 0.2  # minimum 4 calibration samples per class
    sizes = [60, 25, 9, 4, 3, 1]  # classes 4 and 5 are too rare
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    logits, _ = held_out_scores(len(labels), 6, seed=13)
    logits[torch.arange(len(labels)), labels] += 1.5
    pred = ConformalSets(alpha, class_conditional=True, rare_class_fallback=fallback)
    pred.fit(logits, labels)
    rows = logits.double().tolist()
    scores = [ref_score(r, y, "lac") for r, y in zip(rows, labels.tolist(), strict=True)]
    marginal = ref_threshold(scores, alpha)
    for c, n in enumerate(sizes):
        mine = [s for s, y in zip(scores, labels.tolist(), strict=True) if y == c]
        if n >= 4:
            expected = ref_threshold(mine, alpha)
        else:
            expected = marginal if fallback == "marginal" else math.inf
        assert float(pred.thresholds_[c]) == pytest.approx(expected, abs=1e-12)
    assert pred.rare_classes_.tolist() == [False, False, False, False, True, True]
    if fallback == "include":
        assert bool(pred.predict(logits)[:, 4:].all())


def test_class_conditional_include_fallback_works_below_marginal_minimum():
    logits, labels = held_out_scores(5, 3, seed=14)
    pred = ConformalSets(0.1, class_conditional=True, rare_class_fallback="include")
    assert bool(pred.fit(logits, labels).predict(logits).all())
    with pytest.raises(ValueError, match="at least"):
        ConformalSets(0.1, class_conditional=True).fit(logits, labels)


# --------------------------------------------------------------------------- mapie parity


class _FixedProbabilities:
    """A prefit scikit-learn classifier whose ``predict_proba(X)`` is ``X`` itself."""

    def __init__(self, num_classes: int) -> None:
        import numpy as np

        self.classes_ = np.arange(num_classes)
        self.n_features_in_ = num_classes

    def fit(self, x, y):  # pragma: no cover - prefit, never called
        return self

    def predict_proba(self, x):
        return x

    def predict(self, x):
        return x.argmax(1)

    def get_params(self, deep: bool = True) -> dict:
        return {"num_classes": len(self.classes_)}

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags, Tags, TargetTags

        return Tags(estimator_type="classifier", classifier_tags=ClassifierTags(),
                    target_tags=TargetTags(required=True))


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_lac_and_aps_match_mapie(alpha):
    mapie_cls = pytest.importorskip("mapie.classification")
    c = 6
    cal_logits, cal_labels = held_out_scores(300, c, seed=15)
    test_logits, _ = held_out_scores(200, c, seed=16)
    cal_p = torch.softmax(cal_logits.double(), 1).numpy()
    test_p = torch.softmax(test_logits.double(), 1).numpy()

    lac = mapie_cls.SplitConformalClassifier(
        _FixedProbabilities(c), confidence_level=1 - alpha, conformity_score="lac", prefit=True)
    lac.conformalize(cal_p, cal_labels.numpy())
    _, their_sets = lac.predict_set(test_p)
    mine = ConformalSets(alpha, "lac").fit(cal_logits, cal_labels)
    their_q = float(lac._mapie_classifier.conformity_score_function_.quantiles_[0])
    assert float(mine.threshold_) == pytest.approx(their_q, abs=1e-12)
    assert (mine.predict(test_logits).numpy() == their_sets[:, :, 0]).all()

    # mapie's APS calibration score is randomised: cum. mass up to and including y minus
    # u * p_y, with u drawn from RandomState(seed); ours is the same with our u = 1 - u.
    import numpy as np

    seed = 3
    aps = mapie_cls.SplitConformalClassifier(
        _FixedProbabilities(c), confidence_level=1 - alpha, conformity_score="aps",
        prefit=True, random_state=seed)
    aps.conformalize(cal_p, cal_labels.numpy())
    u = torch.from_numpy(np.random.RandomState(seed).uniform(size=300))
    mine = ConformalSets(alpha, "aps", randomized=True).fit(cal_logits, cal_labels, noise=1 - u)
    # mapie's include_last_label=False keeps the classes whose cumulated mass is <= q (our
    # rule with u = 1) but never returns an empty set (it keeps the top class then).
    _, their_sets = aps.predict_set(test_p, conformity_score_params={"include_last_label": False})
    their_q = float(aps._mapie_classifier.conformity_score_function_.quantiles_[0])
    assert float(mine.threshold_) == pytest.approx(their_q, abs=1e-12)
    ours = mine.predict(test_logits, noise=torch.ones(200))
    top1 = torch.nn.functional.one_hot(test_logits.argmax(1), c).bool()
    assert ((ours | top1).numpy() == their_sets[:, :, 0]).all()


# --------------------------------------------------------------------------- coverage laws

N_SPLITS = 200


def _coverage_counts(kind: str, randomized: bool, n_cal: int, alpha: float) -> tuple:
    logits, labels = held_out_scores(900, 10, seed=17)
    g = torch.Generator().manual_seed(18)
    n_test = len(labels) - n_cal
    counts = []
    for _ in range(N_SPLITS):
        perm = torch.randperm(len(labels), generator=g)
        cal, test = perm[:n_cal], perm[n_cal:]
        pred = ConformalSets(alpha, kind, randomized=randomized)
        pred.fit(logits[cal], labels[cal], generator=g)
        sets = pred.predict(logits[test], generator=g)
        counts.append(int(sets[torch.arange(n_test), labels[test]].sum()))
    return torch.tensor(counts, dtype=torch.float64), n_test


@pytest.mark.parametrize(("kind", "randomized"), [("lac", False), ("aps", False), ("aps", True)])
def test_conformal_coverage_follows_beta_binomial(kind, randomized):
    """Over random splits, #covered test points ~ BetaBinomial(n_test, n+1-l, l).

    Given the calibration set the coverage is Beta(n + 1 - l, l), l = floor((n+1) alpha),
    for continuous scores; the count of covered test points of one split is then exactly
    Beta-Binomial (it only depends on the random arrangement of calibration and test
    points among the sorted scores), and the splits are independent. Tolerances: mean
    within 4 standard errors, variance ratio within 4 normal-theory standard errors
    (sqrt(2/(S-1))), Kolmogorov–Smirnov p-value > 1e-3.
    """
    stats = pytest.importorskip("scipy.stats")
    alpha, n_cal = 0.1, 250
    counts, n_test = _coverage_counts(kind, randomized, n_cal, alpha)
    ell = math.floor((n_cal + 1) * alpha)
    law = stats.betabinom(n_test, n_cal + 1 - ell, ell)
    coverage = counts / n_test
    assert coverage.mean() >= 1 - alpha - 0.01
    assert abs(counts.mean().item() - law.mean()) <= 4 * math.sqrt(law.var() / N_SPLITS)
    ratio = counts.var().item() / law.var()
    assert abs(ratio - 1) <= 4 * math.sqrt(2 / (N_SPLITS - 1))
    assert stats.kstest(counts.numpy(), law.cdf).pvalue > 1e-3


def test_class_conditional_coverage_per_class():
    """Stratified splits: per class, #covered ~ BetaBinomial with that class's n_c."""
    stats = pytest.importorskip("scipy.stats")
    alpha = 0.1
    probs = torch.tensor([0.45, 0.3, 0.15, 0.07, 0.03])
    logits, labels = held_out_scores(2000, 5, seed=19, class_probs=probs)
    g = torch.Generator().manual_seed(20)
    by_class = [torch.nonzero(labels == c).flatten() for c in range(5)]
    n_cal = [len(idx) // 2 for idx in by_class]
    covered = torch.zeros(N_SPLITS, 5, dtype=torch.float64)
    for s in range(N_SPLITS):
        parts = [idx[torch.randperm(len(idx), generator=g)] for idx in by_class]
        cal = torch.cat([p[:n] for p, n in zip(parts, n_cal, strict=True)])
        test = torch.cat([p[n:] for p, n in zip(parts, n_cal, strict=True)])
        pred = ConformalSets(alpha, class_conditional=True).fit(logits[cal], labels[cal])
        hit = pred.predict(logits[test])[torch.arange(len(test)), labels[test]]
        covered[s] = torch.zeros(5, dtype=torch.float64).index_add_(
            0, labels[test], hit.double())
    for c in range(5):
        n, n_test = n_cal[c], len(by_class[c]) - n_cal[c]
        ell = math.floor((n + 1) * alpha)
        law = stats.betabinom(n_test, n + 1 - ell, ell)
        assert covered[:, c].mean() / n_test >= 1 - alpha - 0.01
        assert abs(covered[:, c].mean().item() - law.mean()) <= 4 * math.sqrt(
            law.var() / N_SPLITS)


# --------------------------------------------------------------------------- devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_predictors_on_cuda_match_cpu():
    cal_logits, cal_labels = held_out_scores(300, 6, seed=21)
    test_logits, _ = held_out_scores(100, 6, seed=22)
    dev = torch.device("cuda")
    for make in (lambda: TopKSets(2), lambda: AverageKSets(2.5),
                 lambda: ConformalSets(0.1, "aps"),
                 lambda: ConformalSets(0.1, "lac", class_conditional=True)):
        cpu = make().fit(cal_logits, cal_labels).predict(test_logits)
        gpu = make().fit(cal_logits.to(dev), cal_labels.to(dev))
        out = gpu.predict(test_logits.to(dev))
        assert out.device.type == "cuda"
        # float64 on both devices; tolerate a boundary flip from different reduction orders
        assert (out.cpu() == cpu).float().mean() >= 0.99
