"""Linear model and multi-layer perceptron, for feature vectors (embeddings)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from .._checks import check_int, check_real
from .base import Classifier, check_input_shape


class MLP(Classifier):
    """Flatten, then ``hidden`` blocks Linear-LayerNorm-ReLU(-Dropout), then a linear head.

    With ``hidden=()`` this is a linear (multinomial logistic) model on the flattened
    input. ``input_shape`` may be ``(d,)`` or ``(C, H, W)`` (images are flattened, so their
    size is then fixed). LayerNorm rather than BatchNorm, so that any batch size, including
    a last batch of one sample, trains.

    Args:
        input_shape: shape of one sample, ``(d,)`` or ``(C, H, W)``.
        num_classes: number of classes ``C`` (>= 1).
        hidden: widths of the hidden layers (each >= 1); empty for a linear model.
        dropout: dropout probability after each hidden layer, in ``[0, 1)``.

    Shape:
        input ``(N, *input_shape)`` -> output ``(N, num_classes)``.
    """

    fixed_input_size = True

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (512,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_shape = check_input_shape(input_shape)
        check_int("num_classes", num_classes, 1)
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise TypeError(f"hidden must be a sequence of ints, got {type(hidden).__name__}")
        widths = [check_int("hidden widths", h, 1) for h in hidden]
        dropout = check_real("dropout", dropout, 0.0, 1.0)
        if dropout == 1.0:
            raise ValueError("dropout must be in [0, 1), got 1.0")
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(self.input_shape)
        for h in widths:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.trunk = nn.Sequential(*layers)
        self.num_features = width
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.trunk(x)
