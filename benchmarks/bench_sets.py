"""Set-valued prediction benchmark: top-K vs average-K vs conformal on trained models.

For each dataset (default: ``synthetic``, ``fashion_mnist_lt`` with its default balanced
test split, and ``fashion_mnist_lt:test_profile=long_tailed`` whose test split has the
long-tailed profile of the validation split, i.e. is exchangeable with the calibration
data as the average-K and conformal guarantees assume; all from
``smoothtopk.train.datamodules.build_datamodule``) the script trains a small MLP with
cross-entropy in plain torch (CPU, a few epochs), writes a run folder with the validation
(= calibration) and test logits, and evaluates it with
:func:`smoothtopk.sets_eval.evaluate_run` (table ``sets.md``, ``sets.json``, plot
``sets.png``). It then prints the acceptance figures of the set-valued predictors:

1. for K in {1, 3, 5}: coverage of AverageKSets vs TopKSets, the realised average set size
   of AverageKSets on test and its relative gap to K (target: within 5%), and the
   average-K coverage interpolated on its curve at an average test size of exactly K;
2. conformal prediction on the *held-out* scores of the trained model: over 200 random
   calibration/test splits of the pooled validation+test logits, the mean coverage (target
   >= 1 - alpha - 0.01) and a Kolmogorov-Smirnov test of the number of covered test points
   against its exact law BetaBinomial(n_test, n + 1 - l, l), l = floor((n + 1) alpha);
3. a diagnostic of the sampling spread of criterion 1 with the same model: over random
   halves of the pooled held-out logits, the realised size gap and the coverage difference.

Run:  .venv/bin/python benchmarks/bench_sets.py [--datasets synthetic fashion_mnist_lt ...]
          [--epochs 8] [--out runs/bench_sets] [--alpha 0.1] [--seed 0] [--threads 1]
(about 45 s of CPU on the project machine.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from smoothtopk.set_metrics import coverage
from smoothtopk.sets import AverageKSets, ConformalSets, TopKSets, fit_temperature
from smoothtopk.sets_eval import evaluate_run

ACCEPT_K = (1, 3, 5)
N_SPLITS = 200  # conformal: random calibration/test splits
N_SPREAD = 100  # average-K sampling-spread diagnostic


def _stack(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for x, y in loader:
        xs.append(x.reshape(x.shape[0], -1).float())
        ys.append(y.long())
    return torch.cat(xs), torch.cat(ys)


def train_mlp(x: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int, seed: int,
              hidden: int = 256, batch_size: int = 128, lr: float = 1e-3) -> nn.Module:
    """A 2-layer MLP trained with cross-entropy and Adam on standardised inputs."""
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    model = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(),
                          nn.Linear(hidden, num_classes))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    xn = (x - mean) / std
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch_size):
            idx = perm[i:i + batch_size]
            loss = nn.functional.cross_entropy(model(xn[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return nn.Sequential(_Standardise(mean, std), model)


class _Standardise(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def parse_spec(spec: str) -> tuple[str, dict[str, object]]:
    """``name`` or ``name:key=value,key=value`` (numbers parsed) -> (name, kwargs)."""
    name, _, rest = spec.partition(":")
    kwargs: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        for cast in (int, float):
            try:
                kwargs[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            kwargs[key] = value
    return name, kwargs


def make_run(spec: str, out: Path, epochs: int, seed: int) -> dict:
    from smoothtopk.train.datamodules import build_datamodule

    t0 = time.perf_counter()
    name, kwargs = parse_spec(spec)
    dm = build_datamodule(name, seed=seed, batch_size=1024, **kwargs)
    dm.setup()
    x_tr, y_tr = _stack(dm.train_dataloader())
    x_va, y_va = _stack(dm.val_dataloader())
    x_te, y_te = _stack(dm.test_dataloader())
    model = train_mlp(x_tr, y_tr, dm.num_classes, epochs, seed)
    run = out / spec.replace(":", "-").replace(",", "-").replace("=", "-")
    run.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for split, x, y in (("val", x_va, y_va), ("test", x_te, y_te)):
            torch.save({"logits": model(x).float(), "targets": y}, run / f"predictions_{split}.pt")
    counts = [int(v) for v in dm.class_counts.tolist()]
    info = {"dataset": spec, "run_dir": str(run), "num_classes": dm.num_classes,
            "n_train": len(y_tr),
            "n_val": len(y_va), "n_test": len(y_te), "epochs": epochs,
            "train_seconds": time.perf_counter() - t0,
            "train_class_counts": counts}
    (run / "metrics.json").write_text(json.dumps(info))
    return info


def interpolate(xs: list[float], ys: list[float], x0: float) -> float:
    """Linear interpolation of ``y`` at ``x0`` on a curve (NaN outside its range)."""
    pairs = sorted(zip(xs, ys, strict=True))
    for (xa, ya), (xb, yb) in itertools.pairwise(pairs):
        if xa <= x0 <= xb:
            return ya if xb == xa else ya + (yb - ya) * (x0 - xa) / (xb - xa)
    return math.nan


def average_k_acceptance(result: dict) -> list[dict]:
    rows = {(r["method"], r["param"]): r for r in result["rows"]}
    curve = result["curves"]["average_k"]
    out = []
    for k in ACCEPT_K:
        top, avg = rows[("top-K", f"K={k}")], rows[("average-K", f"K={k}")]
        out.append({
            "k": k,
            "top_coverage": top["coverage"], "avg_coverage": avg["coverage"],
            "top_macro": top["macro_coverage"], "avg_macro": avg["macro_coverage"],
            "avg_size": avg["avg_size"], "size_gap": avg["avg_size"] / k - 1,
            "avg_coverage_at_size_k": interpolate(curve["avg_size"], curve["coverage"], k),
            "coverage_ok": avg["coverage"] >= top["coverage"],
            "size_ok": abs(avg["avg_size"] / k - 1) <= 0.05,
        })
    return out


def pooled_held_out(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation and test logits and labels of a run, concatenated."""
    logits, labels = [], []
    for split in ("val", "test"):
        data = torch.load(run / f"predictions_{split}.pt")
        logits.append(data["logits"])
        labels.append(data["targets"])
    return torch.cat(logits), torch.cat(labels)


def average_k_splits(run: Path, seed: int) -> list[dict]:
    """Sampling spread of the average-K figures: random halves of the pooled held-out logits.

    Diagnostic for criterion 1, measured on the same trained model: for each of
    ``N_SPREAD`` random calibration/test halves, the relative gap of the realised test
    set size to K and the coverage difference average-K minus top-K.
    """
    x, y = pooled_held_out(run)
    n = len(y) // 2
    g = torch.Generator().manual_seed(seed)
    gaps: dict[int, list[float]] = {k: [] for k in ACCEPT_K}
    deltas: dict[int, list[float]] = {k: [] for k in ACCEPT_K}
    for _ in range(N_SPREAD):
        perm = torch.randperm(len(y), generator=g)
        cal, test = perm[:n], perm[n:]
        temperature = fit_temperature(x[cal], y[cal])
        for k in ACCEPT_K:
            avg = AverageKSets(k, temperature).fit(x[cal], y[cal]).predict(x[test], generator=g)
            top = TopKSets(k).fit(x[cal], y[cal]).predict(x[test])
            gaps[k].append(float(avg.sum(1).double().mean()) / k - 1)
            deltas[k].append(float(coverage(avg, y[test]) - coverage(top, y[test])))
    out = []
    for k in ACCEPT_K:
        gap, delta = torch.tensor(gaps[k]), torch.tensor(deltas[k])
        out.append({
            "k": k, "n_cal": n, "n_test": len(y) - n,
            "gap_mean": float(gap.mean()), "gap_sd": float(gap.std()),
            "within_5pct": float((gap.abs() <= 0.05).double().mean()),
            "delta_mean": float(delta.mean()), "delta_sd": float(delta.std()),
            "delta_nonneg": float((delta >= 0).double().mean()),
        })
    return out


def conformal_splits(run: Path, alpha: float, seed: int) -> list[dict]:
    """Coverage of conformal sets over random splits of the pooled held-out logits."""
    from scipy import stats

    x, y = pooled_held_out(run)
    n = len(y) // 2
    n_test = len(y) - n
    ell = math.floor((n + 1) * alpha)
    law = stats.betabinom(n_test, n + 1 - ell, ell)
    out = []
    for score, randomized in (("lac", False), ("aps", False), ("aps", True)):
        g = torch.Generator().manual_seed(seed)
        counts, sizes = [], []
        for _ in range(N_SPLITS):
            perm = torch.randperm(len(y), generator=g)
            cal, test = perm[:n], perm[n:]
            pred = ConformalSets(alpha, score, randomized=randomized)
            sets = pred.fit(x[cal], y[cal], generator=g).predict(x[test], generator=g)
            counts.append(int(sets[torch.arange(n_test), y[test]].sum()))
            sizes.append(float(sets.sum(1).double().mean()))
        c = torch.tensor(counts, dtype=torch.float64)
        out.append({
            "score": score + (" randomized" if randomized else ""),
            "n_cal": n, "n_test": n_test,
            "mean_coverage": float(c.mean() / n_test),
            "sd_coverage": float(c.std() / n_test),
            "law_mean": float(law.mean() / n_test), "law_sd": float(law.std() / n_test),
            "ks_pvalue": float(stats.kstest(c.numpy(), law.cdf).pvalue),
            "mean_size": sum(sizes) / len(sizes),
            "mean_ok": float(c.mean() / n_test) >= 1 - alpha - 0.01,
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", nargs="+",
        default=["synthetic", "fashion_mnist_lt", "fashion_mnist_lt:test_profile=long_tailed"],
        help="build_datamodule names, optionally with arguments: name:key=value,key=value")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_sets"))
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 avoids oversubscription on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    summary = {}
    for name in args.datasets:
        info = make_run(name, args.out, args.epochs, args.seed)
        run = Path(info["run_dir"])
        print(f"\n## {name}: C={info['num_classes']}, train/val/test = {info['n_train']}/"
              f"{info['n_val']}/{info['n_test']}, {args.epochs} epochs "
              f"({info['train_seconds']:.1f} s)")
        t0 = time.perf_counter()
        result = evaluate_run(run, average_k=(1, 3, 5, 10), alpha=args.alpha)
        timings = {"evaluate_run": time.perf_counter() - t0}
        print(f"temperature T = {result['temperature']:.3f}; report: {result['files']['table']}")
        acc = average_k_acceptance(result)
        print("\n| K | top-K cov. | average-K cov. | Δ | top-K macro | average-K macro "
              "| average-K size | size gap | average-K cov. at size K (interp.) | cov. ok "
              "| size ok |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for a in acc:
            print(f"| {a['k']} | {a['top_coverage']:.4f} | {a['avg_coverage']:.4f} | "
                  f"{a['avg_coverage'] - a['top_coverage']:+.4f} | {a['top_macro']:.4f} | "
                  f"{a['avg_macro']:.4f} | {a['avg_size']:.3f} | {a['size_gap']:+.2%} | "
                  f"{a['avg_coverage_at_size_k']:.4f} | {a['coverage_ok']} | {a['size_ok']} |")
        t0 = time.perf_counter()
        spread = average_k_splits(run, args.seed)
        timings["spread"] = time.perf_counter() - t0
        print(f"\nSampling spread, {N_SPREAD} random halves of the pooled val+test logits "
              f"(n_cal={spread[0]['n_cal']}, n_test={spread[0]['n_test']}):\n")
        print("| K | size gap mean | sd | share within 5% | Δ cov. mean | sd | share Δ >= 0 |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for d in spread:
            print(f"| {d['k']} | {d['gap_mean']:+.2%} | {d['gap_sd']:.2%} | "
                  f"{d['within_5pct']:.2f} | {d['delta_mean']:+.4f} | {d['delta_sd']:.4f} | "
                  f"{d['delta_nonneg']:.2f} |")
        t0 = time.perf_counter()
        conf = conformal_splits(run, args.alpha, args.seed)
        timings["conformal_splits"] = time.perf_counter() - t0
        print(f"\nConformal, alpha={args.alpha}, {N_SPLITS} random splits of the pooled "
              f"val+test logits (n_cal={conf[0]['n_cal']}, n_test={conf[0]['n_test']}):\n")
        print("| score | mean coverage | sd | Beta-Binomial mean | sd | KS p-value | mean size "
              "| mean >= 1-α-0.01 |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for c in conf:
            print(f"| {c['score']} | {c['mean_coverage']:.4f} | {c['sd_coverage']:.4f} | "
                  f"{c['law_mean']:.4f} | {c['law_sd']:.4f} | {c['ks_pvalue']:.3f} | "
                  f"{c['mean_size']:.2f} | {c['mean_ok']} |")
        print("\ntimings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
        summary[name] = {"timings": timings,
                         "info": {k: v for k, v in info.items() if k != "train_class_counts"},
                         "average_k": acc, "average_k_splits": spread, "conformal": conf}
    (args.out / "bench_sets.json").write_text(json.dumps(summary, indent=2))
    print(f"\nsummary: {args.out / 'bench_sets.json'}; total CPU time of this process "
          f"{time.process_time():.0f} s")


if __name__ == "__main__":
    main()
