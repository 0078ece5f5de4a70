"""The ``smoothtopk`` command: train, test, report, reproduce, sets, plot.

Bad input (unknown names, unknown configuration keys, missing data, incompatible
checkpoints, bad arguments) is reported as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .train.config import FIELDS, ConfigError, TrainConfig, load_config

_HELP = {
    "data": "dataset name (synthetic, synthetic_images, cifar100, plantnet300k, "
            "fashion_mnist, fashion_mnist_lt, folder, embeddings)",
    "data_root": "dataset folder on disk",
    "batch_size": "batch size (per process)",
    "num_workers": "data loading worker processes",
    "model": "model name (mlp, linear, small_cnn, densenet_bc_40_40, resnet18, resnet50)",
    "cosine_head": "cosine classifier head (L2-normalised features and weights)",
    "loss": "loss name (ce, focal, ldam, hinge, cvx_hinge, cal_hinge, bal_topk, imbal_topk, "
            "smooth_topk, smooth_top1)",
    "k": "the K of top-K (loss and monitored metric)",
    "epsilon": "noise scale of the noised top-K losses",
    "n_samples": "number B of noise samples of the noised top-K losses",
    "margin": "margin of the hinge losses",
    "tau": "temperature of the smoothed top-K SVM loss",
    "alpha": "margin of the smoothed top-K SVM loss",
    "gamma": "focusing parameter of the focal loss",
    "max_margin": "largest class margin (rarest class) of LDAM and the imbalanced loss",
    "scale": "score scale of LDAM and the imbalanced loss",
    "epochs": "number of epochs",
    "lr": "initial learning rate (SGD, Nesterov momentum)",
    "momentum": "momentum (Nesterov when > 0)",
    "weight_decay": "weight decay",
    "milestones": "epochs at which the learning rate is multiplied by --lr-decay",
    "lr_decay": "learning-rate factor at each milestone",
    "monitor": "validation metric selecting the best checkpoint: topk, top1, mean_topk, "
               "mean_top1",
    "eval_ks": "K values evaluated (those <= number of classes)",
    "seed": "random seed",
    "threads": "CPU threads of torch (default: torch's choice; 1 is fastest for small "
               "models on a busy machine)",
    "accelerator": "cpu, gpu, auto, ...",
    "devices": "number of devices (processes) per node, or auto",
    "num_nodes": "number of nodes (multi-node DDP)",
    "strategy": "Lightning strategy (auto, ddp, ...)",
    "precision": "32-true, 16-mixed (AMP), bf16-mixed",
    "progress": "progress display: bar, epoch (one line per epoch) or none",
    "out": "run folder",
    "label": "name of the run in reports (default: the loss name)",
}
_DICT_FLAGS = {"data_kwargs": "data_arg", "model_kwargs": "model_arg", "loss_kwargs": "loss_arg"}


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (with a pointer to --help), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _devices(text: str) -> int | str:
    return text if text == "auto" else int(text)


def _key_value(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def _add_config_flags(parser: argparse.ArgumentParser, keys: Sequence[str]) -> None:
    """One flag per configuration key (only the given flags override the config)."""
    types = {f: type(getattr(TrainConfig(), f)) for f in FIELDS}
    for key in keys:
        flag = "--" + key.replace("_", "-")
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": _HELP.get(key)}
        if key in _DICT_FLAGS:
            parser.add_argument("--" + _DICT_FLAGS[key].replace("_", "-"), action="append",
                                type=_key_value, metavar="KEY=VALUE", dest=key,
                                default=argparse.SUPPRESS,
                                help=f"extra keyword for {key} (repeatable; YAML value)")
            continue
        if key == "cosine_head":
            kw["action"] = argparse.BooleanOptionalAction
        elif key in ("milestones", "eval_ks"):
            kw.update(nargs="*", type=int)
        elif key == "devices":
            kw["type"] = _devices
        elif key in ("epsilon", "margin", "tau", "alpha", "gamma", "max_margin", "scale"):
            kw["type"] = float
        elif key in ("n_samples", "threads") or types[key] is int:
            kw["type"] = int
        elif types[key] is float:
            kw["type"] = float
        parser.add_argument(flag, **kw)


def _overrides(args: argparse.Namespace, keys: Sequence[str]) -> dict[str, Any]:
    values = {key: getattr(args, key) for key in keys if hasattr(args, key)}
    for key in _DICT_FLAGS:
        if key in values:
            values[key] = dict(values[key])
    return values


# ----------------------------------------------------------------------------- commands
def _cmd_train(args: argparse.Namespace) -> int:
    from .train.run import train

    overrides = _overrides(args, FIELDS)
    config_path = args.config
    if args.resume and config_path is None:
        out = overrides.get("out", TrainConfig.out)
        config_path = Path(out) / "config.yaml"
        if not config_path.is_file():
            raise ConfigError(f"cannot resume: {config_path} not found")
    config = load_config(config_path, **overrides)
    run_dir = train(config, resume=args.resume, overwrite=args.overwrite)
    _print_summary(run_dir)
    return 0


def _print_summary(run_dir: Path) -> None:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from .train.run import read_metrics

    if rank_zero_only.rank != 0:  # the other processes of a DDP run
        return
    metrics = read_metrics(run_dir)
    test = metrics["test"]
    figures = "  ".join(f"top-{k} {100 * test[f'top{k}']:.2f}%  "
                        f"macro top-{k} {100 * test[f'macro_top{k}']:.2f}%"
                        for k in metrics["ks"])
    print(f"run folder: {run_dir}\nbest epoch {metrics['best_epoch'] + 1} "
          f"({metrics['monitor']}); test: {figures}")


def _cmd_test(args: argparse.Namespace) -> int:
    from .train.run import evaluate

    keys = ("data", "data_root", "batch_size", "num_workers", "threads", "accelerator",
            "devices", "num_nodes", "strategy", "precision", "progress", "data_kwargs")
    overrides = _overrides(args, keys)
    results = evaluate(args.checkpoint, args.split, overrides, args.out)
    if results:
        ks = [int(key[3:]) for key in results if key.startswith("top")]
        print(f"{args.split} ({results['num_samples']} samples): " + "  ".join(
            f"top-{k} {100 * results[f'top{k}']:.2f}%  macro top-{k} "
            f"{100 * results[f'macro_top{k}']:.2f}%" for k in ks))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .train.report import report

    table = report(args.runs, args.ks, args.metric, args.split)
    if args.out:
        Path(args.out).write_text(table)
    print(table, end="")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .train.experiments import list_experiments, load_experiment, reproduce

    root = Path(args.configs) if args.configs else None
    if args.list:
        for name in list_experiments(root):
            experiment = load_experiment(name, root)
            print(f"{name}: {experiment['title']} ({len(experiment['runs'])} runs)")
        return 0
    keys = ("data_root", "epochs", "accelerator", "devices", "num_nodes", "strategy",
            "precision", "progress", "batch_size", "num_workers", "threads", "model_kwargs")
    reproduce(args.experiment, args.seeds, args.out, _overrides(args, keys), root=root)
    return 0


def _cmd_sets(args: argparse.Namespace) -> int:
    from .sets_eval import evaluate_run

    run_dir = Path(args.run_dir)
    if not (run_dir / "predictions_val.pt").is_file():
        raise ConfigError(f"{run_dir} is not a finished run folder (no predictions_val.pt)")
    try:
        evaluate_run(run_dir, average_k=tuple(args.average_k), alpha=args.alpha,
                     out_dir=args.out)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    print((Path(args.out or run_dir) / "sets.md").read_text(), end="")
    return 0


def _cmd_level_sets(args: argparse.Namespace) -> int:
    from .plots import LEVEL_SET_LOSSES, SEED_PANELS, plot_level_sets

    if args.loss == "seed":
        panels = list(SEED_PANELS)
    elif args.loss in LEVEL_SET_LOSSES:
        epsilons = args.epsilon or [1.0]
        panels = [(args.loss, e) for e in epsilons] if args.loss == "bal_topk" else \
            [(args.loss, None)]
    else:
        raise ConfigError(f"unknown loss {args.loss!r} for level sets; known: "
                          f"{', '.join(LEVEL_SET_LOSSES)}, seed (the slides' six panels)")
    if not 1 <= args.k <= 2:
        raise ConfigError(f"k must be 1 or 2 for L = 3 classes, got {args.k}")
    path = plot_level_sets(panels, args.out, k=args.k, n_samples=args.n_samples,
                           seed=args.seed, resolution=args.resolution)
    print(path)
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="smoothtopk", description=(
        "Top-K classification with smoothed top-K hinge losses: train, evaluate, report "
        "and reproduce the experiments of Garcin et al. (ICML 2022)."))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train one run, write its run folder",
                       description="Train one run. Settings: defaults < --config YAML < flags.")
    p.add_argument("--config", help="YAML file of configuration keys (see the flags)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--amp", dest="precision", action="store_const", const="16-mixed",
                   default=argparse.SUPPRESS, help="mixed precision (same as "
                   "--precision 16-mixed)")
    _add_config_flags(p, [f for f in FIELDS if f != "precision"])
    p.add_argument("--precision", default=argparse.SUPPRESS, help=_HELP["precision"])
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("test", help="evaluate a checkpoint on a split",
                       description="Evaluate a checkpoint of `smoothtopk train` on the val "
                       "or test split of its dataset (or of --data / --data-root).")
    p.add_argument("checkpoint", help="a .ckpt file (e.g. RUN/checkpoints/best.ckpt)")
    p.add_argument("--split", choices=("val", "test"), default="test")
    p.add_argument("--out", help="folder for predictions_<split>.pt and metrics_<split>.json")
    _add_config_flags(p, ["data", "data_root", "data_kwargs", "batch_size", "num_workers",
                          "threads", "accelerator", "devices", "num_nodes", "strategy", "precision",
                          "progress"])
    p.set_defaults(func=_cmd_test)

    p = sub.add_parser("report", help="Markdown table of several run folders",
                       description="Losses (run labels) as columns, K as rows; mean ± std "
                       "over the seeds of a label.")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--ks", nargs="+", type=int, default=[1, 3, 5, 10])
    p.add_argument("--metric", choices=("macro", "top"), default="macro",
                   help="macro-average top-K (default) or top-K accuracy")
    p.add_argument("--split", choices=("val", "test"), default="test")
    p.add_argument("--out", help="also write the table to this file")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("reproduce", help="run the runs of one seed table, print its table",
                       description="Run an experiment of configs/ (default: the seed's "
                       "Pl@ntNet comparison on the synthetic Pl@ntNet-like benchmark).")
    p.add_argument("experiment", nargs="?", default="plantnet_synthetic")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--out", default="runs/reproduce", help="folder of the run folders")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--configs", help="folder of experiment folders (default: the "
                   "configs/ folder of the source tree)")
    _add_config_flags(p, ["data_root", "epochs", "batch_size", "num_workers", "threads",
                          "model_kwargs", "accelerator", "devices", "num_nodes", "strategy",
                          "precision", "progress"])
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser("sets", help="set-valued evaluation of a run folder",
                       description="Top-K, average-K and conformal sets from the run's "
                       "saved predictions (smoothtopk.sets_eval.evaluate_run).")
    p.add_argument("run_dir")
    p.add_argument("--average-k", nargs="+", type=int, default=[1, 3, 5, 10])
    p.add_argument("--alpha", type=float, default=0.1, help="conformal miscoverage level")
    p.add_argument("--out", help="output folder (default: the run folder)")
    p.set_defaults(func=_cmd_sets)

    p = sub.add_parser("plot", help="figures")
    plots = p.add_subparsers(dest="figure", required=True, parser_class=_Parser)
    q = plots.add_parser("level-sets", help="normalised level sets of a loss, L = 3, y = 3",
                         description="Level sets of s -> loss(s, y=3) on the plane of score "
                         "vectors (L = 3), normalised to [0, 1].")
    q.add_argument("--loss", default="seed",
                   help="ce, topk_error, hinge, cvx_hinge, cal_hinge, bal_topk, or seed "
                        "(the six panels of the seed's slides)")
    q.add_argument("--k", type=int, default=2)
    q.add_argument("--epsilon", type=float, nargs="+", help="noise scale(s) for bal_topk")
    q.add_argument("--n-samples", type=int, default=30, help="noise samples B")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--resolution", type=int, default=201)
    q.add_argument("--out", default="level_sets.png")
    q.set_defaults(func=_cmd_level_sets)
    return parser


def _quiet_engine() -> None:
    """Keep Lightning's advisory warnings out of the output."""
    for pattern in (".*does not have many workers.*", ".*sync_dist=True.*",
                    ".*number of training batches.*", ".*LeafSpec.*",
                    ".*Checkpoint directory .* exists and is not empty.*",
                    ".*Experiment logs directory .* exists and is not empty.*"):
        warnings.filterwarnings("ignore", message=pattern)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``smoothtopk`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_engine()
    try:
        return int(args.func(args))
    except ConfigError as err:
        print(f"smoothtopk {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
