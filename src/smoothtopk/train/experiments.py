"""Named experiments: the run configurations of one seed table, run over seeds, reported.

An experiment is a folder ``configs/<name>/`` holding ``_experiment.yaml`` (``title``,
``description``, and the table's ``ks``, ``metric`` (``macro`` or ``top``) and ``split``)
and one YAML file per run (usually ``base: _base.yaml`` plus the loss settings and a
``label``), taken in file-name order. ``reproduce`` trains every run for every seed in
``OUT/<name>/<label>/seed<s>/``; a finished run folder with the same resolved
configuration is reused, an interrupted one is resumed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import ConfigError, TrainConfig, load_config, read_yaml

DEFAULT_EXPERIMENT = "plantnet_synthetic"
_SPEC_KEYS = {"title", "description", "ks", "metric", "split"}


def configs_root() -> Path:
    """The ``configs/`` folder of the source tree (next to ``src/``)."""
    return Path(__file__).resolve().parents[3] / "configs"


def list_experiments(root: Path | None = None) -> list[str]:
    root = root or configs_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "_experiment.yaml").is_file())


def load_experiment(name: str, root: Path | None = None) -> dict[str, Any]:
    """The experiment's table settings and its run files ``[(stem, path), ...]``."""
    root = root or configs_root()
    folder = root / name
    if not (folder / "_experiment.yaml").is_file():
        known = ", ".join(list_experiments(root)) or "none found"
        raise ConfigError(f"unknown experiment {name!r} (in {root}); known: {known}")
    spec = read_yaml(folder / "_experiment.yaml")
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in {folder / '_experiment.yaml'}")
    runs = sorted(p for p in folder.glob("*.yaml") if not p.name.startswith("_"))
    if not runs:
        raise ConfigError(f"experiment {name!r} has no run file in {folder}")
    return {"name": name, "title": spec.get("title", name),
            "description": spec.get("description", ""), "ks": spec.get("ks", [1, 3, 5, 10]),
            "metric": spec.get("metric", "macro"), "split": spec.get("split", "test"),
            "runs": runs}


def run_configs(experiment: dict[str, Any], seeds: Sequence[int], out: Path,
                overrides: dict[str, Any]) -> list[TrainConfig]:
    """Resolved configuration of every (run file, seed), output folders filled in.

    Runs of a loss that is not registered in :data:`smoothtopk.losses.LOSSES` are left
    out (the list of losses grows with the package).
    """
    from ..losses import LOSSES

    configs = []
    for path in experiment["runs"]:
        for seed in seeds:
            base = load_config(path, **overrides, seed=seed)
            if base.loss not in LOSSES:
                continue
            label = base.label or path.stem
            run_out = out / experiment["name"] / label / f"seed{seed}"
            configs.append(load_config(path, **overrides, seed=seed, label=label,
                                       out=str(run_out)))
    return configs


def _state(config: TrainConfig) -> str:
    """``done`` (same config, finished), ``resume`` (same config, checkpoint) or ``new``."""
    run_dir = Path(config.out)
    if not (run_dir / "config.yaml").is_file():
        return "new"
    if read_yaml(run_dir / "config.yaml") != config.to_dict():
        return "new"
    if (run_dir / "metrics.json").is_file():
        return "done"
    return "resume" if (run_dir / "checkpoints" / "last.ckpt").is_file() else "new"


def reproduce(
    name: str = DEFAULT_EXPERIMENT,
    seeds: Sequence[int] = (0,),
    out: str | Path = "runs/reproduce",
    overrides: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    root: Path | None = None,
) -> str:
    """Run (or reuse) every run of experiment ``name`` for every seed; return its table.

    ``root`` is the folder of experiments (default: :func:`configs_root`).
    """
    from .report import load_run, results_table
    from .run import train

    experiment = load_experiment(name, root)
    overrides = {"progress": "epoch", **(overrides or {})}
    configs = run_configs(experiment, seeds, Path(out), overrides)
    skipped = len(experiment["runs"]) * len(seeds) - len(configs)
    log(f"{experiment['title']}: {len(configs)} runs -> {Path(out) / name}"
        + (f" ({skipped} left out: loss not available)" if skipped else ""))
    start = time.perf_counter()
    for i, config in enumerate(configs, start=1):
        prefix = f"[{i}/{len(configs)}] {config.label} seed {config.seed}: "
        state = _state(config)
        if state == "done":
            log(prefix + "finished earlier, reused")
            continue
        t0 = time.perf_counter()
        train(config, resume=state == "resume", overwrite=True, prefix=prefix)
        log(prefix + f"done in {time.perf_counter() - t0:.1f} s "
            f"(total {time.perf_counter() - start:.1f} s)")
    table = results_table([load_run(c.out) for c in configs], experiment["ks"],
                          experiment["metric"], experiment["split"])
    report_path = Path(out) / name / "report.md"
    report_path.write_text(f"# {experiment['title']}\n\n{experiment['description']}\n\n"
                           f"{table}")
    log(f"\n{experiment['title']} ({time.perf_counter() - start:.0f} s, report: "
        f"{report_path})\n\n{table}")
    return table
