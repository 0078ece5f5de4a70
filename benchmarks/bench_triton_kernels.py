"""GPU times of the Triton kernels alone, against ``F.cross_entropy`` forward + backward.

CUDA events (``triton.testing.do_bench``, median; it clears the L2 cache before each call,
so a host-bound call shows its host time), N = 256 rows, K = 5, B = 5, both score regimes of
``bench_losses.py``. Columns: the sampler, the hinge's forward and backward kernels, and
the whole noised loss (forward + backward through autograd), each in microseconds and as a
ratio to cross-entropy's forward + backward on the same scores.

Run (needs a CUDA device and Triton): ``python benchmarks/bench_triton_kernels.py
[--sizes 1081 10000 100000] [--out FILE]``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton.testing

from bench_losses import emit, make_inputs
from smoothtopk import perturbed_triton as pt
from smoothtopk.functional import noised_topk_loss


def _forward_backward(fn, scores, target):
    def step():
        x = scores.detach().requires_grad_()
        fn(x, target).backward()

    return step


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1081, 10000, 100000])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    k, b = 5, 5
    lines = [f"Triton kernels on {torch.cuda.get_device_name()}, N = {args.batch}, K = {k}, "
             f"B = {b}; microseconds (median, CUDA events) and / CE fwd+bwd.", "",
             "| regime | C | CE fwd+bwd | sampler | hinge fwd | hinge bwd | "
             "noised loss fwd+bwd |", "|---|---:|---:|---:|---:|---:|---:|"]
    for regime, epsilon in [("normal", 1.0), ("peaked", 0.1)]:
        for c in args.sizes:
            scores, target = make_inputs(args.batch, c, regime, torch.device("cuda"))
            values, indices = pt.kth_draws(scores, k + 1, epsilon, b)
            hinge, _ = pt.hinge_forward(scores, target, 1.0, values, None)
            grad = torch.full((args.batch,), 1.0 / args.batch, device="cuda")
            timed = {
                "ce": _forward_backward(F.cross_entropy, scores, target),
                "sampler": lambda s=scores, e=epsilon: pt.kth_draws(s, k + 1, e, b),
                "hinge": lambda s=scores, t=target, v=values: pt.hinge_forward(
                    s, t, 1.0, v, None),
                "grad": lambda g=grad, h=hinge, i=indices, t=target, c=c: pt.hinge_backward(
                    g, h, i, t, c, None),
                "loss": _forward_backward(
                    lambda x, t, e=epsilon: noised_topk_loss(x, t, k=k, epsilon=e),
                    scores, target),
            }
            us = {name: 1e3 * triton.testing.do_bench(fn, warmup=50, rep=300,
                                                      return_mode="median")
                  for name, fn in timed.items()}
            cells = [f"{us['ce']:.1f}"] + [
                f"{us[name]:.1f} ({us[name] / us['ce']:.2f}x)"
                for name in ["sampler", "hinge", "grad", "loss"]]
            lines.append(f"| {regime} | {c} | " + " | ".join(cells) + " |")
    return emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
