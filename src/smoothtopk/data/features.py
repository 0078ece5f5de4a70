"""Precomputed embeddings stored as ``.npz`` files, one per split.

Layout: ``root/train.npz``, ``root/val.npz``, ``root/test.npz``, each with ``x`` float
``(N, d)`` and ``y`` integer ``(N,)`` labels in ``[0, C)``; optional ``class_names``
(string array of length ``C``, read from ``train.npz``). Without ``class_names``, ``C`` is
one more than the largest label of any split and the names are ``"0" .. "C-1"``. Files
are read with ``allow_pickle=False``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .splits import ArraySplits

SPLITS = ("train", "val", "test")


def _read_split(path: Path) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
    with np.load(path, allow_pickle=False) as f:
        if "x" not in f or "y" not in f:
            raise ValueError(f"{path} must contain arrays 'x' (N, d) and 'y' (N,), "
                             f"found {sorted(f.files)}")
        x, y = f["x"], f["y"]
        names = f["class_names"] if "class_names" in f else None
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{path}: 'x' must be a float array (N, d), got {x.dtype} {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: 'y' must be an integer array ({x.shape[0]},), "
                         f"got {y.dtype} {y.shape}")
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64)), names


def load_embeddings(root: str | Path) -> ArraySplits:
    """Load ``root/{train,val,test}.npz`` (see the module docstring for the layout)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root={str(root)!r} is not a folder; expected a folder holding "
                         f"{', '.join(s + '.npz' for s in SPLITS)}")
    parts = {}
    for split in SPLITS:
        path = root / f"{split}.npz"
        if not path.is_file():
            raise ValueError(f"missing split {split!r}: expected the file {path}")
        parts[split] = _read_split(path)
    dims = {s: p[0].shape[1] for s, p in parts.items()}
    if len(set(dims.values())) != 1:
        raise ValueError(f"every split must have the same feature size, got {dims}")
    names = parts["train"][2]
    max_label = max(int(p[1].max()) if p[1].numel() else -1 for p in parts.values())
    min_label = min(int(p[1].min()) if p[1].numel() else 0 for p in parts.values())
    class_names = ([str(n) for n in names] if names is not None
                   else [str(c) for c in range(max_label + 1)])
    if min_label < 0 or max_label >= len(class_names):
        raise ValueError(f"labels must be in [0, {len(class_names)}), found values in "
                         f"[{min_label}, {max_label}]")
    (x_tr, y_tr, _), (x_va, y_va, _), (x_te, y_te, _) = (parts[s] for s in SPLITS)
    return ArraySplits(x_tr, y_tr, x_va, y_va, x_te, y_te, class_names)
