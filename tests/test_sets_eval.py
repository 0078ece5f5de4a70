"""Tests of smoothtopk.sets_eval.evaluate_run on a run folder written by the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from smoothtopk.metrics import topk_accuracy
from smoothtopk.set_metrics import coverage
from smoothtopk.sets import ConformalSets
from smoothtopk.sets_eval import evaluate_run

C = 8
COUNTS = [5, 9, 30, 45, 120, 300, 800, 2500]


def _split(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    probs = torch.tensor(COUNTS, dtype=torch.float64)
    targets = torch.multinomial(probs, n, replacement=True, generator=g)
    logits = torch.randn(n, C, generator=g) * 2.0
    logits[torch.arange(n), targets] += 2.0
    return {"logits": logits.float(), "targets": targets}


def evaluate(run_dir: Path, out: Path | None = None) -> dict:
    return evaluate_run(run_dir, average_k=(1, 3), alpha=0.2, out_dir=out)


def rows_of(result: dict) -> dict:
    return {(r["method"], r["param"]): r for r in result["rows"]}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    torch.save(_split(400, 0), tmp_path / "predictions_val.pt")
    torch.save(_split(500, 1), tmp_path / "predictions_test.pt")
    (tmp_path / "metrics.json").write_text(json.dumps({"train_class_counts": COUNTS}))
    return tmp_path


def test_evaluate_run_writes_table_plot_json(run_dir: Path, tmp_path: Path):
    out = tmp_path / "report"
    result = evaluate(run_dir, out)
    for name in ("sets.md", "sets.json", "sets.png"):
        assert (out / name).is_file()
    assert (out / "sets.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "sets.md").read_text()
    for method in ("top-K", "average-K", "conformal LAC", "conformal APS",
                   "conformal LAC class-conditional"):
        assert f"| {method} |" in table
    assert "0-10 (2 cl.)" in table and ">2000 (1 cl.)" in table
    rare = rows_of(result)[("conformal LAC class-conditional", "alpha=0.2")]["rare_classes"]
    assert rare >= 1  # class 0 has about 0.5 expected calibration samples
    assert f"{rare} of 8 classes have fewer than 4 calibration samples" in table
    assert json.loads((out / "sets.json").read_text())["average_k"] == [1, 3]

    test = torch.load(run_dir / "predictions_test.pt")
    val = torch.load(run_dir / "predictions_val.pt")
    rows = rows_of(result)
    for k in (1, 3):
        top = rows[("top-K", f"K={k}")]
        assert top["coverage"] == pytest.approx(
            float(topk_accuracy(test["logits"], test["targets"], k)), abs=1e-6)
        assert top["avg_size"] == k
        avg = rows[("average-K", f"K={k}")]
        assert abs(avg["avg_size"] - k) < 0.25 * k  # threshold fitted on another split
    lac = ConformalSets(0.2).fit(val["logits"], val["targets"]).predict(test["logits"])
    assert rows[("conformal LAC", "alpha=0.2")]["coverage"] == pytest.approx(
        float(coverage(lac, test["targets"])), abs=1e-6)
    assert result["curves"]["top_k"]["k"] == list(range(1, C + 1))
    assert result["curves"]["average_k"]["k"][0] == 1.0
    assert result["curves"]["average_k"]["k"][-1] == C
    assert result["comparison"][1]["delta_coverage"] == pytest.approx(
        rows[("average-K", "K=3")]["coverage"] - rows[("top-K", "K=3")]["coverage"])


def test_evaluate_run_defaults_to_run_dir_and_tolerates_missing_counts(run_dir: Path):
    (run_dir / "metrics.json").unlink()
    result = evaluate(run_dir)
    assert (run_dir / "sets.md").is_file()
    assert all("frequency_bins" not in r for r in result["rows"])


def test_evaluate_run_bad_input(run_dir: Path, tmp_path: Path):
    with pytest.raises(ValueError, match=r"average_k\[1\] must be in \[1, 8\]"):
        evaluate_run(run_dir, average_k=(1, 9))
    with pytest.raises(ValueError, match="alpha must be in"):
        evaluate_run(run_dir, alpha=1.0)
    with pytest.raises(FileNotFoundError, match=r"predictions_val\.pt"):
        evaluate_run(tmp_path / "missing")
    (run_dir / "metrics.json").write_text(json.dumps({"train_class_counts": [1, 2]}))
    with pytest.raises(ValueError, match="train_class_counts has 2 entries"):
        evaluate(run_dir)
