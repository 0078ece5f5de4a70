"""Markdown tables from run folders, in the layout of the seed's result tables.

Losses (run labels) are the columns, K the rows; a cell is the top-K (or macro-average
top-K) accuracy in percent of the best checkpoint on the chosen split, as
``mean ± std`` (sample standard deviation) when several seeds of a label ran. The best
mean of each row is in bold.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import ConfigError, read_yaml
from .run import read_metrics

METRICS = ("macro", "top")


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """``{"label", "seed", "metrics"}`` of a finished run folder."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    config = read_yaml(run_dir / "config.yaml")
    label = config.get("label") or config.get("loss", run_dir.name)
    return {"label": str(label), "seed": config.get("seed"), "metrics": metrics,
            "dir": str(run_dir)}


def results_table(
    runs: Sequence[dict[str, Any]],
    ks: Sequence[int] = (1, 3, 5, 10),
    metric: str = "macro",
    split: str = "test",
) -> str:
    """Markdown table: one column per label (first-seen order), one row per K."""
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {METRICS}, got {metric!r}")
    if split not in ("val", "test"):
        raise ConfigError(f"split must be 'val' or 'test', got {split!r}")
    if not runs:
        raise ConfigError("no run to report")
    labels: list[str] = []
    for run in runs:
        if run["label"] not in labels:
            labels.append(run["label"])
    key = "macro_top{k}" if metric == "macro" else "top{k}"
    cells: dict[tuple[int, str], list[float]] = {}
    for run in runs:
        figures = run["metrics"][split]
        for k in ks:
            value = figures.get(key.format(k=k))
            if value is not None:
                cells.setdefault((k, run["label"]), []).append(100.0 * value)
    lines = ["| K | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for k in ks:
        means = {lab: statistics.fmean(cells[(k, lab)]) for lab in labels if (k, lab) in cells}
        best = max(means.values()) if means else None
        row = []
        for lab in labels:
            values = cells.get((k, lab))
            if not values:
                row.append("NA")
                continue
            text = f"{means[lab]:.2f}"
            if len(values) > 1:
                text += f" ± {statistics.stdev(values):.2f}"
            row.append(f"**{text}**" if means[lab] == best and len(means) > 1 else text)
        lines.append(f"| {k} | " + " | ".join(row) + " |")
    seeds = sorted({len(v) for v in cells.values()})
    what = "macro-average top-K" if metric == "macro" else "top-K"
    note = f"{what} accuracy (%) on the {split} split, best checkpoint"
    if seeds and seeds[-1] > 1:
        note += f"; mean ± std over {'/'.join(map(str, seeds))} seeds"
    return "\n".join(lines) + f"\n\n{note}.\n"


def report(run_dirs: Sequence[str | Path], ks: Sequence[int] = (1, 3, 5, 10),
           metric: str = "macro", split: str = "test") -> str:
    """Table of the finished runs in ``run_dirs`` (see :func:`results_table`)."""
    return results_table([load_run(d) for d in run_dirs], ks, metric, split)
