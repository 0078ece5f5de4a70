"""DDP on CPU (2 processes, gloo): validation metrics reduced across processes are exact."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from smoothtopk.train.run import build_datamodule, evaluate
from test_train_run import SMALL, small_config


@pytest.mark.slow
def test_ddp_validation_equals_single_process(tmp_path):
    out = tmp_path / "ddp"
    # a data seed whose validation split has an odd size: split unevenly over 2 processes
    data = next(d for d in ({**SMALL, "data_seed": s} for s in range(20)) if len(
        build_datamodule(small_config(out, data_kwargs=d)).val_dataloader().dataset) % 2)
    config = small_config(out, loss="bal_topk", epochs=2, batch_size=16,
                          data_kwargs=data).to_dict()
    config_file = tmp_path / "small.yaml"
    config_file.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "smoothtopk.cli", "train", "--config", str(config_file),
         "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"],
        capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    # figures reduced across the 2 processes during training, at the best epoch ...
    best = metrics["epochs"][metrics["best_epoch"]]
    # ... equal those of one process on the same data with the same weights
    single = evaluate(out / "checkpoints" / "best.ckpt", "val",
                      {"progress": "none", "devices": 1, "accelerator": "cpu"})
    n_val = single["num_samples"]
    assert n_val % 2 == 1  # uneven split: a padded sampler would count a sample twice
    for k in (1, 3, 5, 10):
        assert best[f"val_macro_top{k}"] == pytest.approx(single[f"macro_top{k}"], abs=1e-6)
        assert best[f"val_top{k}"] == pytest.approx(single[f"top{k}"], abs=1e-6)
    # predictions gathered from both processes come back complete and in dataset order
    gathered = torch.load(out / "predictions_val.pt")
    assert gathered["targets"].numel() == n_val
    datamodule = build_datamodule(small_config(tmp_path / "x", data_kwargs=data))
    targets = torch.cat([y for _, y in datamodule.val_dataloader()])
    assert torch.equal(gathered["targets"], targets)
