"""One printed line per epoch (``progress: epoch``), for logs and multi-run experiments."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl


class EpochLine(pl.Callback):
    """Print ``PREFIX epoch e/E  train loss  val <monitor>  seconds`` after every epoch."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not trainer.is_global_zero or not pl_module.history:
            return
        record = pl_module.history[-1]
        monitor = pl_module.monitor
        print(f"{self.prefix}epoch {record['epoch'] + 1}/{trainer.max_epochs}  "
              f"train loss {record['train_loss']:.4f}  "
              f"{monitor} {100 * record[monitor]:.2f}%  ({record['time_s']:.1f} s)",
              flush=True)
