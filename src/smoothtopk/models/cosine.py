"""Cosine classifier head: scores are cosines between features and class weights."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int, check_real


class CosineClassifier(nn.Module):
    r"""Linear head on L2-normalised features and L2-normalised class weights.

    .. math:: s_j(x) = \frac{\langle w_j, x \rangle}{\lVert w_j \rVert \, \lVert x \rVert}
              \in [-1, 1]

    The scores are bounded, so the losses that use this head multiply them by a scale
    (LDAM: 40, imbalanced noised top-K: 60; Garcin et al., ICML 2022, §5.2; Cao et al.,
    NeurIPS 2019). The head has no bias; ``weight`` has the shape of ``nn.Linear``'s,
    ``(num_classes, in_features)``, so a linear head's weight can be copied into it.

    Args:
        in_features: feature dimension ``d`` (>= 1).
        num_classes: number of classes ``C`` (>= 1).
        eps: floor on the norms, so that a zero feature vector gives zero scores.

    Shape:
        input ``(N, d)`` -> output ``(N, C)``.
    """

    def __init__(self, in_features: int, num_classes: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, 1)
        self.num_classes = check_int("num_classes", num_classes, 1)
        self.eps = check_real("eps", eps, 0.0, low_inclusive=False)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same initialisation as nn.Linear's weight.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() != 2 or input.shape[1] != self.in_features:
            raise ValueError(
                f"input must have shape (N, {self.in_features}), got {tuple(input.shape)}"
            )
        features = F.normalize(input, dim=1, eps=self.eps)
        weight = F.normalize(self.weight, dim=1, eps=self.eps)
        return F.linear(features, weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"
