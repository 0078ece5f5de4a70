"""ResNet-18 and ResNet-50 whose ``state_dict()`` has torchvision's keys and shapes.

The modules are named as in ``torchvision.models.resnet`` (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.downsample.0``, ..., ``fc``), the stride of a bottleneck
sits on its 3x3 convolution (torchvision's "ResNet V1.5") and the initialisation is
torchvision's, so a torchvision checkpoint saved to a local file loads with
:func:`load_torchvision_weights` (torchvision itself is not needed).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .._checks import check_int
from .base import Classifier, check_input_shape, init_conv_bn_


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(c_in, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4, residual (ResNet-50)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(c_in, c_out, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
    )


_BLOCKS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(Classifier):
    """ImageNet-style ResNet (He et al., CVPR 2016) with torchvision's module names.

    Args:
        input_shape: ``(C, H, W)``; 224x224 is the ImageNet setting, any size works (the
            pooling before the head is adaptive).
        num_classes: number of classes (>= 1).
        arch: ``'resnet18'`` or ``'resnet50'``.
        small_input: replace the 7x7 stride-2 stem and its max-pooling by a 3x3 stride-1
            convolution (the usual adaptation to 32x32 images). ``conv1.weight`` then has
            shape ``(64, C, 3, 3)`` instead of ``(64, C, 7, 7)``; every other key is unchanged.

    Shape:
        input ``(N, C, H, W)`` -> output ``(N, num_classes)``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        arch: str = "resnet50",
        small_input: bool = False,
    ) -> None:
        super().__init__()
        self.input_shape = check_input_shape(input_shape, image=True)
        check_int("num_classes", num_classes, 1)
        if arch not in _BLOCKS:
            raise ValueError(f"arch must be one of {sorted(_BLOCKS)}, got {arch!r}")
        if not isinstance(small_input, bool):
            raise TypeError(f"small_input must be a bool, got {type(small_input).__name__}")
        self.arch = arch
        self.small_input = small_input
        block, counts = _BLOCKS[arch]
        c_in = self.input_shape[0]
        if small_input:
            self.conv1 = nn.Conv2d(c_in, 64, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(c_in, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        channels = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), counts, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(channels, planes, stride))
                channels = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = channels
        self.fc = nn.Linear(channels, num_classes)

        init_conv_bn_(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def _list(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_torchvision_weights(model: ResNet, path: str | os.PathLike[str]) -> ResNet:
    """Load a torchvision ResNet state dict saved at ``path`` into ``model`` (in place).

    The file must hold a plain state dict (``torch.save(resnet.state_dict(), path)``, or a
    checkpoint downloaded from torchvision), read with ``weights_only=True``. Its keys must
    be exactly the model's (same architecture); a key missing from the file, an extra key
    or a shape mismatch is a ``ValueError`` that lists them. Two documented exceptions:

    - ``fc.weight``/``fc.bias`` with another number of classes (e.g. ImageNet's 1000) are
      not loaded: the head keeps its fresh initialisation and a ``UserWarning`` says so;
    - with ``small_input=True`` the file's 7x7 ``conv1.weight`` is not loaded (the 3x3
      stem keeps its initialisation).

    Returns ``model``.
    """
    if not isinstance(model, ResNet):
        raise TypeError(f"model must be a ResNet, got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"pretrained_weights must be a path, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained_weights file not found: {os.fspath(path)!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise TypeError(
            f"pretrained_weights {os.fspath(path)!r} must hold a state dict "
            "(a mapping from parameter names to tensors)"
        )
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        hint = (
            " (keys start with 'module.': strip that DataParallel prefix first)"
            if any(k.startswith("module.") for k in unexpected)
            else ""
        )
        raise ValueError(
            f"pretrained_weights {os.fspath(path)!r} does not match torchvision's "
            f"{model.arch} keys{hint}: missing [{_list(missing)}], unexpected "
            f"[{_list(unexpected)}]"
        )
    skip = set()
    if tuple(state["fc.weight"].shape) != tuple(own["fc.weight"].shape):
        skip |= {"fc.weight", "fc.bias"}
        warnings.warn(
            f"pretrained_weights has a head for {state['fc.weight'].shape[0]} classes, the "
            f"model has {own['fc.weight'].shape[0]}: fc is not loaded (fresh initialisation)",
            stacklevel=2,
        )
    if model.small_input:
        skip.add("conv1.weight")
    wrong = [
        f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})"
        for k, v in state.items()
        if k not in skip and tuple(v.shape) != tuple(own[k].shape)
    ]
    if wrong:
        raise ValueError(
            f"pretrained_weights {os.fspath(path)!r} has tensors of the wrong shape for "
            f"{model.arch}: {_list(wrong)}"
        )
    model.load_state_dict({k: v for k, v in state.items() if k not in skip}, strict=False)
    return model
