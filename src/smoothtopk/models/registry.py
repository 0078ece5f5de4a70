"""``build_model(name, num_classes, input_shape, ...)`` and the ``MODELS`` registry."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence

from torch import nn

from .base import Classifier
from .cosine import CosineClassifier
from .densenet import DenseNetBC
from .mlp import MLP
from .resnet import ResNet, load_torchvision_weights
from .small_cnn import SmallCNN


def linear(num_classes: int, input_shape: Sequence[int]) -> MLP:
    """Linear model on the flattened input (multinomial logistic regression with CE)."""
    return MLP(input_shape, num_classes, hidden=())


def mlp(
    num_classes: int, input_shape: Sequence[int], hidden: Sequence[int] = (512,),
    dropout: float = 0.0,
) -> MLP:
    """Multi-layer perceptron, see :class:`MLP`."""
    return MLP(input_shape, num_classes, hidden=hidden, dropout=dropout)


def small_cnn(num_classes: int, input_shape: Sequence[int], width: int = 32) -> SmallCNN:
    """Small CNN for 28x28 images, see :class:`SmallCNN`."""
    return SmallCNN(input_shape, num_classes, width=width)


def densenet_bc(
    num_classes: int, input_shape: Sequence[int], depth: int = 40, growth_rate: int = 40,
    compression: float = 0.5, bottleneck_width: int = 4, drop_rate: float = 0.0,
) -> DenseNetBC:
    """DenseNet-BC of any depth ``6n + 4`` and growth rate, see :class:`DenseNetBC`."""
    return DenseNetBC(input_shape, num_classes, depth=depth, growth_rate=growth_rate,
                      compression=compression, bottleneck_width=bottleneck_width,
                      drop_rate=drop_rate)


def densenet_bc_40_40(
    num_classes: int, input_shape: Sequence[int], drop_rate: float = 0.0
) -> DenseNetBC:
    """DenseNet-BC, depth 40, growth rate 40: the CIFAR-100 model of the seed."""
    return DenseNetBC(input_shape, num_classes, depth=40, growth_rate=40, drop_rate=drop_rate)


def _resnet(arch: str) -> Callable[..., ResNet]:
    def build(
        num_classes: int, input_shape: Sequence[int], small_input: bool = False,
        pretrained_weights: str | os.PathLike[str] | None = None,
    ) -> ResNet:
        model = ResNet(input_shape, num_classes, arch=arch, small_input=small_input)
        if pretrained_weights is not None:
            load_torchvision_weights(model, pretrained_weights)
        return model

    build.__name__ = arch
    build.__doc__ = (
        f"torchvision-compatible {arch}; ``pretrained_weights``: path of a local torchvision "
        "state dict, see :func:`load_torchvision_weights`."
    )
    return build


resnet18 = _resnet("resnet18")
resnet50 = _resnet("resnet50")

MODELS: dict[str, Callable[..., Classifier]] = {
    "linear": linear,
    "mlp": mlp,
    "small_cnn": small_cnn,
    "densenet_bc": densenet_bc,
    "densenet_bc_40_40": densenet_bc_40_40,
    "densenet40": densenet_bc_40_40,
    "resnet18": resnet18,
    "resnet50": resnet50,
}
"""Model builders by name; each is called as ``builder(num_classes, input_shape, **kw)``."""


def build_model(
    name: str,
    num_classes: int,
    input_shape: Sequence[int],
    cosine_head: bool = False,
    **kwargs: object,
) -> Classifier:
    """Build the model ``name`` from :data:`MODELS` for ``num_classes`` classes.

    Args:
        name: a key of :data:`MODELS` (``linear``, ``mlp``, ``small_cnn``, ``densenet_bc``,
            ``densenet_bc_40_40`` alias ``densenet40``, ``resnet18``, ``resnet50``).
        num_classes: number of classes (>= 1).
        input_shape: shape of one sample, ``(d,)`` for features or ``(C, H, W)`` for
            images (convolutional models need ``(C, H, W)``).
        cosine_head: replace the linear head ``fc`` by a :class:`CosineClassifier`
            (scores in [-1, 1], for the LDAM and imbalanced noised losses). The cosine head
            takes over the linear head's weight and drops its bias: with
            ``pretrained_weights`` whose head matches ``num_classes`` the pretrained class
            weights are reused, otherwise the head is freshly initialised.
        **kwargs: options of that model's builder (e.g. ``hidden`` for ``mlp``,
            ``small_input``/``pretrained_weights`` for the ResNets); an unknown option is a
            ``TypeError`` that lists the accepted ones.

    Returns:
        a :class:`Classifier`: ``model(x)`` gives ``(N, num_classes)`` scores,
        ``model.forward_features(x)`` the ``(N, model.num_features)`` features.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {sorted(MODELS)}")
    if not isinstance(cosine_head, bool):
        raise TypeError(f"cosine_head must be a bool, got {type(cosine_head).__name__}")
    builder = MODELS[name]
    accepted = [p for p in inspect.signature(builder).parameters
                if p not in ("num_classes", "input_shape")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"model {name!r} got unexpected option(s) {unknown}; accepted: {accepted or 'none'}"
        )
    model = builder(num_classes, input_shape, **kwargs)
    if cosine_head:
        linear_head = model.fc
        if not isinstance(linear_head, nn.Linear):
            raise TypeError(f"model {name!r} has no linear head to replace")
        head = CosineClassifier(model.num_features, num_classes)
        head.weight.data.copy_(linear_head.weight.data)
        model.fc = head
    return model
