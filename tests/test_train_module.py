"""The Lightning module: optimiser and schedule, evaluated K's, monitored metric, AMP."""

from __future__ import annotations

import json

import pytest
import torch

from smoothtopk.train.module import TopKClassifier, monitor_key
from smoothtopk.train.run import train
from test_train_run import small_config


def make_module(**kwargs):
    model = torch.nn.Linear(4, 7)
    return TopKClassifier(model, torch.nn.CrossEntropyLoss(), num_classes=7, **kwargs)


def test_sgd_nesterov_and_step_decay():
    module = make_module(lr=0.2, momentum=0.9, weight_decay=5e-4, milestones=[3, 5],
                         lr_decay=0.5)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == \
        (0.2, 0.9, True, 5e-4)
    assert config["lr_scheduler"]["interval"] == "epoch"
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.2, 0.2, 0.2, 0.1, 0.1, 0.05])


def test_evaluated_ks_and_monitor():
    module = make_module(k=4, eval_ks=(1, 3, 5, 10), monitor="mean_topk")
    assert module.ks == (1, 3, 4, 5)  # 10 > C dropped, the run's k added
    assert module.monitor == "val_macro_top4"
    assert [monitor_key(m, 5) for m in ("topk", "top1", "mean_topk", "mean_top1")] == \
        ["val_top5", "val_top1", "val_macro_top5", "val_macro_top1"]


def test_mixed_precision_run(tmp_path):
    out = tmp_path / "amp"
    train(small_config(out, epochs=1, precision="bf16-mixed", loss="cal_hinge"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 1
    logits = torch.load(out / "predictions_test.pt")["logits"]
    assert logits.dtype == torch.float32 and bool(torch.isfinite(logits).all())
