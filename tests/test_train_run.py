"""End to end: train two epochs on a small synthetic benchmark, resume, test, check files."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml

from smoothtopk.train.config import ConfigError, load_config
from smoothtopk.train.run import evaluate, train

SMALL = {"num_classes": 12, "genus_size": 3, "dim": 8, "count_median": 20.0,
         "count_sigma": 1.0, "count_min": 3, "count_max": 120, "eval_ratio": 0.5}


def small_config(out: Path, **overrides):
    settings = {"data": "synthetic", "data_kwargs": SMALL, "model": "mlp",
                "model_kwargs": {"hidden": [16]}, "batch_size": 32, "epochs": 2, "k": 3,
                "lr": 0.05, "threads": 1, "progress": "none", "out": str(out)}
    settings.update(overrides)
    return load_config(None, **settings)


def rank_hits(logits: torch.Tensor, targets: torch.Tensor, k: int) -> list[float]:
    """1.0 where the true class is among the k largest scores (ties count for it)."""
    hits = []
    for scores, y in zip(logits.double(), targets.tolist(), strict=True):
        larger = sum(1 for s in scores.tolist() if s > scores[y].item())
        hits.append(1.0 if larger < k else 0.0)
    return hits


def macro_reference(logits: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    by_class: dict[int, list[float]] = {}
    for y, hit in zip(targets.tolist(), rank_hits(logits, targets, k), strict=True):
        by_class.setdefault(y, []).append(hit)
    return statistics.fmean(statistics.fmean(v) for v in by_class.values())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """Two epochs, then resumed to three (lr decays at epoch 2): the run folder."""
    out = tmp_path_factory.mktemp("e2e") / "run"
    config = small_config(out, loss="imbal_topk", cosine_head=True, milestones=[2])
    train(config)
    first = json.loads((out / "metrics.json").read_text())
    resumed = train(small_config(out, loss="imbal_topk", cosine_head=True, milestones=[2],
                                 epochs=3), resume=True)
    return resumed, first


def test_run_folder_files(finished_run):
    run, _ = finished_run
    for name in ("config.yaml", "metrics.json", "predictions_val.pt", "predictions_test.pt",
                 "checkpoints/best.ckpt", "checkpoints/last.ckpt", "logs/version_1/metrics.csv",
                 "figures/learning_curves.png", "figures/accuracy_by_frequency_bin.png",
                 "figures/lorenz_curve.png"):
        assert (run / name).is_file(), name
    for png in (run / "figures").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["epochs"] == 3 and config["loss"] == "imbal_topk" and config["k"] == 3


def test_resume_continues_the_same_run(finished_run):
    run, first = finished_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in first["epochs"]] == [0, 1]
    assert [r["epoch"] for r in metrics["epochs"]] == [0, 1, 2]
    # the first two epochs are those of the interrupted run, not retrained
    assert metrics["epochs"][:2] == first["epochs"]
    # optimiser/scheduler state restored: lr x0.1 from epoch 2 on
    assert [r["lr"] for r in metrics["epochs"]] == pytest.approx([0.05, 0.05, 0.005])
    assert all(r["time_s"] > 0 for r in metrics["epochs"])


def test_saved_predictions_reproduce_metrics(finished_run):
    run, _ = finished_run
    metrics = json.loads((run / "metrics.json").read_text())
    counts = torch.tensor(metrics["train_class_counts"])
    assert len(metrics["data_info"]["genus"]) == 12  # the data module's report is kept
    assert counts.numel() == metrics["num_classes"] == 12
    assert metrics["ks"] == [1, 3, 5, 10]
    for split in ("val", "test"):
        pred = torch.load(run / f"predictions_{split}.pt")
        logits, targets = pred["logits"], pred["targets"]
        assert logits.dtype == torch.float32 and targets.dtype == torch.int64
        assert logits.shape == (targets.numel(), 12)
        assert metrics[split]["num_samples"] == targets.numel()
        for k in (1, 3, 5, 10):
            assert metrics[split][f"macro_top{k}"] == pytest.approx(
                macro_reference(logits, targets, k), abs=1e-6)
            assert metrics[split][f"top{k}"] == pytest.approx(
                statistics.fmean(rank_hits(logits, targets, k)), abs=1e-6)
        bins = metrics[split]["by_frequency_bin"]
        assert sum(bins["num_classes"]) == 12
        assert sum(bins["num_samples"]) == targets.numel()
    # the val figures of the best checkpoint are those of its epoch during training
    best = metrics["epochs"][metrics["best_epoch"]]
    assert metrics["best_score"] == pytest.approx(best["val_macro_top3"], abs=1e-6)
    for k in (1, 3, 5, 10):
        assert metrics["val"][f"macro_top{k}"] == pytest.approx(best[f"val_macro_top{k}"],
                                                                abs=1e-6)


def test_test_command_on_best_checkpoint(finished_run, tmp_path):
    run, _ = finished_run
    metrics = json.loads((run / "metrics.json").read_text())
    result = evaluate(run / "checkpoints" / "best.ckpt", "test", {"progress": "none"},
                      out=tmp_path)
    for k in (1, 3, 5, 10):
        assert result[f"macro_top{k}"] == pytest.approx(metrics["test"][f"macro_top{k}"])
    assert (tmp_path / "predictions_test.pt").is_file()
    assert (tmp_path / "metrics_test.json").is_file()


def test_incompatible_checkpoint_is_a_config_error(finished_run):
    run, _ = finished_run
    with pytest.raises(ConfigError, match="incompatible"):
        evaluate(run / "checkpoints" / "best.ckpt", "test",
                 {"progress": "none", "data_kwargs": {**SMALL, "num_classes": 9}})


def test_existing_run_folder_is_not_overwritten(finished_run):
    run, _ = finished_run
    with pytest.raises(ConfigError, match="exists"):
        train(small_config(run))
