"""Lightning module: any classifier + any loss, SGD/Nesterov, step decay, top-K metrics.

Validation runs every epoch with the streaming :class:`~smoothtopk.metrics.TopKMetrics`
(top-K and macro-average top-K); under DDP their states are summed across processes by
torchmetrics, so the figures are those of the whole split. The per-epoch history
(train/val curves, learning rate, wall time) lives in the module and travels in the
checkpoints, so a resumed run continues the same curves.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from ..metrics import TopKMetrics

MONITOR_KEYS = {"topk": "top{k}", "top1": "top1", "mean_topk": "macro_top{k}",
                "mean_top1": "macro_top1"}


def monitor_key(monitor: str, k: int) -> str:
    """Name of the logged validation metric for ``monitor`` in :data:`MONITOR_KEYS`."""
    return "val_" + MONITOR_KEYS[monitor].format(k=k)


class TopKClassifier(pl.LightningModule):
    """Train ``model`` with ``loss``; evaluate top-K for every K in ``eval_ks``.

    Args:
        model: maps a batch ``x`` to scores ``(N, C)``.
        loss: ``loss(scores, target)`` -> scalar (any loss of :mod:`smoothtopk.losses`).
        num_classes: ``C``.
        k: the K of the run (``top{k}`` and ``macro_top{k}`` are always evaluated).
        eval_ks: further K values to evaluate (those > C are dropped).
        lr, momentum, weight_decay: SGD with Nesterov momentum (when momentum > 0).
        milestones, lr_decay: the learning rate is multiplied by ``lr_decay`` at each
            milestone epoch.
        monitor: validation metric that selects the best checkpoint, one of
            ``topk, top1, mean_topk, mean_top1``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        num_classes: int,
        k: int = 5,
        eval_ks: Sequence[int] = (1, 3, 5, 10),
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        milestones: Sequence[int] = (),
        lr_decay: float = 0.1,
        monitor: str = "mean_topk",
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.num_classes = num_classes
        self.k = k
        self.ks = tuple(sorted({kk for kk in (1, k, *eval_ks) if kk <= num_classes}))
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.milestones, self.lr_decay = list(milestones), lr_decay
        self.monitor = monitor_key(monitor, k)
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.train_metrics = TopKMetrics(num_classes, ks=tuple(sorted({1, k})))
        self.val_metrics = TopKMetrics(num_classes, ks=self.ks)
        self.history: list[dict[str, float]] = []
        self.collect_predictions = False
        self.collected: dict[str, Tensor] = {}
        self._outputs: list[tuple[Tensor, Tensor]] = []
        self._epoch_start = 0.0
        self._epoch_lr = lr
        self.run_config: dict[str, Any] | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(
            self.parameters(), lr=self.lr, momentum=self.momentum,
            nesterov=self.momentum > 0, weight_decay=self.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=self.milestones, gamma=self.lr_decay
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "epoch"}}

    # --- training -------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        scores = self(x)
        loss = self.loss(scores, y)
        self.train_loss.update(loss.detach())
        self.train_metrics.update(scores.detach().float(), y)
        return loss

    # --- evaluation -----------------------------------------------------------------
    def _eval_step(self, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch
        scores = self(x).float()
        self.val_loss.update(self.loss(scores, y))
        self.val_metrics.update(scores, y)
        if self.collect_predictions:
            self._outputs.append((scores.detach(), y))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def _compute_eval(self, prefix: str) -> dict[str, float]:
        """Reduce (across processes) and reset the evaluation metrics; log them."""
        values = self.val_metrics.compute()
        out = {f"{prefix}_loss": self.val_loss.compute()}
        for kk in self.ks:
            out[f"{prefix}_top{kk}"] = values[f"top{kk}"]
            out[f"{prefix}_macro_top{kk}"] = values[f"macro_top{kk}"]
        self.val_metrics.reset()
        self.val_loss.reset()
        # already reduced across processes by torchmetrics: no sync_dist needed
        shown = prefix + self.monitor[len("val"):]
        self.log_dict({key: v for key, v in out.items() if key != shown}, prog_bar=False)
        self.log(shown, out[shown], prog_bar=True)
        if self.collect_predictions:
            self._store_outputs()
        return {key: float(value) for key, value in out.items()}

    def on_validation_epoch_end(self) -> None:
        values = self._compute_eval("val")
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        train_values = self.train_metrics.compute()
        record = {"epoch": int(self.current_epoch),
                  "lr": self._epoch_lr,
                  "train_loss": float(self.train_loss.compute())}
        record.update({f"train_{name}": float(value) for name, value in train_values.items()
                       if name.startswith(("top", "macro_top"))})
        self.train_metrics.reset()
        self.train_loss.reset()
        record.update(values)
        record["time_s"] = time.perf_counter() - self._epoch_start
        self.history.append(record)

    def on_test_epoch_end(self) -> None:
        self._compute_eval("test")

    def _store_outputs(self) -> None:
        """Concatenate this process's outputs and gather them in dataset order.

        Evaluation loaders are split across ``W`` processes without padding, sample ``i``
        going to process ``i mod W`` (see :mod:`smoothtopk.train.loaders`), so the gathered
        rows are interleaved back into the order of the dataset.
        """
        scores = torch.cat([s for s, _ in self._outputs]) if self._outputs else \
            torch.empty(0, self.num_classes, device=self.device)
        targets = torch.cat([t for _, t in self._outputs]) if self._outputs else \
            torch.empty(0, dtype=torch.long, device=self.device)
        self._outputs = []
        world = self.trainer.world_size
        if world > 1:
            scores, targets = (_gather_interleaved(self, t) for t in (scores, targets))
        self.collected = {"logits": scores.float().cpu(), "targets": targets.long().cpu()}

    # --- checkpoint content -----------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["smoothtopk_history"] = list(self.history)
        if self.run_config is not None:
            checkpoint["smoothtopk_config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get("smoothtopk_history", []))


def _gather_interleaved(module: pl.LightningModule, local: Tensor) -> Tensor:
    """All-gather rows of different counts per process; row j of process r is item r + jW."""
    world = module.trainer.world_size
    size = torch.tensor([local.shape[0]], device=local.device)
    sizes = module.all_gather(size).reshape(world).tolist()
    longest = max(sizes)
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    gathered = module.all_gather(padded)  # (world, longest, ...)
    out = local.new_empty((sum(sizes), *local.shape[1:]))
    for rank, n in enumerate(sizes):
        out[rank::world] = gathered[rank, :n]
    return out
