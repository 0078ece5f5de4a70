"""Speed of the losses: forward + backward, as a ratio to ``F.cross_entropy``.

One process, every contender timed in the same run on the same inputs (design.md §4):
scores ``(N, C)`` drawn from N(0, 1), N = 256, C in {100, 1081, 10000}, K = 5, B = 5,
ε = 1. Paired measurements: in each of ``--repeats`` rounds, every contender is timed
right next to ``F.cross_entropy`` (which goes first in every other round), and the pair
gives one ratio; the table gives the median of each contender's ratios, and the median
time of ``F.cross_entropy``. Pairs cancel the load changes of a shared machine that are
slower than a pair (a few hundredths of a second), which medians of separately timed
contenders do not: on our 2-core VM the baseline's own time swung by 2x within a run.
Before the CPU timings, :func:`settle_allocator` leaves the C allocator as a training
step would, so that the baseline's page faults do not depend on which contenders ran.

``--regime peaked`` adds 8 to the label's score and to 4 other scores of each row and
uses ε = 0.1: a trained network's peaked scores, where only a few classes compete.

Contenders: ``F.cross_entropy``, every loss of :data:`smoothtopk.losses.LOSSES` (built
with the keyword arguments of the setting that its factory accepts), and the peers
``pytopk.BalNoisedTopK`` / ``pytopk.ImbalNoisedTopK`` and ``difftopk.SmoothTopKLoss`` when
installed, the readable reference sampler, and the operator ``smooth_kth_largest`` alone.
To add one::

    @contender("my_loss")
    def _my_loss(setting: Setting) -> LossFn | None:  # None: not available here
        return MyLoss(k=setting.k).to(setting.device)

Run: ``python benchmarks/bench_losses.py [--sizes 100 1081 10000] [--repeats 30]
[--device cpu] [--threads T] [--regime normal|peaked] [--only REGEX] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from smoothtopk.losses import LOSSES, build_loss

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Setting:
    """What a contender factory may use to build its loss."""

    num_classes: int
    k: int
    n_samples: int
    epsilon: float
    class_counts: Tensor  # (C,) int64, long-tailed training counts
    device: torch.device


CONTENDERS: dict[str, Callable[[Setting], LossFn | None]] = {}
BASELINE = "F.cross_entropy"


def contender(name: str):
    """Register ``factory(setting) -> loss_fn | None`` under ``name``."""

    def register(factory: Callable[[Setting], LossFn | None]):
        CONTENDERS[name] = factory
        return factory

    return register


@contender(BASELINE)
def _cross_entropy(setting: Setting) -> LossFn:
    return F.cross_entropy


def _from_registry(name: str) -> Callable[[Setting], LossFn]:
    def factory(setting: Setting) -> LossFn:
        offered = {"k": setting.k, "epsilon": setting.epsilon,
                   "n_samples": setting.n_samples, "class_counts": setting.class_counts}
        params = inspect.signature(LOSSES[name]).parameters
        kwargs = {key: value for key, value in offered.items() if key in params}
        return build_loss(name, **kwargs).to(setting.device)

    return factory


for _name in LOSSES:
    contender(f"build_loss('{_name}')")(_from_registry(_name))


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@contender("difftopk.SmoothTopKLoss")
def _difftopk_smooth(setting: Setting) -> LossFn | None:
    """The smoothed top-K SVM authors' code (τ = 1, α = 1), peer of 'smooth_topk'."""
    if not _has("difftopk"):
        return None
    with contextlib.redirect_stdout(sys.stderr):  # it prints about optional imports
        import difftopk

    return difftopk.SmoothTopKLoss(setting.num_classes, setting.k, tau=1.0,
                                   device=setting.device)


@contender("pytopk.BalNoisedTopK")
def _pytopk_bal(setting: Setting) -> LossFn | None:
    if not _has("pytopk"):
        return None
    import pytopk

    return pytopk.BalNoisedTopK(k=setting.k, epsilon=setting.epsilon,
                                n_sample=setting.n_samples).to(setting.device)


@contender("pytopk.ImbalNoisedTopK")
def _pytopk_imbal(setting: Setting) -> LossFn | None:
    if not _has("pytopk"):
        return None
    import pytopk

    return pytopk.ImbalNoisedTopK(
        k=setting.k, epsilon=setting.epsilon, max_m=0.2,
        cls_num_list=setting.class_counts.tolist(), scale=60.0, n_sample=setting.n_samples,
    ).to(setting.device)


@contender("noised_topk_loss(all B·N·C draws)")
def _noised_reference(setting: Setting) -> LossFn:
    """The balanced noised loss on explicit noise: the readable reference sampler
    (every Gaussian drawn), against which the default exact fast sampler is timed."""
    from smoothtopk.functional import noised_topk_loss

    def loss(scores: Tensor, target: Tensor) -> Tensor:
        noise = torch.randn((setting.n_samples, *scores.shape), device=scores.device,
                            dtype=scores.dtype)
        return noised_topk_loss(scores, target, k=setting.k, epsilon=setting.epsilon,
                                n_samples=setting.n_samples, noise=noise)

    return loss


@contender("smooth_kth_largest(k = K + 1).mean()")
def _smooth_kth_operator(setting: Setting) -> LossFn:
    """The perturbed (K+1)-th largest operator alone (the noised losses' smoothing, named in
    the speed issue), reduced by a mean: its sampler forward and its scatter backward."""
    from smoothtopk.ops import smooth_kth_largest

    def loss(scores: Tensor, target: Tensor) -> Tensor:
        return smooth_kth_largest(scores, setting.k + 1, setting.epsilon,
                                  setting.n_samples).mean()

    return loss


@contender("noised_topk_loss(torch sampler)")
def _noised_torch_sampler(setting: Setting) -> LossFn | None:
    """The balanced noised loss with the torch-only sampler and hinge: what CUDA tensors
    ran before the Triton kernels (GPU runs only; on a CPU the compiled kernel is timed)."""
    if setting.device.type == "cpu":
        return None
    from smoothtopk.perturbed import _NoisedHinge, _sample_torch

    def loss(scores: Tensor, target: Tensor) -> Tensor:
        values, indices = _sample_torch(scores.detach(), setting.k + 1, setting.epsilon,
                                        setting.n_samples)
        return _NoisedHinge.apply(scores, target, 1.0, values, indices, None, "mean", False)

    return loss


# ---------------------------------------------------------------------------- timing


def long_tailed_counts(num_classes: int) -> Tensor:
    """Zipf-like training counts, from 2000 down to 1 image per class."""
    ranks = torch.arange(1, num_classes + 1, dtype=torch.float64)
    return (2000.0 * ranks ** -1.1).clamp_min(1.0).round().long()


def make_inputs(n: int, c: int, regime: str, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, c, generator=gen)
    target = torch.randint(0, c, (n,), generator=gen)
    if regime == "peaked":
        # the label and 4 other classes (distinct) get +8
        others = torch.rand(n, c, generator=gen).scatter(1, target[:, None], -1.0)
        boosted = torch.cat([target[:, None], others.topk(min(4, c - 1), dim=1).indices], 1)
        scores.scatter_add_(1, boosted, torch.full(boosted.shape, 8.0))
    return scores.to(device), target.to(device)


#: Bytes of the buffer that :func:`settle_allocator` allocates and frees (glibc raises its
#: mmap threshold only for freed blocks of at most 32 MiB).
SETTLE_BYTES = 24 << 20


def settle_allocator(device: torch.device) -> None:
    """Before CPU timings, leave the C allocator as a training step leaves it.

    glibc's ``malloc`` maps fresh pages for every request above its mmap threshold (128 KiB
    in a new process), which then page-fault as they are first written. When a mapped
    block of at most 32 MiB is freed, the threshold rises to its size and later requests
    of that size reuse the heap. A network's activations do this in its first step; here
    one ``SETTLE_BYTES`` buffer does. Without it, whether cross-entropy's MB-sized
    tensors fault depended on which contenders had run before it (BENCHMARKS.md). On
    other devices it does nothing; with other C libraries, one allocation and no effect."""
    if device.type == "cpu":
        torch.empty(SETTLE_BYTES, dtype=torch.uint8)  # freed at once: the threshold rises


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run(fn: LossFn, scores: Tensor, target: Tensor, number: int) -> float:
    """Seconds per forward + backward, averaged over ``number`` calls."""
    _sync(scores.device)
    start = time.perf_counter()
    for _ in range(number):
        scores.grad = None
        fn(scores, target).backward()
    _sync(scores.device)
    return (time.perf_counter() - start) / number


def time_contenders(fns: dict[str, LossFn], scores: Tensor, target: Tensor, repeats: int,
                    min_time: float = 0.02) -> dict[str, tuple[float, float]]:
    """Per contender: the median over ``repeats`` rounds of its time divided by that of
    the baseline measured next to it, and its median seconds per call. Each measurement
    averages enough calls to last about ``min_time`` seconds; the baseline goes first in
    even rounds and second in odd ones."""
    x = scores.detach().clone().requires_grad_()
    numbers = {}
    for name, fn in fns.items():
        _run(fn, x, target, 2)  # warm-up
        once = min(_run(fn, x, target, 1) for _ in range(3))
        numbers[name] = max(1, int(min_time / max(once, 1e-7)))
    base = fns[BASELINE]
    ratios: dict[str, list[float]] = {name: [] for name in fns}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats):
        for name, fn in fns.items():
            if name == BASELINE:
                continue
            first = round_ % 2 == 0
            if first:
                base_time = _run(base, x, target, numbers[BASELINE])
            time_ = _run(fn, x, target, numbers[name])
            if not first:
                base_time = _run(base, x, target, numbers[BASELINE])
            ratios[name].append(time_ / base_time)
            times[name].append(time_)
            times[BASELINE].append(base_time)
    ratios[BASELINE] = [1.0]
    return {name: (statistics.median(ratios[name]), statistics.median(times[name]))
            for name in fns}


def format_table(results: dict[int, dict[str, tuple[float, float]]]) -> str:
    """Markdown table of ``results[C][name] = (ratio, seconds)``."""
    sizes = sorted(results)
    names = list(next(iter(results.values())))
    head = "| loss | " + " | ".join(f"C = {c}" for c in sizes) + " |"
    rule = "| --- |" + " ---: |" * len(sizes)
    lines = [head, rule]
    for name in names:
        cells = []
        for c in sizes:
            ratio, seconds = results[c][name]
            cells.append(f"{ratio:.2f}x" if name != BASELINE
                         else f"1x ({1e3 * seconds:.3g} ms)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1081, 10000],
                        help="numbers of classes C")
    parser.add_argument("--batch", type=int, default=256, help="rows N")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--n-samples", type=int, default=5, help="noise draws B")
    parser.add_argument("--repeats", type=int, default=15,
                        help="rounds of paired measurements (median ratio reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--regime", choices=["normal", "peaked"], default="normal")
    parser.add_argument("--min-time", type=float, default=0.02,
                        help="seconds that one measurement lasts at least (calls averaged)")
    parser.add_argument("--only", default=None,
                        help="regular expression: time only the matching contenders")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    settle_allocator(device)
    epsilon = 1.0 if args.regime == "normal" else 0.1
    results: dict[int, dict[str, tuple[float, float]]] = {}
    for c in args.sizes:
        setting = Setting(c, args.k, args.n_samples, epsilon, long_tailed_counts(c), device)
        fns: dict[str, LossFn] = {}
        for name, factory in CONTENDERS.items():
            if name != BASELINE and args.only and not re.search(args.only, name):
                continue
            fn = factory(setting)
            if fn is not None:
                fns[name] = fn
        if len(fns) == 1:  # the baseline alone: nothing to compare
            parser.error(f"--only {args.only!r}: no contender matches it and runs on "
                         f"{device} here; contenders: "
                         f"{', '.join(n for n in CONTENDERS if n != BASELINE)}")
        scores, target = make_inputs(args.batch, c, args.regime, device)
        results[c] = time_contenders(fns, scores, target, args.repeats, args.min_time)
        print(f"C = {c}: done", file=sys.stderr, flush=True)

    header = (
        f"Forward + backward time / F.cross_entropy; N = {args.batch}, K = {args.k}, "
        f"B = {args.n_samples}, eps = {epsilon}, regime = {args.regime}, "
        f"median of {args.repeats} paired ratios; torch {torch.__version__}, device {device}, "
        f"{torch.get_num_threads()} threads, {platform.machine()}."
    )
    return emit(header + "\n\n" + format_table(results) + "\n", args.out)


def emit(text: str, out: str | None) -> str:
    """Print a benchmark's table, and write it to ``out`` too when given."""
    print(text)
    if out:
        with open(out, "w", encoding="utf-8") as handle:
            handle.write(text)
    return text


if __name__ == "__main__":
    main()
