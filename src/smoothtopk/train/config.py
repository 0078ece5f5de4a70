"""Training configuration: one flat, typed record, read from YAML and command-line flags.

A run is fully described by a :class:`TrainConfig`. It is built from the defaults, then a
YAML file (``--config``), then command-line flags (highest priority), and saved resolved
as ``config.yaml`` in the run folder. Unknown keys and values of the wrong type are
rejected with a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MONITORS = ("topk", "top1", "mean_topk", "mean_top1")
PROGRESS = ("bar", "epoch", "none")


class ConfigError(ValueError):
    """Bad user input (configuration, names, paths): reported as one line, exit code 2."""


@dataclass
class TrainConfig:
    """Every setting of a training run (see ``smoothtopk train --help``).

    ``label`` names the run in reports (default: the loss name). Loss hyper-parameters
    left at ``None`` take the loss's own default; only those that
    the chosen loss accepts are passed to :func:`smoothtopk.losses.build_loss`.
    """

    # data
    data: str = "synthetic"
    data_root: str | None = None
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    num_workers: int = 0
    # model
    model: str = "mlp"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    cosine_head: bool = False
    # loss
    loss: str = "ce"
    k: int = 5
    epsilon: float | None = None
    n_samples: int | None = None
    margin: float | None = None
    tau: float | None = None
    alpha: float | None = None
    gamma: float | None = None
    max_margin: float | None = None
    scale: float | None = None
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    # optimisation (SGD with Nesterov momentum, step decay at milestone epochs)
    epochs: int = 30
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: list[int] = field(default_factory=list)
    lr_decay: float = 0.1
    # evaluation
    monitor: str = "mean_topk"
    eval_ks: list[int] = field(default_factory=lambda: [1, 3, 5, 10])
    # engine
    seed: int = 0
    threads: int | None = None
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    progress: str = "bar"
    out: str = "runs/run"
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Expected Python types of each key (YAML gives int for 1 and float for 1.0: ints are
# accepted where floats are expected).
_FLOAT_FIELDS = {"epsilon", "margin", "tau", "alpha", "gamma", "max_margin", "scale", "lr",
                 "momentum", "weight_decay", "lr_decay"}
_TYPES: dict[str, tuple[type, ...]] = {
    "data": (str,), "data_root": (str,), "data_kwargs": (dict,), "batch_size": (int,),
    "num_workers": (int,), "model": (str,), "model_kwargs": (dict,), "cosine_head": (bool,),
    "loss": (str,), "k": (int,), "n_samples": (int,), "loss_kwargs": (dict,),
    "epochs": (int,), "milestones": (list,), "monitor": (str,), "eval_ks": (list,),
    "seed": (int,), "threads": (int,), "accelerator": (str,), "devices": (int, str),
    "num_nodes": (int,),
    "strategy": (str,), "precision": (str,), "progress": (str,), "out": (str,), "label": (str,),
    **{name: (float, int) for name in _FLOAT_FIELDS},
}
_NULLABLE = {"threads", "label", "data_root", "epsilon", "n_samples", "margin", "tau",
             "alpha", "gamma", "max_margin", "scale"}
FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def _check_value(key: str, value: Any) -> Any:
    if value is None and key in _NULLABLE:
        return None
    types = _TYPES[key]
    wrong_bool = isinstance(value, bool) and bool not in types
    if wrong_bool or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types)
        raise ConfigError(f"config key {key!r} must be {names}, got {value!r}")
    if key in _FLOAT_FIELDS:
        value = float(value)
    if key in ("milestones", "eval_ks"):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"config key {key!r} must be a list of ints, got {value!r}")
        value = sorted(value)
    return value


def merge(config: TrainConfig, updates: dict[str, Any], source: str) -> TrainConfig:
    """Return ``config`` with ``updates`` applied; unknown keys raise :class:`ConfigError`."""
    unknown = sorted(set(updates) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(map(repr, unknown))} in {source}; "
            f"known keys: {', '.join(FIELDS)}"
        )
    checked = {key: _check_value(key, value) for key, value in updates.items()}
    return validate(dataclasses.replace(config, **checked))


def validate(config: TrainConfig) -> TrainConfig:
    """Range checks that do not need the data (names are checked when building)."""
    if config.monitor not in MONITORS:
        raise ConfigError(f"monitor must be one of {MONITORS}, got {config.monitor!r}")
    if config.progress not in PROGRESS:
        raise ConfigError(f"progress must be one of {PROGRESS}, got {config.progress!r}")
    for key in ("batch_size", "epochs", "k", "num_nodes"):
        if getattr(config, key) < (0 if key == "epochs" else 1):
            raise ConfigError(f"{key} must be >= {0 if key == 'epochs' else 1}, "
                              f"got {getattr(config, key)}")
    if config.threads is not None and config.threads < 1:
        raise ConfigError(f"threads must be >= 1, got {config.threads}")
    if config.num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {config.num_workers}")
    if config.lr < 0 or config.weight_decay < 0 or not 0 <= config.momentum < 1:
        raise ConfigError("lr and weight_decay must be >= 0 and momentum in [0, 1)")
    if not config.eval_ks or min(config.eval_ks) < 1:
        raise ConfigError(f"eval_ks must be a non-empty list of ints >= 1, got {config.eval_ks}")
    if config.milestones and min(config.milestones) < 1:
        raise ConfigError(f"milestones must be epochs >= 1, got {config.milestones}")
    if isinstance(config.devices, str) and config.devices != "auto":
        raise ConfigError(f"devices must be an int or 'auto', got {config.devices!r}")
    return config


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a :class:`ConfigError`.

    A ``base: other.yaml`` entry (path relative to the file) is read first and updated
    with the file's other keys, so the runs of one experiment can share their settings.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: "
                          f"{str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"'base' in {path} must be a file name, got {base!r}")
    return {**read_yaml(path.parent / base), **data}


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides``."""
    config = TrainConfig()
    if path is not None:
        config = merge(config, read_yaml(path), str(path))
    return merge(config, overrides, "the command line")


def save_config(config: TrainConfig, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
