"""A small convolutional network for 28x28 images (Fashion-MNIST) and smoke tests."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .._checks import check_int
from .base import Classifier, check_input_shape


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(Classifier):
    """Three stages of 3x3 conv-BN-ReLU (widths ``w, 2w, 4w``), 2x2 max-pooling between
    them, global average pooling and a linear head.

    Made for 28x28 grey images (about 0.14M parameters at ``width=32`` with 10 classes),
    but any image of at least 4x4 pixels works.

    Args:
        input_shape: ``(C, H, W)``.
        num_classes: number of classes (>= 1).
        width: channels of the first stage (>= 1).

    Shape:
        input ``(N, C, H, W)`` -> output ``(N, num_classes)``.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.input_shape = check_input_shape(input_shape, image=True, min_size=4)
        check_int("num_classes", num_classes, 1)
        w = check_int("width", width, 1)
        self.trunk = nn.Sequential(
            *_conv_bn_relu(self.input_shape[0], w),
            *_conv_bn_relu(w, w),
            nn.MaxPool2d(2),
            *_conv_bn_relu(w, 2 * w),
            *_conv_bn_relu(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *_conv_bn_relu(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.num_features = 4 * w
        self.fc = nn.Linear(4 * w, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.trunk(x)
