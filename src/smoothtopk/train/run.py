"""One training run, from a :class:`~smoothtopk.train.config.TrainConfig` to a run folder.

Run folder layout::

    RUN/
      config.yaml             resolved configuration (every key)
      checkpoints/best.ckpt   best epoch by the monitored validation metric
      checkpoints/last.ckpt   last complete epoch (resume point)
      metrics.json            curves per epoch, val/test figures of the best checkpoint
      predictions_val.pt      {"logits": float32 (N, C), "targets": int64 (N,)}, best ckpt
      predictions_test.pt     same, test split
      figures/*.png           learning curves, accuracy by frequency bin, Lorenz curve
      logs/version_<i>/       the engine's per-epoch log (metrics.csv), one per session

Checkpoints are written atomically (:mod:`smoothtopk.train.checkpoint`: a temporary file
beside the target, then a rename), so an interrupted run leaves its last complete
checkpoint loadable.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, TrainConfig, merge, save_config

LOSS_HYPERPARAMETERS = ("k", "epsilon", "n_samples", "margin", "tau", "alpha", "gamma",
                        "max_margin", "scale")
CONFIG_KEY = "smoothtopk_config"


# ----------------------------------------------------------------------------- building
def build_datamodule(config: TrainConfig) -> Any:
    """The configured data module, prepared and set up (bad names/paths: ConfigError)."""
    from .datamodules import build_datamodule as build

    try:
        datamodule = build(config.data, root=config.data_root, batch_size=config.batch_size,
                           num_workers=config.num_workers, seed=config.seed,
                           **config.data_kwargs)
        datamodule.prepare_data()
        datamodule.setup("fit")
    except (ValueError, TypeError, OSError) as err:
        raise ConfigError(f"data {config.data!r}: {_one_line(err)}") from None
    return datamodule


def build_model(config: TrainConfig, num_classes: int, input_shape: Sequence[int]) -> Any:
    from ..models import build_model as build

    try:
        return build(config.model, num_classes=num_classes, input_shape=tuple(input_shape),
                     cosine_head=config.cosine_head, **config.model_kwargs)
    except (ValueError, TypeError, OSError) as err:
        raise ConfigError(f"model {config.model!r}: {_one_line(err)}") from None


def loss_kwargs(config: TrainConfig, class_counts: torch.Tensor | None) -> dict[str, Any]:
    """Keyword arguments for ``build_loss(config.loss, ...)``.

    The loss hyper-parameters that are set (not ``None``) are passed when the loss takes
    them; setting one that the loss does not take is an error (``k`` excepted, it has a
    default for every run). Class counts go to the losses that need them.
    """
    from ..losses import LOSSES, loss_requires_class_counts

    if config.loss not in LOSSES:
        raise ConfigError(f"unknown loss {config.loss!r}; known losses: {', '.join(LOSSES)}")
    params = inspect.signature(LOSSES[config.loss]).parameters
    kwargs: dict[str, Any] = {}
    for name in LOSS_HYPERPARAMETERS:
        value = getattr(config, name)
        if value is None:
            continue
        if name in params:
            kwargs[name] = value
        elif name != "k":
            accepted = [p for p in params if p in LOSS_HYPERPARAMETERS]
            raise ConfigError(f"loss {config.loss!r} does not take {name!r}; it takes "
                              f"{', '.join(accepted) or 'no hyper-parameter'}")
    kwargs.update(config.loss_kwargs)
    if loss_requires_class_counts(config.loss):
        kwargs["class_counts"] = class_counts
    return kwargs


def build_loss(config: TrainConfig, class_counts: torch.Tensor | None) -> Any:
    from ..losses import build_loss as build

    kwargs = loss_kwargs(config, class_counts)
    try:
        return build(config.loss, **kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"loss {config.loss!r}: {_one_line(err)}") from None


def build_module(config: TrainConfig, datamodule: Any) -> Any:
    from .module import TopKClassifier

    num_classes = int(datamodule.num_classes)
    if config.k > num_classes:
        raise ConfigError(f"k must be <= the number of classes ({num_classes}), got {config.k}")
    model = build_model(config, num_classes, datamodule.input_shape)
    loss = build_loss(config, datamodule.class_counts)
    return TopKClassifier(
        model, loss, num_classes=num_classes, k=config.k, eval_ks=config.eval_ks,
        lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
        milestones=config.milestones, lr_decay=config.lr_decay, monitor=config.monitor,
    )


def build_trainer(config: TrainConfig, run_dir: Path | None, callbacks: Sequence[Any],
                  max_epochs: int | None = None, prefix: str = "") -> Any:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    from .checkpoint import AtomicCheckpointIO

    if config.progress != "bar":  # start-up and checkpoint-restoring notices
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    callbacks = list(callbacks)
    if config.progress == "bar":
        callbacks.append(TQDMProgressBar(refresh_rate=10, leave=True))
    elif config.progress == "epoch":
        from .progress import EpochLine

        callbacks.append(EpochLine(prefix))
    logger: Any = False
    if run_dir is not None:
        logger = CSVLogger(save_dir=str(run_dir), name="logs")  # a version per session
    try:
        return pl.Trainer(
            max_epochs=max_epochs if max_epochs is not None else config.epochs,
            accelerator=config.accelerator, devices=config.devices,
            num_nodes=config.num_nodes, strategy=config.strategy,
            precision=config.precision, callbacks=callbacks, logger=logger,
            enable_progress_bar=config.progress == "bar", enable_model_summary=False,
            num_sanity_val_steps=0, log_every_n_steps=10**9, plugins=[AtomicCheckpointIO()],
            default_root_dir=str(run_dir) if run_dir is not None else None,
        )
    except Exception as err:  # Lightning's MisconfigurationException and ValueErrors
        raise ConfigError(f"engine settings: {_one_line(err)}") from None


# ----------------------------------------------------------------------------- training
def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Any] = (),
    prefix: str = "",
) -> Path:
    """Train, select the best epoch, evaluate val and test with it; write the run folder.

    With ``resume=True`` the run continues from ``OUT/checkpoints/last.ckpt`` (same
    curves, optimiser and scheduler state, best-so-far). An existing run folder is
    otherwise an error unless ``overwrite=True``. ``prefix`` starts the per-epoch lines
    of ``progress: epoch``. Returns the run folder.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    if config.epochs < 1:
        raise ConfigError(f"epochs must be >= 1 to train, got {config.epochs}")
    run_dir = Path(config.out)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume and not last.is_file():
        raise ConfigError(f"cannot resume: no checkpoint {last}")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    datamodule = build_datamodule(config)
    module = build_module(config, datamodule)
    if resume:
        check_compatible(module, load_checkpoint(last), last)
    checkpoint = ModelCheckpoint(
        dirpath=str(ckpt_dir), filename="best", monitor=module.monitor, mode="max",
        save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False,
    )
    # Lightning's save_last only writes when the best one was written in the same step:
    # a second, unmonitored callback rewrites last.ckpt after every epoch.
    latest = ModelCheckpoint(dirpath=str(ckpt_dir), filename="last", save_top_k=1,
                             enable_version_counter=False)
    trainer = build_trainer(config, run_dir, [checkpoint, latest, *callbacks], prefix=prefix)
    # Only the main process checks and prepares the folder: under DDP the other processes
    # are started later (inside fit) and find it already made.
    if trainer.is_global_zero:
        if not resume and run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
            raise ConfigError(f"run folder {run_dir} exists and is not empty; pass --resume "
                              "to continue it, --overwrite to replace it, or another --out")
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    module.run_config = config.to_dict()
    from .loaders import RunDataModule

    data = RunDataModule(datamodule)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)
    fit_time = time.perf_counter() - start
    history = list(module.history)
    best = checkpoint.best_model_path or str(last)
    scores = [r[module.monitor] for r in history]
    best_epoch = history[scores.index(max(scores))]["epoch"] if history else None
    module.collect_predictions = True
    trainer.validate(module, datamodule=data, ckpt_path=best, verbose=False)
    val = module.collected
    trainer.test(module, datamodule=data, ckpt_path=best, verbose=False)
    test = module.collected
    if trainer.is_global_zero:
        torch.save(val, run_dir / "predictions_val.pt")
        torch.save(test, run_dir / "predictions_test.pt")
        counts = datamodule.class_counts
        results = {
            "num_classes": module.num_classes,
            "k": config.k,
            "ks": list(module.ks),
            "monitor": module.monitor,
            "best_epoch": best_epoch,
            "best_score": _float(checkpoint.best_model_score),
            "best_checkpoint": str(Path(best).relative_to(run_dir.resolve()))
            if Path(best).resolve().is_relative_to(run_dir.resolve()) else best,
            "train_class_counts": [int(c) for c in counts.tolist()],
            "data_info": dict(datamodule.info),  # e.g. the label-noise report
            "epochs": history,
            "wall_time_s": sum(r["time_s"] for r in history),
            "fit_wall_time_s": fit_time,
            "val": summarize_predictions(val, counts, module.ks),
            "test": summarize_predictions(test, counts, module.ks),
        }
        write_json(results, run_dir / "metrics.json")
        from ..plots import plot_run_figures

        plot_run_figures(results, run_dir / "figures")
    return run_dir


def summarize_predictions(
    predictions: dict[str, torch.Tensor], class_counts: torch.Tensor, ks: Sequence[int]
) -> dict[str, Any]:
    """Top-K, macro top-K, per-class top-K and accuracy by training-frequency bin."""
    from ..metrics import (
        accuracy_by_frequency_bin,
        macro_topk_accuracy,
        per_class_topk_accuracy,
        topk_accuracy,
    )

    logits, targets = predictions["logits"], predictions["targets"]
    ks = list(ks)
    top = topk_accuracy(logits, targets, ks)
    macro = macro_topk_accuracy(logits, targets, ks)
    per_class = per_class_topk_accuracy(logits, targets, ks)
    out: dict[str, Any] = {"num_samples": int(targets.numel())}
    for i, k in enumerate(ks):
        out[f"top{k}"] = float(top[i])
        out[f"macro_top{k}"] = float(macro[i])
    for i, k in enumerate(ks):
        out[f"per_class_top{k}"] = per_class[i].tolist()
    out["by_frequency_bin"] = accuracy_by_frequency_bin(logits, targets, class_counts,
                                                        ks).to_dict()
    return out


# ----------------------------------------------------------------------------- evaluation
def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU; anything but a Lightning checkpoint is a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # pickle, zip and torch errors all mean "not a checkpoint"
        raise ConfigError(f"cannot read checkpoint {path}: {_one_line(err)}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{path} is not a training checkpoint (no state_dict)")
    return checkpoint


def check_compatible(module: Any, checkpoint: dict[str, Any], path: Path) -> None:
    """The checkpoint's weights must have the module's names and shapes."""
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise ConfigError(
            f"checkpoint {path} is incompatible with the model: "
            f"{len(missing)} missing and {len(unexpected)} unexpected weights (e.g. {first!r})"
        )
    for key, shape in ours.items():
        if theirs[key] != shape:
            raise ConfigError(f"checkpoint {path} is incompatible with the model: {key!r} has "
                              f"shape {theirs[key]} in the checkpoint, {shape} here")


def config_from_checkpoint(checkpoint: dict[str, Any], path: Path) -> TrainConfig:
    stored = checkpoint.get(CONFIG_KEY)
    if not isinstance(stored, dict):
        raise ConfigError(f"{path} was not written by smoothtopk train (no configuration)")
    return merge(TrainConfig(), stored, f"checkpoint {path}")


def evaluate(
    checkpoint_path: str | Path,
    split: str = "test",
    overrides: dict[str, Any] | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on the ``val`` or ``test`` split of its (or another) dataset.

    ``overrides`` may change the data (``data``, ``data_root``, ``data_kwargs``,
    ``batch_size``) and the engine (``devices``, ``accelerator``, ...). Returns the
    figures of :func:`summarize_predictions`; with ``out`` they are also written there
    (``metrics_<split>.json``, ``predictions_<split>.pt``).
    """
    if split not in ("val", "test"):
        raise ConfigError(f"split must be 'val' or 'test', got {split!r}")
    path = Path(checkpoint_path)
    checkpoint = load_checkpoint(path)
    config = merge(config_from_checkpoint(checkpoint, path), dict(overrides or {}),
                   "the command line")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    datamodule = build_datamodule(config)
    module = build_module(config, datamodule)
    check_compatible(module, checkpoint, path)
    module.load_state_dict(checkpoint["state_dict"])
    module.collect_predictions = True
    trainer = build_trainer(config, None, [], max_epochs=1)
    from .loaders import RunDataModule

    data = RunDataModule(datamodule)
    if split == "val":
        trainer.validate(module, datamodule=data, verbose=False)
    else:
        trainer.test(module, datamodule=data, verbose=False)
    results = summarize_predictions(module.collected, datamodule.class_counts, module.ks)
    if out is not None and trainer.is_global_zero:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(module.collected, out / f"predictions_{split}.pt")
        write_json(results, out / f"metrics_{split}.json")
    return results


# ----------------------------------------------------------------------------- files
def write_json(data: dict[str, Any], path: Path) -> None:
    """Write JSON atomically; NaN (e.g. accuracy of an absent class) becomes null."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_json_safe(data), indent=1))
    tmp.replace(path)


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a finished run folder (no metrics.json)")
    return json.loads(path.read_text())


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__

