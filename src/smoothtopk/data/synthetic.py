"""Synthetic Pl@ntNet-like benchmark: many ambiguous classes with a long tail.

Generative model (all draws from one seeded ``torch.Generator``):

* ``num_classes`` classes in genera of ``genus_size`` consecutive class ids
  (class ``c`` belongs to genus ``c // genus_size``).
* Genus centres ``G_g ~ N(0, genus_spread^2 I_d)``; class centres
  ``M_c = G_g + N(0, class_spread^2 I_d)``: the species of a genus are close to each other
  (inter-class ambiguity), genera are far apart.
* Each class has ``modes_per_class`` sub-populations (think of views of a plant: flower,
  leaf, bark) at ``M_c + N(0, mode_spread^2 I_d)``; a sample picks one mode uniformly and
  adds ``N(0, I_d)`` noise: the within-class spread is wide compared with the distance
  between the species of a genus.
* Training counts per class are the quantiles of a log-normal law (median
  ``count_median``, log-standard-deviation ``count_sigma``) clipped to
  ``[count_min, count_max]``, assigned to the classes in a seeded random order (so every
  genus mixes common and rare species). Without clipping, the share of samples held by
  the 80% rarest classes would be ``Phi(Phi^-1(0.8) - sigma)``; clipping raises it
  (measure it with :func:`smoothtopk.data.longtail.share_of_rarest`).
* Validation and test follow the same profile: class ``c`` gets ``eval_ratio * n_c``
  samples in each, stochastically rounded (expected value exact), so rare classes are
  rare in every split.
* Optional genus label noise on the training labels (see
  :func:`smoothtopk.data.label_noise.superclass_label_noise`).

Defaults (:class:`SyntheticConfig`, seed 0): 200 classes in 40 genera of 5, 64-d features;
class centres of a genus about ``0.12 * sqrt(2 * 64) = 1.4`` noise standard deviations
apart, genera about 6.8 apart; 14,450 / 1,816 / 1,804 train/val/test samples; training
counts 2 .. 1000 (median 8); the 80% rarest classes hold 12.2% of the training samples
(Pl@ntNet-300K: 11%). A logistic regression reaches about 72% top-1 and 97% top-5 on the
test split (most of its errors stay inside the genus); an MLP trains in well under a
minute on one CPU thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._checks import check_int, check_real
from .label_noise import superclass_label_noise
from .longtail import share_of_rarest
from .splits import ArraySplits


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of :func:`make_synthetic` (defaults: the main job's benchmark)."""

    num_classes: int = 200
    genus_size: int = 5
    dim: int = 64
    genus_spread: float = 0.6
    class_spread: float = 0.12
    modes_per_class: int = 2
    mode_spread: float = 0.12
    count_median: float = 8.0
    count_sigma: float = 2.4
    count_min: int = 2
    count_max: int = 1000
    eval_ratio: float = 0.125
    noise_p: float = 0.0

    def __post_init__(self) -> None:
        check_int("num_classes", self.num_classes, 2)
        check_int("genus_size", self.genus_size, 1, self.num_classes)
        check_int("dim", self.dim, 1)
        check_int("modes_per_class", self.modes_per_class, 1)
        check_int("count_min", self.count_min, 1)
        check_int("count_max", self.count_max, self.count_min)
        for name in ("genus_spread", "class_spread", "mode_spread", "count_sigma"):
            check_real(name, getattr(self, name), 0.0)
        check_real("count_median", self.count_median, 0.0, low_inclusive=False)
        check_real("eval_ratio", self.eval_ratio, 0.0)
        check_real("noise_p", self.noise_p, 0.0, 1.0)


def lognormal_profile(num_classes: int, median: float, sigma: float,
                      low: int, high: int) -> Tensor:
    """Counts at the mid-quantiles ``(i + 1/2) / C`` of a log-normal law, clipped, descending."""
    q = 1.0 - (torch.arange(num_classes, dtype=torch.float64) + 0.5) / num_classes
    z = math.sqrt(2.0) * torch.erfinv(2.0 * q - 1.0)
    counts = torch.round(median * torch.exp(sigma * z))
    return counts.clamp(low, high).to(torch.int64)


def _stochastic_round(x: Tensor, generator: torch.Generator) -> Tensor:
    floor = torch.floor(x)
    return (floor + (torch.rand(x.shape, generator=generator, dtype=x.dtype) < x - floor)).long()


def genus_of_class(config: SyntheticConfig) -> Tensor:
    """Genus id of each class, int64 ``(num_classes,)``."""
    return torch.arange(config.num_classes) // config.genus_size


def make_synthetic(config: SyntheticConfig | None = None, seed: int = 0) -> ArraySplits:
    """Draw the benchmark's train/val/test features (float32 ``(N, dim)``) and labels.

    Deterministic given ``(config, seed)``. ``info`` holds the ``genus`` of every class
    (list), the measured ``share_of_rarest_80`` of the training counts and, when
    ``noise_p > 0``, the label-noise report (``y_train_clean`` keeps the clean labels).
    """
    cfg = config if config is not None else SyntheticConfig()
    check_int("seed", seed, 0)
    gen = torch.Generator().manual_seed(seed)
    c, d = cfg.num_classes, cfg.dim
    genus = genus_of_class(cfg)
    num_genera = int(genus.max()) + 1
    genus_centres = cfg.genus_spread * torch.randn(num_genera, d, generator=gen)
    class_centres = genus_centres[genus] + cfg.class_spread * torch.randn(c, d, generator=gen)
    modes = class_centres[:, None, :] + cfg.mode_spread * torch.randn(
        c, cfg.modes_per_class, d, generator=gen
    )
    profile = lognormal_profile(c, cfg.count_median, cfg.count_sigma,
                                cfg.count_min, cfg.count_max)
    train_counts = profile[torch.argsort(torch.randperm(c, generator=gen))]
    eval_mean = cfg.eval_ratio * train_counts.double()
    split_counts = [train_counts, _stochastic_round(eval_mean, gen),
                    _stochastic_round(eval_mean, gen)]

    def draw(counts: Tensor) -> tuple[Tensor, Tensor]:
        y = torch.repeat_interleave(torch.arange(c), counts)
        m = torch.randint(cfg.modes_per_class, (y.numel(),), generator=gen)
        x = modes[y, m] + torch.randn(y.numel(), d, generator=gen)
        return x, y

    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (draw(n) for n in split_counts)
    info: dict[str, object] = {
        "genus": genus.tolist(),
        "share_of_rarest_80": share_of_rarest(train_counts, 0.8),
    }
    y_clean = None
    if cfg.noise_p > 0:
        noisy = superclass_label_noise(y_tr, genus, cfg.noise_p, gen)
        y_clean, y_tr = y_tr, noisy.labels
        info.update(noisy.report())
    width = len(str(num_genera - 1))
    names = [f"genus{int(genus[k]):0{width}d}_species{k % cfg.genus_size}" for k in range(c)]
    return ArraySplits(x_tr, y_tr, x_va, y_va, x_te, y_te, names, info, y_clean)


def image_basis(dim: int, image_shape: tuple[int, int, int], seed: int = 0) -> Tensor:
    """Fixed smooth random patterns ``(dim, C*H*W)`` mapping features to images.

    Each feature direction becomes a low-frequency colour pattern (4x4 noise upsampled
    bilinearly), so a convolutional network can recover the features.
    """
    channels, height, width = image_shape
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(dim, channels, 4, 4, generator=gen)
    patterns = torch.nn.functional.interpolate(
        coarse, size=(height, width), mode="bilinear", align_corners=False
    )
    patterns = patterns.flatten(1)
    return patterns / patterns.norm(dim=1, keepdim=True) * math.sqrt(channels * height * width
                                                                     / dim)


class FeatureImages(Dataset):
    """Image-shaped view ``(x @ basis).view(C, H, W)`` of feature vectors, made on access.

    Indexing accepts an int or a 1-D index tensor/list (a whole batch at once).
    """

    def __init__(self, x: Tensor, y: Tensor, basis: Tensor,
                 image_shape: tuple[int, int, int]) -> None:
        self.x, self.y, self.basis, self.image_shape = x, y, basis, tuple(image_shape)

    def __len__(self) -> int:
        return self.y.numel()

    def __getitem__(self, index: int | list[int] | Tensor) -> tuple[Tensor, Tensor]:
        x = self.x[index] @ self.basis
        return x.view(*x.shape[:-1], *self.image_shape), self.y[index]
