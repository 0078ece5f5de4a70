"""DenseNet-BC for 32x32 images (Huang et al., CVPR 2017), as used on CIFAR-100.

"DenseNet 40-40" in Berrada et al. (ICLR 2018) and Garcin et al. (ICML 2022) is the
DenseNet-BC of depth 40 and growth rate 40: three dense blocks of six bottleneck layers,
compression 0.5 at the two transitions, a first 3x3 convolution with twice the growth
rate. It has 1,941,620 parameters with 100 classes (1,901,930 with 10).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._checks import check_int, check_real
from .base import Classifier, check_input_shape, init_conv_bn_


class _DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1 (``bottleneck_width * k`` maps), BN-ReLU-Conv3x3 (``k`` maps),
    output concatenated to the input."""

    def __init__(self, c_in: int, growth_rate: int, bottleneck_width: int, drop_rate: float):
        super().__init__()
        inner = bottleneck_width * growth_rate
        self.norm1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, inner, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, growth_rate, kernel_size=3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.dropout(self.conv1(self.relu(self.norm1(x))))
        out = self.dropout(self.conv2(self.relu(self.norm2(out))))
        return torch.cat([x, out], dim=1)


class _Transition(nn.Sequential):
    """BN-ReLU-Conv1x1 (compression) then 2x2 average pooling."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_in, c_out, kernel_size=1, bias=False),
            nn.AvgPool2d(2),
        )


class DenseNetBC(Classifier):
    """DenseNet-BC for small images: 3 dense blocks of ``(depth - 4) / 6`` bottleneck layers.

    Layout (Huang et al., 2017, CIFAR models): 3x3 conv to ``2k`` maps; dense block;
    transition (1x1 conv to ``floor(compression * c)`` maps, 2x2 average pool); dense
    block; transition; dense block; BN-ReLU; global average pooling; linear head.
    Spatial sizes on CIFAR: 32, 16, 8.

    Args:
        input_shape: ``(C, H, W)``, ``H, W >= 4`` (the paper's setting is ``(3, 32, 32)``).
        num_classes: number of classes (>= 1).
        depth: total depth ``L``; ``L - 4`` must be a positive multiple of 6.
        growth_rate: ``k``, maps added by each layer (>= 1).
        compression: ``θ`` in ``(0, 1]`` applied at the transitions.
        bottleneck_width: the 1x1 bottleneck produces ``bottleneck_width * k`` maps.
        drop_rate: dropout after each convolution of a dense layer, in ``[0, 1)``.

    Shape:
        input ``(N, C, H, W)`` -> output ``(N, num_classes)``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        depth: int = 40,
        growth_rate: int = 40,
        compression: float = 0.5,
        bottleneck_width: int = 4,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_shape = check_input_shape(input_shape, image=True, min_size=4)
        check_int("num_classes", num_classes, 1)
        check_int("depth", depth, 10)
        if (depth - 4) % 6 != 0:
            raise ValueError(
                f"depth must be 6n + 4 (3 blocks of n bottleneck layers of 2 convolutions, "
                f"plus 4), e.g. 40, 100, 190, 250; got {depth}"
            )
        k = check_int("growth_rate", growth_rate, 1)
        theta = check_real("compression", compression, 0.0, 1.0, low_inclusive=False)
        bw = check_int("bottleneck_width", bottleneck_width, 1)
        drop_rate = check_real("drop_rate", drop_rate, 0.0, 1.0)
        if drop_rate == 1.0:
            raise ValueError("drop_rate must be in [0, 1), got 1.0")
        n_layers = (depth - 4) // 6

        channels = 2 * k
        self.conv1 = nn.Conv2d(self.input_shape[0], channels, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for block in range(3):
            layers = []
            for _ in range(n_layers):
                layers.append(_DenseLayer(channels, k, bw, drop_rate))
                channels += k
            stages.append(nn.Sequential(*layers))
            if block < 2:
                out = max(1, math.floor(theta * channels))
                stages.append(_Transition(channels, out))
                channels = out
        self.blocks = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = channels
        self.fc = nn.Linear(channels, num_classes)

        init_conv_bn_(self)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm(self.blocks(self.conv1(x))))
        return torch.flatten(self.pool(out), 1)
