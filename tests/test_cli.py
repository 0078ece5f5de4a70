"""The smoothtopk command: --help everywhere, bad input as one line with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from smoothtopk.cli import main
from test_train_run import SMALL, small_config

SUBCOMMANDS = [[], ["train"], ["test"], ["report"], ["reproduce"], ["sets"], ["plot"],
               ["plot", "level-sets"]]
SMALL_FLAGS = ["--data", "synthetic", "--threads", "1", "--progress", "none", "--epochs", "1",
               *[f"--data-arg={key}={value}" for key, value in SMALL.items()]]


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: smoothtopk" in capsys.readouterr().out


def assert_one_line_error(argv, capsys, *fragments):
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_loss(tmp_path, capsys):
    assert_one_line_error(["train", *SMALL_FLAGS, "--loss", "nope", "--out",
                           str(tmp_path / "r")], capsys, "unknown loss 'nope'", "bal_topk")


def test_unknown_model(tmp_path, capsys):
    assert_one_line_error(["train", *SMALL_FLAGS, "--model", "nope", "--out",
                           str(tmp_path / "r")], capsys, "model 'nope'", "mlp")


def test_unknown_dataset(tmp_path, capsys):
    assert_one_line_error(["train", "--data", "nope", "--out", str(tmp_path / "r")], capsys,
                          "data 'nope'")


def test_loss_option_the_loss_does_not_take(tmp_path, capsys):
    assert_one_line_error(["train", *SMALL_FLAGS, "--loss", "ce", "--tau", "0.1", "--out",
                           str(tmp_path / "r")], capsys, "does not take 'tau'")


def test_unknown_config_key(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("loss: ce\nlearning_rate: 0.1\n")
    assert_one_line_error(["train", "--config", str(config)], capsys,
                          "unknown config key(s) 'learning_rate'")


def test_config_value_of_wrong_type(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: ten\n")
    assert_one_line_error(["train", "--config", str(config)], capsys, "'epochs' must be int")


def test_missing_dataset_root(tmp_path, capsys):
    assert_one_line_error(["train", "--data", "cifar100", "--data-root",
                           str(tmp_path / "absent"), "--out", str(tmp_path / "r")], capsys,
                          "data 'cifar100'")


def test_unknown_flag_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--learning-rate", "0.1"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unrecognized arguments: --learning-rate" in lines[0]


def test_incompatible_checkpoint(tmp_path, capsys):
    config = small_config(tmp_path / "r").to_dict()  # 12 classes, MLP hidden 16
    state = {"model.fc.weight": torch.zeros(5, 16)}  # another model's weights
    torch.save({"state_dict": state, "smoothtopk_config": config}, tmp_path / "x.ckpt")
    assert_one_line_error(["test", str(tmp_path / "x.ckpt")], capsys, "incompatible")


def test_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "x.ckpt").write_bytes(b"not a checkpoint")
    assert_one_line_error(["test", str(tmp_path / "x.ckpt")], capsys, "cannot read checkpoint")
    assert_one_line_error(["test", str(tmp_path / "absent.ckpt")], capsys,
                          "checkpoint not found")


def test_resume_without_run(tmp_path, capsys):
    assert_one_line_error(["train", "--resume", "--out", str(tmp_path / "r")], capsys,
                          "cannot resume")


def test_unknown_experiment(capsys):
    assert_one_line_error(["reproduce", "nope"], capsys, "unknown experiment 'nope'",
                          "plantnet_synthetic")


def test_report_and_sets_of_a_non_run(tmp_path, capsys):
    assert_one_line_error(["report", str(tmp_path)], capsys, "not a finished run folder")
    assert_one_line_error(["sets", str(tmp_path)], capsys, "not a finished run folder")


def test_level_sets_unknown_loss(tmp_path, capsys):
    assert_one_line_error(["plot", "level-sets", "--loss", "nope", "--out",
                           str(tmp_path / "a.png")], capsys, "unknown loss 'nope'")


@pytest.mark.slow
def test_installed_entry_point_bad_input_no_traceback(tmp_path):
    """Through a real process: exit code 2, a single stderr line, no traceback."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"loss": "ce", "optimizer": "adam"}))
    proc = subprocess.run([sys.executable, "-m", "smoothtopk.cli", "train", "--config",
                           str(config)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "unknown config key(s) 'optimizer'" in proc.stderr


@pytest.mark.slow
def test_train_report_reproduce_commands(tmp_path, capsys):
    """train + report through the CLI; reproduce of a tiny experiment, reused on rerun."""
    run = tmp_path / "run"
    assert main(["train", *SMALL_FLAGS, "--loss", "focal", "--gamma", "2", "--k", "3",
                 "--batch-size", "32", "--model-arg", "hidden=[8]", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "best epoch 1" in out and "macro top-3" in out
    assert main(["report", str(run), "--ks", "1", "3"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0] == "| K | focal |"
    assert main(["sets", str(run), "--average-k", "1", "2", "--out", str(tmp_path / "s")]) == 0
    assert "| average-K | K=2 |" in capsys.readouterr().out
    assert_one_line_error(["sets", str(run), "--average-k", "50"], capsys, "average_k")

    experiment = tmp_path / "configs" / "tiny"
    experiment.mkdir(parents=True)
    (experiment / "_experiment.yaml").write_text("title: tiny\nks: [1, 3]\n")
    base = small_config(tmp_path / "unused", epochs=1).to_dict()
    del base["out"], base["seed"]
    (experiment / "_base.yaml").write_text(yaml.safe_dump(base))
    (experiment / "a.yaml").write_text("base: _base.yaml\nloss: ce\nlabel: A\n")
    (experiment / "b.yaml").write_text("base: _base.yaml\nloss: cal_hinge\nlabel: B\n")
    argv = ["reproduce", "tiny", "--configs", str(tmp_path / "configs"), "--seeds", "0", "1",
            "--out", str(tmp_path / "rep")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| K | A | B |" in out and " ± " in out and "over 2 seeds" in out
    assert (tmp_path / "rep" / "tiny" / "B" / "seed1" / "metrics.json").is_file()
    assert main(argv) == 0  # second time: every run is reused
    assert capsys.readouterr().out.count("finished earlier, reused") == 4
