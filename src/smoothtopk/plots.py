"""Figures (matplotlib, Agg backend): run figures and the normalised level sets of a loss.

Run figures (written by ``smoothtopk train`` in ``RUN/figures/``):

* ``learning_curves.png``: train/val loss and train/val top-K per epoch;
* ``accuracy_by_frequency_bin.png``: test top-K accuracy by bin of training images per
  class (the seed's table of mean bin accuracy, as bars);
* ``lorenz_curve.png``: Lorenz curve of the training class counts.

Level sets (``smoothtopk plot level-sets``): for ``L = 3`` classes and label ``y = 3``, the
loss ``s -> l(s, y)`` on the plane ``s_1 + s_2 + s_3 = 0`` of score vectors (every loss
drawn here is invariant to adding a constant to all scores), divided by its maximum on
the drawn square so that levels lie in ``[0, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

LEVEL_SET_LOSSES = ("ce", "topk_error", "hinge", "cvx_hinge", "cal_hinge", "bal_topk")
# The panels of the seed's slides: (loss, epsilon).
SEED_PANELS = (("ce", None), ("topk_error", None), ("hinge", None), ("cal_hinge", None),
               ("bal_topk", 0.3), ("bal_topk", 1.0))
_TITLES = {"ce": "cross-entropy", "topk_error": "0/1 top-K", "hinge": "top-K hinge (Lapin)",
           "cvx_hinge": "convex top-K hinge (Lapin)", "cal_hinge": "calibrated top-K hinge",
           "bal_topk": "noised balanced top-K"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------- run figures
def plot_run_figures(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write the three figures of a run from its ``metrics.json`` content."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = int(results["k"])
    paths = [out_dir / "learning_curves.png", out_dir / "accuracy_by_frequency_bin.png",
             out_dir / "lorenz_curve.png"]
    plot_learning_curves(results["epochs"], k, paths[0])
    plot_frequency_bins(results["test"]["by_frequency_bin"], k, paths[1])
    plot_lorenz_curve(results["train_class_counts"], paths[2])
    return paths


def plot_learning_curves(history: Sequence[dict[str, Any]], k: int, path: str | Path) -> None:
    """Loss (left) and top-K / macro-average top-K accuracy (right) per epoch."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [r["epoch"] + 1 for r in history]
    for split, style in (("train", "-"), ("val", "--")):
        ax_loss.plot(epochs, [r.get(f"{split}_loss") for r in history], style, label=split)
    for key, label in ((f"train_top{k}", f"train top-{k}"), (f"val_top{k}", f"val top-{k}"),
                       (f"val_macro_top{k}", f"val macro top-{k}")):
        if history and key in history[0]:
            ax_acc.plot(epochs, [100 * r[key] for r in history], label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title=f"top-{k} accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_frequency_bins(bins: dict[str, Any], k: int, path: str | Path) -> None:
    """Bars: top-1 and top-K accuracy of the test samples by training-frequency bin."""
    plt = _pyplot()
    ks = bins["k"] if isinstance(bins["k"], list) else [bins["k"]]
    accuracy = bins["accuracy"] if isinstance(bins["k"], list) else [bins["accuracy"]]
    shown = sorted({1, k} & set(ks))
    labels = bins["labels"]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    width = 0.8 / len(shown)
    for j, kk in enumerate(shown):
        values = [math.nan if v is None else 100 * v for v in accuracy[ks.index(kk)]]
        xs = [i + (j - (len(shown) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, values, width, label=f"top-{kk}")
    ax.set_xticks(range(len(labels)), [f"{lab}\n({n} cl.)" for lab, n in
                                       zip(labels, bins["num_classes"], strict=True)])
    ax.set(xlabel="training images per class", ylabel="test accuracy (%)",
           title="accuracy by class frequency", ylim=(0, 100))
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def lorenz_points(class_counts: Sequence[int]) -> tuple[list[float], list[float]]:
    """Cumulative share of classes (x) and of samples (y), rarest classes first."""
    counts = sorted(float(c) for c in class_counts)
    total = sum(counts) or 1.0
    xs, ys, acc = [0.0], [0.0], 0.0
    for i, c in enumerate(counts, start=1):
        acc += c
        xs.append(i / len(counts))
        ys.append(acc / total)
    return xs, ys


def plot_lorenz_curve(class_counts: Sequence[int], path: str | Path) -> None:
    plt = _pyplot()
    xs, ys = lorenz_points(class_counts)
    at80 = next(y for x, y in zip(xs, ys, strict=True) if x >= 0.8)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(xs, ys, label="training set")
    ax.plot([0, 1], [0, 1], "k:", label="balanced")
    ax.axvline(0.8, color="grey", lw=0.8)
    ax.set(xlabel="share of classes (rarest first)", ylabel="share of images",
           title=f"Lorenz curve: 80% rarest classes hold {100 * at80:.0f}%")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- level sets
def plane_scores(resolution: int = 201, extent: float = 3.0) -> tuple[Tensor, Tensor, Tensor]:
    """Grid ``(u, v)`` on the plane ``sum(s) = 0`` and the score vectors ``(R*R, 3)``.

    ``s = u e_u + v e_v`` with ``e_u = (1, -1, 0)/sqrt 2``, ``e_v = (1, 1, -2)/sqrt 6``, so
    the label ``y = 3`` points down (``-v``).
    """
    axis = torch.linspace(-extent, extent, resolution, dtype=torch.float64)
    v, u = torch.meshgrid(axis, axis, indexing="ij")
    e_u = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64) / math.sqrt(2)
    e_v = torch.tensor([1.0, 1.0, -2.0], dtype=torch.float64) / math.sqrt(6)
    scores = u.reshape(-1, 1) * e_u + v.reshape(-1, 1) * e_v
    return u, v, scores


def level_set_values(
    loss: str, k: int = 2, *, epsilon: float = 1.0, n_samples: int = 30, seed: int = 0,
    resolution: int = 201, extent: float = 3.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(u, v, value)``: the loss at ``y = 3`` (index 2) on the grid, divided by its max.

    ``loss`` is one of :data:`LEVEL_SET_LOSSES`. The noised loss uses the same ``B =
    n_samples`` noise vectors at every point of the grid, so the picture is that of one
    Monte-Carlo estimate (as on the seed's slides, ``B = 30``).
    """
    from . import functional as F

    if loss not in LEVEL_SET_LOSSES:
        raise ValueError(f"loss must be one of {LEVEL_SET_LOSSES}, got {loss!r}")
    u, v, scores = plane_scores(resolution, extent)
    target = torch.full((scores.shape[0],), 2, dtype=torch.int64)
    if loss == "ce":
        values = torch.nn.functional.cross_entropy(scores, target, reduction="none")
    elif loss == "topk_error":
        values = F.topk_error(scores, target, k, reduction="none")
    elif loss == "hinge":
        values = F.topk_hinge_loss(scores, target, k, reduction="none")
    elif loss == "cvx_hinge":
        values = F.topk_cvx_hinge_loss(scores, target, k, reduction="none")
    elif loss == "cal_hinge":
        values = F.calibrated_topk_hinge_loss(scores, target, k, reduction="none")
    else:
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(n_samples, 1, 3, generator=generator, dtype=torch.float64)
        values = F.noised_topk_loss(scores, target, k=k, epsilon=epsilon, n_samples=n_samples,
                                    noise=z.expand(n_samples, *scores.shape),
                                    reduction="none")
    values = values.detach().to(torch.float64)
    top = float(values.max())
    if top > 0:
        values = values / top
    return u, v, values.reshape(u.shape)


def plot_level_sets(
    panels: Sequence[tuple[str, float | None]], path: str | Path, k: int = 2, *,
    n_samples: int = 30, seed: int = 0, resolution: int = 201, extent: float = 3.0,
) -> Path:
    """One panel per ``(loss, epsilon)``; ``epsilon`` is used by the noised loss only."""
    plt = _pyplot()
    n = len(panels)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.6 * rows), squeeze=False)
    directions = torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(6)],
                               [-1 / math.sqrt(2), 1 / math.sqrt(6)],
                               [0.0, -2 / math.sqrt(6)]])
    image = None
    for ax, (loss, epsilon) in zip(axes.flat, panels, strict=False):
        u, v, values = level_set_values(loss, k, epsilon=epsilon or 1.0, n_samples=n_samples,
                                        seed=seed, resolution=resolution, extent=extent)
        image = ax.contourf(u.numpy(), v.numpy(), values.numpy(),
                            levels=[i / 10 for i in range(11)], cmap="viridis")
        ax.contour(u.numpy(), v.numpy(), values.numpy(), levels=[i / 10 for i in range(1, 10)],
                   colors="white", linewidths=0.4)
        for i, (du, dv) in enumerate(directions.tolist()):
            ax.text(0.85 * extent * du, 0.85 * extent * dv, f"$s_{i + 1}$", ha="center",
                    va="center", color="white", fontsize=9)
            ax.plot([0, 0.7 * extent * du], [0, 0.7 * extent * dv], color="white", lw=0.6)
        title = _TITLES[loss]
        if loss == "bal_topk":
            title += f", ε={epsilon or 1.0:g}, B={n_samples}"
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"normalised level sets, L = 3, K = {k}, y = 3", fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
