"""Evaluate set-valued predictors on a finished run: top-K vs average-K vs conformal.

A run folder written by the training pipeline holds ``predictions_val.pt`` and
``predictions_test.pt`` (each ``torch.save({"logits": float32 (N, C), "targets": int64
(N,)})``) and ``metrics.json`` with ``"train_class_counts"``. The validation split is the
calibration split (temperature, thresholds), the test split the evaluation split.
:func:`evaluate_run` writes ``sets.md`` (tables), ``sets.json`` (every figure) and
``sets.png`` (coverage and macro coverage vs average set size).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._checks import check_k, check_scores, check_target
from .set_metrics import (
    coverage,
    coverage_by_frequency_bin,
    macro_coverage,
    set_size_summary,
)
from .sets import (
    AverageKSets,
    ConformalSets,
    TopKSets,
    _check_alpha,
    fit_temperature,
    min_calibration_size,
)

__all__ = ["evaluate_run", "load_predictions"]

CURVE_POINTS_PER_UNIT = 4  # average-K curve: K on a grid of step 1/4
CONFORMAL_COLORS = ("tab:green", "tab:red", "tab:purple", "tab:brown")


def load_predictions(path: str | Path) -> tuple[Tensor, Tensor]:
    """Read ``{"logits": (N, C) float, "targets": (N,) int64}`` saved by ``torch.save``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or not {"logits", "targets"} <= data.keys():
        raise ValueError(f"{path} must hold a dict with keys 'logits' and 'targets'")
    logits, targets = data["logits"], data["targets"]
    check_scores(logits, f"{path.name}['logits']")
    check_target(targets, logits.shape[0], logits.shape[1], f"{path.name}['targets']")
    return logits.float(), targets


def _train_counts(run_dir: Path, num_classes: int) -> list[float] | None:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    counts = json.loads(path.read_text()).get("train_class_counts")
    if counts is None:
        return None
    if len(counts) != num_classes:
        raise ValueError(f"{path}: train_class_counts has {len(counts)} entries, "
                         f"the predictions have {num_classes} classes")
    return [float(v) for v in counts]


def _summary(sets: Tensor, targets: Tensor) -> dict[str, float]:
    sizes = set_size_summary(sets)
    return {
        "coverage": float(coverage(sets, targets)),
        "macro_coverage": float(macro_coverage(sets, targets)),
        "avg_size": sizes["mean"],
        "size_std": sizes["std"],
        "median_size": sizes["median"],
        "max_size": sizes["max"],
        "empty": sizes["empty"],
    }


def _row(method: str, param: str, sets: Tensor, targets: Tensor,
         counts: list[float] | None, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"method": method, "param": param, **_summary(sets, targets), **extra}
    if counts is not None:
        row["frequency_bins"] = coverage_by_frequency_bin(sets, targets, counts)
    return row


def _fmt(value: float, digits: int = 4) -> str:
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Set-valued prediction: {result['run_dir']}",
        "",
        f"Calibration (val) N = {result['n_calibration']}, evaluation (test) "
        f"N = {result['n_test']}, C = {result['num_classes']}, temperature fitted on "
        f"calibration T = {result['temperature']:.4f}, alpha = {result['alpha']}.",
        "",
        "| method | param | coverage | macro coverage | avg size | size std | median size "
        "| max size | empty |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['method']} | {r['param']} | {_fmt(r['coverage'])} | "
            f"{_fmt(r['macro_coverage'])} | {_fmt(r['avg_size'], 3)} | {_fmt(r['size_std'], 3)} "
            f"| {r['median_size']:g} | {r['max_size']:g} | {_fmt(r['empty'], 3)} |"
        )
    for r in result["rows"]:
        if r["method"].endswith("class-conditional") and r["rare_classes"]:
            lines += ["", f"{r['method']}: {r['rare_classes']} of {result['num_classes']} "
                      f"classes have fewer than {min_calibration_size(result['alpha'])} "
                      "calibration samples and use the marginal threshold (no per-class "
                      "guarantee for them)."]
    lines += ["", "Average-K minus top-K at the same K (test split):", "",
              "| K | avg size (average-K) | Δ coverage | Δ macro coverage |",
              "| --- | --- | --- | --- |"]
    for d in result["comparison"]:
        lines.append(f"| {d['k']} | {_fmt(d['avg_size'], 3)} | {d['delta_coverage']:+.4f} | "
                     f"{d['delta_macro_coverage']:+.4f} |")
    rows_with_bins = [r for r in result["rows"] if "frequency_bins" in r]
    if rows_with_bins:
        labels = rows_with_bins[0]["frequency_bins"]["labels"]
        n_cls = rows_with_bins[0]["frequency_bins"]["num_classes"]
        lines += ["", "Coverage (mean set size) by training images per class:", "",
                  "| method | param | " + " | ".join(
                      f"{lab} ({n} cl.)" for lab, n in zip(labels, n_cls, strict=True)) + " |",
                  "| --- | --- |" + " --- |" * len(labels)]
        for r in rows_with_bins:
            fb = r["frequency_bins"]
            cells = [f"{_fmt(c, 3)} ({_fmt(s, 2)})"
                     for c, s in zip(fb["coverage"], fb["mean_set_size"], strict=True)]
            lines.append(f"| {r['method']} | {r['param']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    curves = result["curves"]
    for ax, key, title in ((axes[0], "coverage", "coverage"),
                           (axes[1], "macro_coverage", "macro-average coverage")):
        ax.plot(curves["average_k"]["avg_size"], curves["average_k"][key], "-",
                color="tab:blue", label="average-K (calibrated threshold)")
        ax.plot(curves["top_k"]["avg_size"], curves["top_k"][key], "o--",
                color="tab:orange", label="top-K")
        conformal = [r for r in result["rows"] if r["method"].startswith("conformal")]
        for r, color in zip(conformal, CONFORMAL_COLORS, strict=False):
            ax.plot(r["avg_size"], r[key], "^", markersize=8, color=color,
                    label=f"{r['method']} ({r['param']})")
        ax.set_xlabel("average set size on test")
        ax.set_ylabel(title)
        ax.set_title(f"{title} vs average set size")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate_run(
    run_dir: str | Path,
    average_k: Sequence[int] = (1, 3, 5, 10),
    alpha: float = 0.1,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate top-K, average-K and conformal sets on a run folder and write a report.

    Calibration on ``predictions_val.pt``, evaluation on ``predictions_test.pt``. For each
    ``K`` in ``average_k`` (clipped to nothing: each must be in ``[1, C]``) the
    :class:`~smoothtopk.sets.TopKSets` and :class:`~smoothtopk.sets.AverageKSets` rows;
    conformal rows at level ``alpha`` for LAC, APS, randomised APS and class-conditional
    LAC (rare-class fallback ``'marginal'``); curves of coverage vs average set size for
    top-K (``K = 1..K_max``) and average-K (``K`` on a grid of step 1/4), with
    ``K_max = min(C, max(10, max(average_k)))``. Randomised steps use a generator seeded
    with 0, so the report is reproducible.

    Args:
        run_dir: the run folder.
        average_k: the K's to compare, ints in ``[1, C]``.
        alpha: conformal miscoverage level in ``(0, 1)``.
        out_dir: where to write ``sets.md``, ``sets.json``, ``sets.png`` (default: run_dir).

    Returns:
        dict with ``rows`` (one per method and parameter: coverage, macro_coverage,
        avg_size, size_std, median_size, max_size, empty and, when ``metrics.json`` has
        ``train_class_counts``, ``frequency_bins``), ``comparison`` (average-K minus top-K
        per K), ``curves``, metadata, and ``files`` (paths written).
    """
    run_dir = Path(run_dir)
    alpha = _check_alpha(alpha)
    if isinstance(average_k, int) or not isinstance(average_k, Sequence) or not average_k:
        raise TypeError("average_k must be a non-empty sequence of ints, e.g. (1, 3, 5, 10)")
    cal_logits, cal_y = load_predictions(run_dir / "predictions_val.pt")
    test_logits, test_y = load_predictions(run_dir / "predictions_test.pt")
    c = cal_logits.shape[1]
    if test_logits.shape[1] != c:
        raise ValueError(f"val and test predictions disagree on the number of classes "
                         f"({c} vs {test_logits.shape[1]})")
    ks = [check_k(k, c, name=f"average_k[{i}]") for i, k in enumerate(average_k)]
    counts = _train_counts(run_dir, c)
    gen = torch.Generator().manual_seed(0)

    rows: list[dict[str, Any]] = []
    comparison: list[dict[str, Any]] = []
    temperature = fit_temperature(cal_logits, cal_y)
    for k in ks:
        top = _row("top-K", f"K={k}", TopKSets(k).fit(cal_logits, cal_y).predict(test_logits),
                   test_y, counts)
        avg_pred = AverageKSets(k, temperature).fit(cal_logits, cal_y)
        avg = _row("average-K", f"K={k}", avg_pred.predict(test_logits, generator=gen), test_y,
                   counts, threshold=float(avg_pred.threshold_))
        rows += [top, avg]
        comparison.append({
            "k": k, "avg_size": avg["avg_size"],
            "delta_coverage": avg["coverage"] - top["coverage"],
            "delta_macro_coverage": avg["macro_coverage"] - top["macro_coverage"],
        })
    conformal = (
        ("conformal LAC", ConformalSets(alpha, "lac")),
        ("conformal APS", ConformalSets(alpha, "aps")),
        ("conformal APS randomized", ConformalSets(alpha, "aps", randomized=True)),
        ("conformal LAC class-conditional", ConformalSets(alpha, "lac", class_conditional=True)),
    )
    for name, predictor in conformal:
        predictor.fit(cal_logits, cal_y, generator=gen)
        sets = predictor.predict(test_logits, generator=gen)
        assert predictor.rare_classes_ is not None
        rows.append(_row(name, f"alpha={alpha:g}", sets, test_y, counts,
                         rare_classes=int(predictor.rare_classes_.sum())))

    k_max = min(c, max(10, *ks))
    top_curve: dict[str, list[float]] = {"k": [], "avg_size": [], "coverage": [],
                                         "macro_coverage": []}
    for k in range(1, k_max + 1):
        s = _summary(TopKSets(k).fit(cal_logits, cal_y).predict(test_logits), test_y)
        for key, value in (("k", k), ("avg_size", s["avg_size"]), ("coverage", s["coverage"]),
                           ("macro_coverage", s["macro_coverage"])):
            top_curve[key].append(value)
    avg_curve: dict[str, list[float]] = {"k": [], "avg_size": [], "coverage": [],
                                         "macro_coverage": []}
    for i in range(CURVE_POINTS_PER_UNIT * (k_max - 1) + 1):
        k_real = 1.0 + i / CURVE_POINTS_PER_UNIT
        pred = AverageKSets(k_real, temperature).fit(cal_logits, cal_y)
        s = _summary(pred.predict(test_logits, generator=gen), test_y)
        for key, value in (("k", k_real), ("avg_size", s["avg_size"]),
                           ("coverage", s["coverage"]), ("macro_coverage", s["macro_coverage"])):
            avg_curve[key].append(value)

    out = Path(out_dir) if out_dir is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "run_dir": str(run_dir),
        "alpha": alpha,
        "average_k": ks,
        "num_classes": c,
        "n_calibration": int(cal_y.numel()),
        "n_test": int(test_y.numel()),
        "temperature": temperature,
        "rows": rows,
        "comparison": comparison,
        "curves": {"top_k": top_curve, "average_k": avg_curve},
        "files": {"table": str(out / "sets.md"), "json": str(out / "sets.json"),
                  "plot": str(out / "sets.png")},
    }
    (out / "sets.md").write_text(_markdown(result))
    (out / "sets.json").write_text(json.dumps(result, indent=2, allow_nan=True))
    _plot(result, out / "sets.png")
    return result
