"""Adapter from a :mod:`smoothtopk.train.datamodules` data module to the Lightning trainer.

Training batches go through Lightning's own distributed sampler. Validation and test
batches are split across processes *without padding* (sample ``i`` to process
``i mod W``), so that metrics summed across processes count every sample exactly once and
equal the single-process figures; gathered predictions are put back in dataset order by
:class:`~smoothtopk.train.module.TopKClassifier`.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader


class RunDataModule(pl.LightningDataModule):
    """Wrap ``datamodule`` (already ``setup``); unpadded evaluation splits under DDP."""

    def __init__(self, datamodule: Any) -> None:
        super().__init__()
        self.inner = datamodule

    def train_dataloader(self) -> Any:
        return self.inner.train_dataloader()

    def val_dataloader(self) -> Any:
        return self._unpadded(self.inner.val_dataloader())

    def test_dataloader(self) -> Any:
        return self._unpadded(self.inner.test_dataloader())

    def _unpadded(self, loader: Any) -> Any:
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return loader
        if not isinstance(loader, DataLoader) or loader.batch_size is None:
            raise TypeError("distributed evaluation needs a DataLoader with a batch_size")
        sampler = UnrepeatedDistributedSampler(
            loader.dataset, num_replicas=trainer.world_size, rank=trainer.global_rank,
            shuffle=False,
        )
        return type(loader)(  # keep the data module's loader class (e.g. skipping bad images)
            loader.dataset, batch_size=loader.batch_size, sampler=sampler,
            num_workers=loader.num_workers, collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
        )
