"""Set-valued prediction on top of any classifier's scores: top-K, average-K, conformal.

Every predictor shares one interface:

* ``fit(scores, labels)`` on a calibration split (``scores`` float ``(N, C)`` logits,
  ``labels`` int64 ``(N,)``) returns ``self``;
* ``predict(scores)`` returns a boolean membership matrix ``(N, C)``: ``sets[i, j]`` is
  true when class ``j`` belongs to the set predicted for sample ``i``. Set sizes are
  ``predict(scores).sum(1)`` (or :func:`smoothtopk.set_metrics.set_sizes`).

Predictors
----------
:class:`TopKSets`
    the fixed-size baseline ``Γ(x) = {K largest scores}``.
:class:`AverageKSets`
    one global threshold on *calibrated* class probabilities, chosen on the calibration
    split so that the average set size there is exactly ``K`` (in expectation, through a
    randomised inclusion at the threshold). Thresholding ``P(y = j | x)`` is the optimal
    average-K classifier (Denis & Hebiri, 2017; Lorieul et al., 2021), hence the
    temperature scaling (Guo et al., 2017) fitted on the same split before thresholding.
:class:`ConformalSets`
    split conformal prediction (Vovk et al., 2005; Lei et al., 2018) with the LAC score
    ``1 - p_y`` (Sadinle et al., 2019) or the adaptive APS score (Romano et al., 2020),
    marginal ``P(Y ∈ Γ(X)) >= 1 - α``, or class-conditional
    ``P(Y ∈ Γ(X) | Y = y) >= 1 - α`` for every class with enough calibration samples.

Randomised steps take an optional ``torch.Generator`` (or explicit uniform ``noise``).
Fitting may synchronise with the device (it sorts and takes quantiles); ``predict`` does not.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import check_generator, check_int, check_k, check_real, check_scores, check_target

__all__ = [
    "AverageKSets",
    "ConformalSets",
    "TopKSets",
    "conformal_quantile",
    "fit_temperature",
    "min_calibration_size",
]

CONFORMAL_SCORES = ("lac", "aps")
RARE_CLASS_FALLBACKS = ("marginal", "include")


def _check_scores_labels(scores: Tensor, labels: Tensor) -> tuple[int, int]:
    check_scores(scores, "scores")
    n, c = scores.shape
    check_target(labels, n, c, "labels")
    return n, c


def _check_predict_scores(scores: Tensor, num_classes: int | None, owner: str) -> None:
    if num_classes is None:
        raise RuntimeError(f"{owner} is not fitted: call fit(scores, labels) first")
    check_scores(scores, "scores")
    if scores.shape[1] != num_classes:
        raise ValueError(
            f"scores must have {num_classes} class columns (as at fit), got {scores.shape[1]}"
        )


def _check_alpha(alpha: object) -> float:
    return check_real("alpha", alpha, 0.0, 1.0, low_inclusive=False, high_inclusive=False)


def _uniform(n: int, like: Tensor, generator: torch.Generator | None,
             noise: Tensor | None) -> Tensor:
    """``n`` uniform draws on ``like``'s device (float64), or the given ``noise``."""
    if noise is not None:
        if not isinstance(noise, Tensor):
            raise TypeError(f"noise must be a torch.Tensor, got {type(noise).__name__}")
        if noise.shape != (n,):
            raise ValueError(f"noise must have shape ({n},), got {tuple(noise.shape)}")
        return noise.to(like.device, torch.float64)
    check_generator(generator, like.device)
    return torch.rand(n, device=like.device, dtype=torch.float64, generator=generator)


def min_calibration_size(alpha: float) -> int:
    """Smallest calibration size ``n`` for which split conformal at level ``alpha`` is finite.

    The threshold is the ``m``-th smallest of ``n`` calibration scores with
    ``m = ceil((n + 1)(1 - alpha))``. It exists iff ``m <= n``, i.e.
    ``(n + 1)(1 - alpha) <= n`` ⇔ ``n >= 1/alpha - 1`` ⇔ ``n >= ceil(1/alpha) - 1``
    (and ``n >= 1``). Below that size the only valid set is the set of all classes.
    The value is checked against the floating-point rank formula itself, so the
    bound and :func:`conformal_quantile` always agree.
    """
    alpha = _check_alpha(alpha)
    n = max(1, math.ceil(1.0 / alpha) - 1)
    while math.ceil((n + 1) * (1.0 - alpha)) > n:  # float rounding at the boundary
        n += 1
    while n > 1 and math.ceil(n * (1.0 - alpha)) <= n - 1:
        n -= 1
    return n


def conformal_quantile(values: Tensor, alpha: float) -> Tensor:
    """Split-conformal threshold: the ``ceil((n + 1)(1 - alpha))``-th smallest of ``values``.

    Equivalently the empirical quantile of level ``ceil((n + 1)(1 - alpha)) / n`` (lower
    interpolation). For a test score exchangeable with the ``n`` calibration scores,
    ``P(score <= threshold) >= 1 - alpha``.

    Args:
        values: 1-D floating tensor of the ``n`` calibration conformity scores.
        alpha: miscoverage level in ``(0, 1)``.

    Returns:
        0-d tensor on ``values``' device.

    Raises:
        ValueError: ``n < min_calibration_size(alpha)``.
    """
    alpha = _check_alpha(alpha)
    if not isinstance(values, Tensor) or values.dim() != 1:
        raise ValueError("values must be a 1-D tensor of calibration scores")
    n = values.shape[0]
    n_min = min_calibration_size(alpha)
    if n < n_min:
        raise ValueError(
            f"calibration set too small for alpha={alpha}: got {n} samples, need at least "
            f"n >= ceil(1/alpha) - 1 = {n_min}"
        )
    rank = math.ceil((n + 1) * (1.0 - alpha))
    return torch.kthvalue(values, rank).values


def fit_temperature(scores: Tensor, labels: Tensor, max_iter: int = 100) -> float:
    """Temperature ``T`` minimising the NLL of ``softmax(scores / T)`` on ``(scores, labels)``.

    Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks").
    With ``β = 1/T`` the mean NLL ``L(β) = mean_i[logsumexp(β s_i) - β s_{i,y_i}]`` is convex,
    ``L'(β) = mean_i[E_{p_i}[s_i] - s_{i,y_i}]`` and ``L''(β) = mean_i[Var_{p_i}(s_i)]`` with
    ``p_i = softmax(β s_i)``, so the minimiser is the root of ``L'``, found in float64 by
    Newton's method safeguarded by bisection on ``β ∈ [1e-2, 1e2]`` (``T`` is clamped to
    ``[1e-2, 1e2]``: a separable calibration set drives the optimum towards ``T -> 0``).
    """
    _check_scores_labels(scores, labels)
    check_int("max_iter", max_iter, 1)
    logits = scores.detach().double()
    true = logits.gather(1, labels[:, None]).squeeze(1)

    def derivatives(beta: float) -> tuple[float, float]:
        p = torch.softmax(beta * logits, dim=1)
        mean = (p * logits).sum(1)
        var = (p * (logits - mean[:, None]) ** 2).sum(1)
        return float((mean - true).mean()), float(var.mean())

    lo, hi = 1e-2, 1e2
    if derivatives(lo)[0] >= 0.0:
        return 1.0 / lo
    if derivatives(hi)[0] <= 0.0:
        return 1.0 / hi
    beta = 1.0
    for _ in range(max_iter):
        grad, curv = derivatives(beta)
        if grad > 0.0:
            hi = beta
        else:
            lo = beta
        if abs(grad) < 1e-12 or hi - lo < 1e-12 * hi:
            break
        step = beta - grad / curv if curv > 0.0 else math.nan
        beta = step if lo < step < hi else 0.5 * (lo + hi)
    return 1.0 / beta


class TopKSets:
    """Fixed-size sets ``Γ(x) = {indices of the K largest scores}`` (ties: ``torch.topk``).

    ``fit`` only checks its inputs and records the number of classes.
    """

    def __init__(self, k: int) -> None:
        self.k = check_int("k", k, 1)
        self.num_classes_: int | None = None

    def fit(self, scores: Tensor, labels: Tensor) -> TopKSets:
        _, c = _check_scores_labels(scores, labels)
        check_k(self.k, c)
        self.num_classes_ = c
        return self

    def predict(self, scores: Tensor) -> Tensor:
        """Boolean ``(N, C)`` membership with exactly ``k`` classes per row."""
        _check_predict_scores(scores, self.num_classes_, "TopKSets")
        idx = scores.topk(self.k, dim=1).indices
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, True)


class AverageKSets:
    """Average-K sets: ``Γ(x) = {j : p_j(x) >= t}`` with ``E[|Γ(X)|] = K`` on calibration.

    ``p = softmax(scores / T)`` with ``T`` fitted by :func:`fit_temperature` on the
    calibration split. The threshold ``t`` is the ``ceil(K N)``-th largest of the ``N C``
    calibrated probabilities; with ``a`` values strictly above ``t`` and ``b`` equal to it,
    a value equal to ``t`` is included with probability ``ρ = (K N - a) / b``, so the
    average calibration set size is exactly ``K`` in expectation (exactly ``K`` when
    ``K N`` is an integer and there are no ties). ``K`` may be any real in ``[1, C]``.
    ``temperature=None`` fits ``T`` on the calibration split; a given positive float is
    used as is (``1.0``: no calibration; or a ``T`` fitted once for several ``K``).

    Attributes (after ``fit``): ``temperature_``, ``threshold_`` (0-d float64 tensor),
    ``tie_probability_`` (ρ), ``num_classes_``.
    """

    def __init__(self, k: float, temperature: float | None = None) -> None:
        self.k = check_real("k", k, 1.0)
        if temperature is not None:
            check_real("temperature", temperature, 0.0, low_inclusive=False)
        self.temperature = temperature
        self.num_classes_: int | None = None
        self.temperature_ = 1.0 if temperature is None else float(temperature)
        self.threshold_: Tensor | None = None
        self.tie_probability_ = 1.0

    def probabilities(self, scores: Tensor) -> Tensor:
        """Calibrated probabilities ``softmax(scores / T)`` in float64."""
        return torch.softmax(scores.detach().double() / self.temperature_, dim=1)

    def fit(self, scores: Tensor, labels: Tensor) -> AverageKSets:
        n, c = _check_scores_labels(scores, labels)
        if self.k > c:
            raise ValueError(f"k must be in [1, {c}] for {c} classes, got {self.k}")
        if n == 0:
            raise ValueError("scores must hold at least one calibration sample")
        if self.temperature is None:
            self.temperature_ = fit_temperature(scores, labels)
        flat = self.probabilities(scores).flatten()
        budget = self.k * n  # total number of memberships wanted on calibration
        rank = min(max(math.ceil(budget - 1e-9 * budget), 1), flat.numel())
        threshold = flat.topk(rank).values[-1]
        above = int((flat > threshold).sum())
        ties = int((flat == threshold).sum())
        self.threshold_ = threshold
        self.tie_probability_ = min(max((budget - above) / ties, 0.0), 1.0)
        self.num_classes_ = c
        return self

    def predict(self, scores: Tensor, generator: torch.Generator | None = None,
                noise: Tensor | None = None) -> Tensor:
        """Boolean ``(N, C)`` membership.

        Classes whose probability equals the threshold are included with probability
        ``tie_probability_``, one uniform draw per sample (``generator``), or
        ``noise < tie_probability_`` with an explicit uniform ``noise (N,)``.
        """
        _check_predict_scores(scores, self.num_classes_, "AverageKSets")
        assert self.threshold_ is not None
        p = self.probabilities(scores)
        t = self.threshold_.to(p.device)
        sets = p > t
        if self.tie_probability_ >= 1.0:
            return sets | (p == t)
        u = _uniform(p.shape[0], p, generator, noise)
        return sets | ((p == t) & (u < self.tie_probability_)[:, None])


class ConformalSets:
    """Split-conformal sets ``Γ(x) = {y : s(x, y) <= q̂_y}`` from softmax probabilities.

    Conformity scores, with ``p = softmax(scores)`` and classes ranked by decreasing ``p``:

    * ``'lac'``: ``s(x, y) = 1 - p_y`` (Sadinle, Lei & Wasserman, 2019);
    * ``'aps'``: ``s(x, y) = Σ_{j ranked before y} p_j + u p_y`` (Romano, Sesia & Candès,
      2020), with ``u = 1`` (deterministic, the cumulated mass up to and including ``y``)
      or ``u ~ U(0, 1)`` per sample when ``randomized=True``.

    The threshold is ``q̂ = `` :func:`conformal_quantile` of the ``n`` calibration scores
    ``s(x_i, y_i)``, the ``ceil((n + 1)(1 - alpha))``-th smallest, which gives
    ``P(Y ∈ Γ(X)) >= 1 - alpha`` for exchangeable data, and (continuous scores) coverage
    given the calibration set distributed as ``Beta(n + 1 - l, l)``, ``l = floor((n+1)alpha)``.
    It needs ``n >= ceil(1/alpha) - 1`` (:func:`min_calibration_size`). Sets may be empty.

    ``class_conditional=True`` computes one threshold per class from that class's
    calibration scores (Mondrian conformal, Vovk et al., 2005), giving
    ``P(Y ∈ Γ(X) | Y = y) >= 1 - alpha`` for each class ``y`` with
    ``n_y >= min_calibration_size(alpha)`` calibration samples. Rarer classes (frequent in
    long-tailed data) use ``rare_class_fallback``:

    * ``'marginal'`` (default): the marginal threshold of all calibration scores; such a
      class keeps only the marginal guarantee, not a per-class one;
    * ``'include'``: the class is put in every set (threshold ``+inf``), which keeps the
      per-class guarantee trivially at the cost of larger sets.

    Attributes (after ``fit``): ``thresholds_`` (float64 ``(C,)``, one per class; all equal
    in the marginal case), ``threshold_`` (marginal threshold, or ``None`` when not
    computed), ``rare_classes_`` (bool ``(C,)``, classes that used the fallback).
    """

    def __init__(self, alpha: float, score: str = "lac", randomized: bool = False,
                 class_conditional: bool = False,
                 rare_class_fallback: str = "marginal") -> None:
        self.alpha = _check_alpha(alpha)
        if score not in CONFORMAL_SCORES:
            raise ValueError(f"score must be one of {CONFORMAL_SCORES}, got {score!r}")
        if rare_class_fallback not in RARE_CLASS_FALLBACKS:
            raise ValueError(f"rare_class_fallback must be one of {RARE_CLASS_FALLBACKS}, "
                             f"got {rare_class_fallback!r}")
        for name, flag in (("randomized", randomized), ("class_conditional", class_conditional)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if randomized and score == "lac":
            raise ValueError("randomized=True applies to score='aps' only")
        self.score = score
        self.randomized = randomized
        self.class_conditional = class_conditional
        self.rare_class_fallback = rare_class_fallback
        self.num_classes_: int | None = None
        self.threshold_: Tensor | None = None
        self.thresholds_: Tensor | None = None
        self.rare_classes_: Tensor | None = None

    def conformity_scores(self, scores: Tensor, generator: torch.Generator | None = None,
                          noise: Tensor | None = None) -> Tensor:
        """``s(x_i, j)`` for every sample and candidate class, float64 ``(N, C)``.

        ``noise`` (``(N,)``, in ``[0, 1]``) replaces the uniform draws of the randomised APS
        score; it is ignored otherwise.
        """
        check_scores(scores, "scores")
        p = torch.softmax(scores.detach().double(), dim=1)
        if self.score == "lac":
            return 1.0 - p
        order = p.argsort(dim=1, descending=True, stable=True)
        cum = p.gather(1, order).cumsum(1)
        inclusive = torch.empty_like(cum).scatter_(1, order, cum)
        if not self.randomized:
            return inclusive
        u = _uniform(p.shape[0], p, generator, noise)
        return inclusive - (1.0 - u)[:, None] * p

    def fit(self, scores: Tensor, labels: Tensor, generator: torch.Generator | None = None,
            noise: Tensor | None = None) -> ConformalSets:
        """Fit the threshold(s) on calibration ``scores (N, C)`` and ``labels (N,)``.

        ``generator`` / ``noise`` feed the randomised APS score (one uniform per sample).
        """
        n, c = _check_scores_labels(scores, labels)
        n_min = min_calibration_size(self.alpha)
        cal = self.conformity_scores(scores, generator, noise)
        cal = cal.gather(1, labels[:, None]).squeeze(1)
        need_marginal = not self.class_conditional or self.rare_class_fallback == "marginal"
        if need_marginal and n < n_min:
            raise ValueError(
                f"calibration set too small for alpha={self.alpha}: scores has {n} samples, "
                f"need at least n >= ceil(1/alpha) - 1 = {n_min}"
            )
        self.threshold_ = conformal_quantile(cal, self.alpha) if need_marginal else None
        if not self.class_conditional:
            assert self.threshold_ is not None
            self.thresholds_ = self.threshold_.expand(c).clone()
            self.rare_classes_ = torch.zeros(c, dtype=torch.bool)
        else:
            fallback = self.threshold_ if self.threshold_ is not None else math.inf
            thresholds = torch.full((c,), float(fallback), dtype=torch.float64)
            counts = torch.bincount(labels, minlength=c).cpu()
            rare = counts < n_min
            order = labels.argsort(stable=True)
            groups = cal[order].split(counts.tolist())
            for cls, group in enumerate(groups):
                if not rare[cls]:
                    thresholds[cls] = float(conformal_quantile(group, self.alpha))
            if self.rare_class_fallback == "include":
                thresholds[rare] = math.inf
            self.thresholds_ = thresholds.to(cal.device)
            self.rare_classes_ = rare
        self.num_classes_ = c
        return self

    def predict(self, scores: Tensor, generator: torch.Generator | None = None,
                noise: Tensor | None = None) -> Tensor:
        """Boolean ``(N, C)`` membership ``s(x, j) <= q̂_j`` (may contain empty sets)."""
        _check_predict_scores(scores, self.num_classes_, "ConformalSets")
        assert self.thresholds_ is not None
        s = self.conformity_scores(scores, generator, noise)
        return s <= self.thresholds_.to(s.device)[None, :]
