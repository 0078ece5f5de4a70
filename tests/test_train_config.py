"""Training configuration: defaults < YAML (with base files) < flags; strict keys and types."""

from __future__ import annotations

import pytest

from smoothtopk.train.config import ConfigError, TrainConfig, load_config, merge, read_yaml


def test_priority_defaults_yaml_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss: focal\ngamma: 2\nepochs: 7\n")
    config = load_config(path, epochs=3)
    assert (config.loss, config.gamma, config.epochs) == ("focal", 2.0, 3)
    assert isinstance(config.gamma, float)  # YAML int accepted for a float key
    assert config.lr == TrainConfig().lr


def test_base_file_is_read_first(tmp_path):
    (tmp_path / "_base.yaml").write_text("loss: ce\nepochs: 5\nmilestones: [4, 2]\n")
    (tmp_path / "run.yaml").write_text("base: _base.yaml\nloss: bal_topk\n")
    assert read_yaml(tmp_path / "run.yaml") == {"loss": "bal_topk", "epochs": 5,
                                                "milestones": [4, 2]}
    config = load_config(tmp_path / "run.yaml")
    assert config.milestones == [2, 4]  # sorted


@pytest.mark.parametrize("updates,match", [
    ({"learning_rate": 0.1}, "unknown config key"),
    ({"epochs": "ten"}, "'epochs' must be int"),
    ({"epochs": True}, "'epochs' must be int"),
    ({"lr": "fast"}, "'lr' must be float"),
    ({"milestones": [1.5]}, "list of ints"),
    ({"monitor": "loss"}, "monitor must be one of"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"devices": "many"}, "devices must be an int or 'auto'"),
    ({"threads": 0}, "threads must be >= 1"),
])
def test_bad_values(updates, match):
    with pytest.raises(ConfigError, match=match):
        merge(TrainConfig(), updates, "test")


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_yaml(tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        read_yaml(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(tmp_path / "bad.yaml")
