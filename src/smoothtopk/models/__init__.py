"""Models of the seed's experiments and for the user's own data.

``build_model(name, num_classes, input_shape, cosine_head=False, **kw)`` builds one of
:data:`MODELS`: ``linear`` and ``mlp`` (feature vectors), ``small_cnn`` (28x28 images),
``densenet_bc_40_40`` alias ``densenet40`` (CIFAR-100, Huang et al. 2017), ``densenet_bc``
(any depth/growth), ``resnet18`` and ``resnet50`` (torchvision-compatible state dicts,
``pretrained_weights=PATH`` loads a local torchvision checkpoint). Every model has a
linear head ``fc``; ``cosine_head=True`` swaps it for a :class:`CosineClassifier`.
"""

from .base import Classifier
from .cosine import CosineClassifier
from .densenet import DenseNetBC
from .mlp import MLP
from .registry import MODELS, build_model
from .resnet import ResNet, load_torchvision_weights
from .small_cnn import SmallCNN

__all__ = [
    "MLP",
    "MODELS",
    "Classifier",
    "CosineClassifier",
    "DenseNetBC",
    "ResNet",
    "SmallCNN",
    "build_model",
    "load_torchvision_weights",
]
