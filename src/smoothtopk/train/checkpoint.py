"""Atomic checkpoint files: a killed or crashed run never leaves a half-written checkpoint.

Lightning's own writer stages the file in the system temporary folder and moves it into
place; when that folder is on another file system (``/tmp`` on tmpfs is common) the move
is a copy, which an interruption can leave half done. :class:`AtomicCheckpointIO` writes
the checkpoint to ``<path>.tmp`` in the destination folder, flushes it to disk, then
renames it over ``<path>`` (``os.replace``, atomic on POSIX and Windows).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


def write_atomic(data: bytes, path: str | Path) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O (``torch.save`` format) with atomic local writes."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomic(buffer.getvalue(), path)
