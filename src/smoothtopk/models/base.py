"""Common shape of every classifier in :mod:`smoothtopk.models`: a trunk and a head ``fc``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .._checks import check_int


def check_input_shape(
    input_shape: object, *, image: bool = False, min_size: int = 1
) -> tuple[int, ...]:
    """``input_shape`` is ``(d,)`` for feature vectors or ``(C, H, W)`` for images.

    With ``image=True`` only ``(C, H, W)`` is accepted, with ``H, W >= min_size``.
    Returns the shape as a tuple of ints.
    """
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise TypeError(
            "input_shape must be a tuple of ints, (d,) or (C, H, W), got "
            f"{type(input_shape).__name__}"
        )
    allowed = "(C, H, W)" if image else "(d,) or (C, H, W)"
    if len(input_shape) not in ((3,) if image else (1, 3)):
        raise ValueError(f"input_shape must be {allowed} for this model, got {input_shape!r}")
    shape = tuple(check_int("input_shape entries", v, 1) for v in input_shape)
    if image and min(shape[1:]) < min_size:
        raise ValueError(
            f"input_shape (C, H, W) must have H, W >= {min_size} for this model, got {shape}"
        )
    return shape


class Classifier(nn.Module):
    """Base class: ``forward(x) = fc(forward_features(x))``.

    Subclasses set ``input_shape``, ``num_features`` (the width of the features fed to
    the head) and ``fc`` (an ``nn.Linear`` or a :class:`CosineClassifier`) and implement
    :meth:`forward_features`. ``forward`` checks the input's trailing shape: models with
    ``fixed_input_size`` (those that flatten their input) need exactly ``input_shape``;
    convolutional models need the channel count and accept any height and width.
    """

    input_shape: tuple[int, ...]
    num_features: int
    fc: nn.Module
    fixed_input_size: bool = False

    def forward_features(self, x: Tensor) -> Tensor:
        """Features of shape ``(N, num_features)`` before the classification head."""
        raise NotImplementedError

    def _check_input(self, x: Tensor) -> None:
        shape = tuple(x.shape)
        if len(self.input_shape) == 3 and not self.fixed_input_size:
            ok = len(shape) == 4 and shape[1] == self.input_shape[0]
            expected = f"(N, {self.input_shape[0]}, H, W)"
        else:
            ok = shape[1:] == self.input_shape
            expected = f"(N, {', '.join(map(str, self.input_shape))})"
        if not ok:
            raise ValueError(f"input must have shape {expected}, got {shape}")

    def forward(self, x: Tensor) -> Tensor:
        """Scores of shape ``(N, num_classes)``."""
        self._check_input(x)
        return self.fc(self.forward_features(x))


def init_conv_bn_(model: nn.Module) -> None:
    """He (fan-out) initialisation of every conv layer, unit/zero BatchNorm affine parameters."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
