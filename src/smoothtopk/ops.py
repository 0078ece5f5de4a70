"""Top-K operators and their perturbed (smoothed) versions, differentiable.

Notation of Garcin et al. (ICML 2022), for a vector ``s`` of length ``L`` sorted as
``s_(1) >= ... >= s_(L)``:

* ``topΣ_K(s) = Σ_{k<=K} s_(k)`` (:func:`topk_sum`), gradient: the indicator of the K largest;
* ``top_K(s) = s_(K)`` (:func:`kth_largest`), gradient: one-hot at the K-th largest;
* ``topΣ_{K,ε}(s) = E_Z[topΣ_K(s + εZ)]`` and ``top_{K,ε} = topΣ_{K,ε} − topΣ_{K−1,ε}``
  with ``Z ~ N(0, I_L)`` (Berthet et al., NeurIPS 2020, "Learning with differentiable
  perturbed optimizers"). :func:`smooth_topk_sum` and :func:`smooth_kth_largest` return
  their Monte-Carlo estimates over ``B = n_samples`` draws ``Z_1..Z_B`` and back-propagate
  the perturbed-optimizer gradient ``(1/B) Σ_b argtop(s + εZ_b)`` computed from the *same*
  draws as the value.

Every operator works on any tensor shape along any ``dim`` and removes that dimension.
The backward passes only keep the selected indices (never the ``B × shape`` perturbed
tensor).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from smoothtopk import hinge_cpu
from smoothtopk._checks import check_generator, check_int, check_k, check_real
from smoothtopk.perturbed import (
    compiled_on_cpu,
    cpu_smooth_kth,
    sample_perturbed_kth,
    selected_sum_grad,
)

__all__ = [
    "SmoothKthLargest",
    "kth_largest",
    "smooth_kth_largest",
    "smooth_topk_sum",
    "topk_sum",
]


class _SelectedSum(Function):
    """``out[r] = weight · Σ_m values[r, m]`` where ``values[r, m]`` was read at column
    ``indices[r, m]`` of ``x`` (possibly after perturbation); the backward pass scatters
    ``weight · grad[r]`` to those columns. Only ``indices`` is saved. On CPU the sum runs
    left to right (:func:`smoothtopk.hinge_cpu.weighted_row_sums`), as in the fused noised
    hinge, and the backward is one compiled pass that writes each gradient row once
    (:func:`smoothtopk.perturbed.selected_sum_grad`, bitwise torch's scatter)."""

    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, indices: Tensor, weight: float) -> Tensor:
        ctx.save_for_backward(indices)
        ctx.weight = weight
        ctx.shape = x.shape
        if compiled_on_cpu(values):
            # left to right, as the fused noised hinge adds its draws (bitwise equal)
            return torch.from_numpy(hinge_cpu.weighted_row_sums(values.detach().numpy(),
                                                                weight))
        return values.sum(dim=-1) * weight

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        (indices,) = ctx.saved_tensors
        return selected_sum_grad(grad, indices, ctx.weight, ctx.shape), None, None, None


def _check_tensor(x: object, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension, got a 0-d tensor")


def _rows(x: Tensor, dim: object) -> tuple[Tensor, int, torch.Size]:
    """View ``x`` as ``(rows, size along dim)``; return it, the normalised dim, and the
    output shape (``x.shape`` without ``dim``)."""
    dim = check_int("dim", dim, -x.dim(), x.dim() - 1) % x.dim()
    if dim == x.dim() - 1:  # already last (the losses' case): no movedim
        return (x if x.dim() == 2 else x.reshape(-1, x.shape[dim])), dim, x.shape[:-1]
    moved = x.movedim(dim, -1)
    return moved.reshape(-1, x.shape[dim]), dim, moved.shape[:-1]


def _shaped(out: Tensor, out_shape: torch.Size) -> Tensor:
    """``out`` (one value per row) in the output shape; as is when it has that shape already
    (rows of a 2-d ``x`` along its last dim, as the losses' scores): no view node for
    autograd to record and run back."""
    return out if out.shape == out_shape else out.reshape(out_shape)


def _noise_rows(noise: object, x: Tensor, dim: int, n_samples: int) -> Tensor:
    """Validate ``noise`` of shape ``(n_samples, *x.shape)``; view it as ``(B, rows, C)``."""
    if not isinstance(noise, Tensor):
        raise TypeError(f"noise must be a torch.Tensor, got {type(noise).__name__}")
    if not noise.is_floating_point():
        raise TypeError(f"noise must be a floating-point tensor, got dtype {noise.dtype}")
    expected = (n_samples, *x.shape)
    if tuple(noise.shape) != expected:
        raise ValueError(
            f"noise must have shape (n_samples, *x.shape) = {expected}, "
            f"got {tuple(noise.shape)}"
        )
    if noise.device != x.device:
        raise ValueError(f"noise is on {noise.device} but x is on {x.device}")
    moved = noise.to(x.dtype).movedim(dim + 1, -1)
    return moved.reshape(n_samples, -1, x.shape[dim])


def _kth_largest_with_index(t: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Value and index of the k-th largest entry along the last dim (k in [1, size]).

    Selects from whichever end of the order is shorter: the k-th largest of ``C`` entries
    is the ``(C - k + 1)``-th smallest.
    """
    size = t.shape[-1]
    if k <= size - k + 1:
        values, indices = torch.topk(t, k, dim=-1, largest=True, sorted=True)
    else:
        values, indices = torch.topk(t, size - k + 1, dim=-1, largest=False, sorted=True)
    return values[..., -1], indices[..., -1]


def _perturb(
    x2d: Tensor, epsilon: float, n_samples: int, generator: torch.Generator | None,
    noise: Tensor | None,
) -> Tensor:
    """``x2d + epsilon * Z`` of shape ``(B, R, C)``, with the given ``Z`` or fresh draws."""
    if noise is not None:
        return torch.add(x2d, noise, alpha=epsilon)
    draws = torch.randn(
        (n_samples, *x2d.shape), generator=generator, device=x2d.device, dtype=x2d.dtype
    )
    return draws.mul_(epsilon).add_(x2d)  # in place: the draws are not needed afterwards


def _perturbed_kth_reference(
    x2d: Tensor,
    k: int,
    epsilon: float,
    n_samples: int,
    generator: torch.Generator | None,
    noise: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Definition of the perturbed k-th largest on rows: for each row ``r`` and draw ``b``,
    the value and column index of the k-th largest entry of ``x2d[r] + epsilon * Z[b, r]``.

    ``x2d``: ``(R, C)``; ``noise``: ``(B, R, C)`` standard-normal draws or ``None`` (drawn
    here with ``generator``). Returns ``values (R, B)`` and ``indices (R, B)`` (int64).
    """
    perturbed = _perturb(x2d, epsilon, n_samples, generator, noise)  # (B, R, C)
    values, indices = _kth_largest_with_index(perturbed, k)  # (B, R)
    return values.transpose(0, 1), indices.transpose(0, 1)


def topk_sum(x: Tensor, k: int, dim: int = -1) -> Tensor:
    """Sum of the ``k`` largest entries of ``x`` along ``dim``: ``topΣ_K(s)``.

    Shapes: ``x`` of any shape, output ``x.shape`` without ``dim``. The gradient is the
    indicator of the ``k`` selected entries (ties broken by :func:`torch.topk`).
    """
    _check_tensor(x)
    x2d, _, out_shape = _rows(x, dim)
    k = check_k(k, x2d.shape[1])
    with torch.no_grad():
        values, indices = torch.topk(x2d, k, dim=-1)
    return _shaped(_SelectedSum.apply(x2d, values, indices, 1.0), out_shape)


def kth_largest(x: Tensor, k: int, dim: int = -1) -> Tensor:
    """The ``k``-th largest entry of ``x`` along ``dim``: ``top_K(s) = s_(K)``.

    Shapes: ``x`` of any shape, output ``x.shape`` without ``dim``. The gradient is
    one-hot at the selected entry (ties broken by :func:`torch.topk`).
    """
    _check_tensor(x)
    x2d, _, out_shape = _rows(x, dim)
    k = check_k(k, x2d.shape[1])
    with torch.no_grad():
        values, indices = _kth_largest_with_index(x2d, k)
    out = _SelectedSum.apply(x2d, values.unsqueeze(-1), indices.unsqueeze(-1), 1.0)
    return _shaped(out, out_shape)


def _check_draw_args(
    epsilon: object, n_samples: object, generator: object, device: torch.device
) -> tuple[float, int]:
    """``epsilon >= 0``, ``n_samples >= 1`` and a generator on ``device`` (or ``None``)."""
    epsilon = check_real("epsilon", epsilon, 0.0)
    n_samples = check_int("n_samples", n_samples, 1)
    check_generator(generator, device)
    return epsilon, n_samples


def _check_smooth_args(
    x: Tensor, k: int, epsilon: float, n_samples: int, dim: int, generator: object,
    noise: object,
) -> tuple[Tensor, torch.Size, int, float, int, Tensor | None]:
    _check_tensor(x)
    x2d, dim, out_shape = _rows(x, dim)
    k = check_k(k, x2d.shape[1])
    epsilon, n_samples = _check_draw_args(epsilon, n_samples, generator, x.device)
    noise2d = None if noise is None else _noise_rows(noise, x, dim, n_samples)
    return x2d, out_shape, k, epsilon, n_samples, noise2d


def smooth_topk_sum(
    x: Tensor,
    k: int,
    epsilon: float = 1.0,
    n_samples: int = 5,
    dim: int = -1,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Monte-Carlo estimate of ``topΣ_{K,ε}(s) = E_Z[topΣ_K(s + εZ)]`` along ``dim``.

    ``(1/B) Σ_b topΣ_K(s + εZ_b)`` with ``B = n_samples`` standard-normal draws; its gradient
    is ``(1/B) Σ_b argtopΣ_K(s + εZ_b)`` (same draws). ``noise`` (shape
    ``(n_samples, *x.shape)``) passes the draws explicitly, otherwise they are drawn with
    ``generator``. ``epsilon = 0`` gives :func:`topk_sum` exactly (no draw).

    Reference: Garcin et al., "Stochastic smoothing of the top-K calibrated hinge loss for
    deep imbalanced classification", ICML 2022; Berthet et al., NeurIPS 2020.
    """
    x2d, out_shape, k, epsilon, n_samples, noise2d = _check_smooth_args(
        x, k, epsilon, n_samples, dim, generator, noise
    )
    if epsilon == 0.0:
        return topk_sum(x, k, dim)
    with torch.no_grad():
        perturbed = _perturb(x2d, epsilon, n_samples, generator, noise2d)  # (B, R, C)
        values, indices = torch.topk(perturbed, k, dim=-1)  # (B, R, k)
        rows = x2d.shape[0]
        values = values.permute(1, 0, 2).reshape(rows, -1)
        indices = indices.permute(1, 0, 2).reshape(rows, -1)
    out = _SelectedSum.apply(x2d, values, indices, 1.0 / n_samples)
    return _shaped(out, out_shape)


def smooth_kth_largest(
    x: Tensor,
    k: int,
    epsilon: float = 1.0,
    n_samples: int = 5,
    dim: int = -1,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Monte-Carlo estimate of the smoothed k-th largest ``top_{K,ε}(s)`` along ``dim``.

    ``top^_{K,ε,B}(s) = (1/B) Σ_b (s + εZ_b)_(K)`` with ``B = n_samples`` standard-normal
    draws ``Z_b``, an unbiased estimate of ``top_{K,ε} = topΣ_{K,ε} − topΣ_{K−1,ε}``. Its
    gradient is ``(1/B) Σ_b onehot(argtop_K(s + εZ_b))``, from the same draws as the value.

    Shapes: ``x`` of any shape, output ``x.shape`` without ``dim``; ``noise`` (optional)
    ``(n_samples, *x.shape)`` holds the ``Z`` draws, otherwise they are drawn with
    ``generator``. ``epsilon = 0`` gives :func:`kth_largest` exactly (no draw).

    Reference: Garcin et al., ICML 2022 (the smoothed top-K and its estimator).
    """
    x2d, out_shape, k, epsilon, n_samples, noise2d = _check_smooth_args(
        x, k, epsilon, n_samples, dim, generator, noise
    )
    if epsilon == 0.0:
        return kth_largest(x, k, dim)
    if noise2d is None and compiled_on_cpu(x2d):  # one node: draws and their mean
        out = cpu_smooth_kth(x2d, k, epsilon, n_samples, generator)
    else:
        values, indices = _smooth_kth_draws(x2d, k, epsilon, n_samples, generator, noise2d)
        out = _SelectedSum.apply(x2d, values, indices, 1.0 / n_samples)
    return _shaped(out, out_shape)


def _smooth_kth_draws(
    x2d: Tensor, k: int, epsilon: float, n_samples: int,
    generator: torch.Generator | None, noise2d: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Values and columns ``(R, B)`` of the perturbed k-th largest of each row (``(R, 1)``,
    the exact k-th largest, for ``epsilon = 0``): their mean over the last axis is the
    estimate, the average of their one-hots its gradient. Without ``noise2d`` the exact
    fast sampler :func:`smoothtopk.perturbed.sample_perturbed_kth` draws them (same law
    as the reference, a few draws per row)."""
    with torch.no_grad():
        if epsilon == 0.0:
            values, indices = _kth_largest_with_index(x2d, k)
            return values.unsqueeze(-1), indices.unsqueeze(-1)
        if noise2d is None:
            return sample_perturbed_kth(x2d, k, epsilon, n_samples, generator)
        return _perturbed_kth_reference(x2d, k, epsilon, n_samples, generator, noise2d)


class SmoothKthLargest(nn.Module):
    """Differentiable k-th largest layer: :func:`smooth_kth_largest` as a module.

    ``SmoothKthLargest(k, epsilon=1.0, n_samples=5, dim=-1, generator=None)`` maps a tensor
    of any shape to that shape without ``dim``. It draws fresh noise at every call, in
    training and in evaluation mode alike (``epsilon=0`` for the exact, deterministic
    k-th largest).
    """

    def __init__(
        self,
        k: int,
        epsilon: float = 1.0,
        n_samples: int = 5,
        dim: int = -1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.k = check_int("k", k, 1)
        self.epsilon = check_real("epsilon", epsilon, 0.0)
        self.n_samples = check_int("n_samples", n_samples, 1)
        self.dim = check_int("dim", dim, -(2**31))
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        return smooth_kth_largest(
            x, self.k, self.epsilon, self.n_samples, self.dim, generator=self.generator
        )

    def extra_repr(self) -> str:
        return f"k={self.k}, epsilon={self.epsilon}, n_samples={self.n_samples}, dim={self.dim}"
