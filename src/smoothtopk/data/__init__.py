"""Datasets: CIFAR-100, Pl@ntNet-300K, image folders, embeddings, Fashion-MNIST(-LT), synthetic.

Loaders return in-memory splits (:class:`ArraySplits`) or image-folder datasets
(:class:`ImageFolderSplits`); the Lightning data modules are in
:mod:`smoothtopk.train.datamodules` (``build_datamodule``).
"""

from .cifar100 import load_cifar100
from .fashion_mnist import load_fashion_mnist, load_fashion_mnist_lt
from .features import load_embeddings
from .folders import ImageFolderSplits, UnreadableImageWarning, load_image_folders
from .label_noise import NoisyLabels, block_groups, superclass_label_noise
from .longtail import exponential_profile, share_of_rarest
from .plantnet import load_plantnet300k
from .splits import ArraySplits, stratified_split
from .synthetic import SyntheticConfig, make_synthetic

__all__ = [
    "ArraySplits",
    "ImageFolderSplits",
    "NoisyLabels",
    "SyntheticConfig",
    "UnreadableImageWarning",
    "block_groups",
    "exponential_profile",
    "load_cifar100",
    "load_embeddings",
    "load_fashion_mnist",
    "load_fashion_mnist_lt",
    "load_image_folders",
    "load_plantnet300k",
    "make_synthetic",
    "share_of_rarest",
    "stratified_split",
    "superclass_label_noise",
]
