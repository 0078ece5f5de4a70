"""Argument validation shared by the losses, operators and metrics.

Every check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError``
(wrong value or shape) with a message that names the argument and the allowed range.
Checks on tensor *values* never synchronise a CUDA device with the host: on CPU they
run eagerly, on other devices they are queued with ``torch._assert_async`` (the same
mechanism ``F.cross_entropy`` relies on for device-side asserts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def reduce(loss: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction`` ('none' | 'mean' | 'sum') to per-sample losses."""
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` must be an int (not bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        allowed = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_real(
    name: str,
    value: object,
    low: float = -math.inf,
    high: float = math.inf,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """``value`` must be a finite real number in ``[low, high]``; either end may be open."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    too_low = value < low if low_inclusive else value <= low
    too_high = value > high if high_inclusive else value >= high
    if math.isnan(value) or too_low or too_high:
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be in {left}{low}, {high}{right}, got {value}")
    return value


def check_k(k: object, num_classes: int, *, needs_next: bool = False, name: str = "k") -> int:
    """``k`` in ``[1, C]``, or ``[1, C-1]`` when the loss uses the (k+1)-th largest score."""
    high = num_classes - 1 if needs_next else num_classes
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    if not 1 <= k <= high:
        why = " (the loss uses the (k+1)-th largest score)" if needs_next else ""
        raise ValueError(
            f"{name} must be in [1, {high}] for {num_classes} classes{why}, got {k}"
        )
    return k


def check_scores(input: Tensor, name: str = "input") -> None:
    """``input`` must be a floating tensor of shape ``(N, C)`` with ``C >= 1``."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {input.dtype}")
    if input.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D of shape (N, C), got shape {tuple(input.shape)}"
        )
    if input.shape[1] < 1:
        raise ValueError(f"{name} must have at least one class column, got shape "
                         f"{tuple(input.shape)}")


def check_target(
    target: Tensor, num_samples: int, num_classes: int, name: str = "target",
    check_range: bool = True,
) -> None:
    """``target`` must be int64 of shape ``(N,)`` with values in ``[0, C)``.

    The range check is eager on CPU and asynchronous (no host sync) on other devices;
    ``check_range=False`` leaves it to a kernel that asserts the range itself.
    """
    if not isinstance(target, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(target).__name__}")
    if target.dtype != torch.int64:
        raise TypeError(f"{name} must have dtype torch.int64 (class indices), got {target.dtype}")
    if target.dim() != 1 or target.shape[0] != num_samples:
        raise ValueError(
            f"{name} must have shape ({num_samples},) to match input, got {tuple(target.shape)}"
        )
    if check_range:
        check_index_range(target, num_classes, name)


def check_index_range(index: Tensor, num_classes: int, name: str = "target") -> None:
    """Values of ``index`` in ``[0, num_classes)``: eager on CPU, async elsewhere."""
    if index.numel() == 0:
        return
    if index.device.type == "cpu":
        low, high = (int(v) for v in torch.aminmax(index))
        if low < 0 or high >= num_classes:
            value = low if low < 0 else high
            raise ValueError(f"{name} values must be in [0, {num_classes}), found {value}")
    else:
        torch._assert_async(
            ((index >= 0) & (index < num_classes)).all(),
            f"{name} values must be in [0, {num_classes})",
        )


def check_input_target(
    input: Tensor, target: Tensor, check_range: bool = True
) -> tuple[int, int]:
    """Validate a loss's ``input (N, C)`` and ``target (N,)``; return ``(N, C)``.
    ``check_range=False``: the values of ``target`` are checked by the loss's kernel."""
    check_scores(input)
    n, c = input.shape
    check_target(target, n, c, check_range=check_range)
    return n, c


def check_class_counts(
    class_counts: Sequence[float] | Tensor, num_classes: int | None = None,
    name: str = "class_counts", *, allow_zero: bool = False,
) -> Tensor:
    """Positive (``>= 0`` with ``allow_zero``), finite, 1-D training counts per class,
    returned as a float64 CPU tensor."""
    if isinstance(class_counts, Tensor):
        counts = class_counts.detach().to("cpu", torch.float64)
    else:
        try:
            counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a sequence of numbers or a tensor") from err
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape "
                         f"{tuple(counts.shape)}")
    if num_classes is not None and counts.numel() != num_classes:
        raise ValueError(
            f"{name} must have one entry per class ({num_classes}), got {counts.numel()}"
        )
    too_small = counts < 0 if allow_zero else counts <= 0
    if not bool(torch.isfinite(counts).all()) or bool(too_small.any()):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound} for every class")
    return counts


def check_generator(generator: object, device: torch.device) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(
            f"generator is on {generator.device.type} but input is on {device.type}"
        )
