"""The shipped experiment configs resolve, and the paper's runs have the paper's settings."""

from __future__ import annotations

import pytest
import torch

from smoothtopk.losses import build_loss
from smoothtopk.train.config import load_config
from smoothtopk.train.experiments import list_experiments, load_experiment
from smoothtopk.train.run import loss_kwargs

EXPERIMENTS = ["b_synthetic", "cifar100_noise", "eps_synthetic", "fashion_mnist_lt",
               "plantnet300k", "plantnet_synthetic"]


def test_experiments_listed():
    assert list_experiments() == EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_run_resolves_and_builds_its_loss(name):
    experiment = load_experiment(name)
    labels = set()
    for path in experiment["runs"]:
        config = load_config(path)
        labels.add(config.label)
        counts = torch.arange(1, 101)
        build_loss(config.loss, **loss_kwargs(config, counts))
    assert len(labels) == len(experiment["runs"])  # one column per run file


def test_main_job_losses_are_the_paper_ones():
    runs = {load_config(p).loss: load_config(p) for p in
            load_experiment("plantnet_synthetic")["runs"]}
    assert list(runs) == ["ce", "smooth_topk", "bal_topk", "focal", "ldam", "imbal_topk"]
    assert runs["smooth_topk"].tau == 0.1
    assert (runs["bal_topk"].epsilon, runs["bal_topk"].n_samples) == (1.0, 5)
    assert runs["focal"].gamma == 2.0
    assert (runs["ldam"].max_margin, runs["ldam"].scale, runs["ldam"].cosine_head) == \
        (0.2, 40.0, True)
    imbal = runs["imbal_topk"]
    assert (imbal.max_margin, imbal.epsilon, imbal.n_samples, imbal.scale,
            imbal.cosine_head) == (0.2, 0.01, 5, 60.0, True)
    assert all(c.k == 5 and c.monitor == "mean_topk" for c in runs.values())


def test_paper_settings_plantnet300k():
    for path in load_experiment("plantnet300k")["runs"]:
        c = load_config(path)
        assert (c.data, c.model, c.lr, c.batch_size, c.epochs, c.milestones, c.lr_decay,
                c.weight_decay, c.momentum, c.monitor, c.k) == \
            ("plantnet300k", "resnet50", 2e-3, 32, 30, [20, 25], 0.1, 1e-4, 0.9,
             "mean_topk", 5)
        assert "pretrained_weights" in c.model_kwargs


def test_paper_settings_cifar100_noise():
    seen = set()
    for path in load_experiment("cifar100_noise")["runs"]:
        c = load_config(path)
        assert (c.data, c.model, c.lr, c.batch_size, c.epochs, c.milestones, c.weight_decay,
                c.monitor, c.k) == ("cifar100", "densenet_bc_40_40", 0.1, 64, 300,
                                    [150, 225], 1e-4, "topk", 5)
        assert c.data_kwargs["val_fraction"] == 0.1
        assert c.data_kwargs["noise_grouping"] == "coarse"
        seen.add((c.loss, c.data_kwargs["noise_p"]))
        if c.loss == "smooth_topk":
            assert c.tau == 1.0
        if c.loss == "bal_topk":
            assert (c.epsilon, c.n_samples) == (0.2, 10)
    assert seen == {(loss, p) for loss in ("ce", "smooth_topk", "bal_topk")
                    for p in (0.0, 0.1, 0.2, 0.3, 0.4)}
