"""Batched crop/flip augmentation and normalisation."""

import math

import pytest
import torch

from smoothtopk.data.transforms import ImageBatchTransform, normalize, random_crop_flip


def _reference_crops(image, padding):
    """Every (dy, dx, flip) crop of ``image`` padded with zeros, by loops."""
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=image.dtype)
    padded[:, padding:padding + h, padding:padding + w] = image
    out = {}
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            out[(dy, dx, False)] = crop
            out[(dy, dx, True)] = crop.flip(-1)
    return out


def test_each_output_is_a_padded_crop_possibly_flipped():
    images = torch.rand(64, 3, 8, 8) + 1.0  # no zeros, so padding is identifiable
    out = random_crop_flip(images, padding=2, generator=torch.Generator().manual_seed(0))
    seen = set()
    for img, res in zip(images, out, strict=True):
        matches = [key for key, crop in _reference_crops(img, 2).items()
                   if torch.equal(crop, res)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 20  # samples get their own offsets


def test_flip_and_offsets_are_uniform():
    n, pad = 20000, 1
    images = torch.arange(9.0).view(1, 1, 3, 3).expand(n, 1, 3, 3) + 1
    out = random_crop_flip(images, padding=pad, generator=torch.Generator().manual_seed(1))
    # centre pixel of the crop tells the offset and the flip: out centre = padded[1+dy, 1+dx']
    centre = out[:, 0, 1, 1]
    freq = torch.bincount(centre.long(), minlength=10).double()[1:] / n
    # offsets (dy, dx) uniform in {0,1,2}^2; flipping maps column dx to 2-dx, still uniform
    se = math.sqrt((1 / 9) * (8 / 9) / n)
    assert bool(((freq - 1 / 9).abs() <= 3 * se).all()), freq
    # without padding, a row's first pixel exceeds its last exactly when the image is flipped
    rows = random_crop_flip(images, padding=0, generator=torch.Generator().manual_seed(2))
    flipped = float((rows[:, 0, 1, 0] > rows[:, 0, 1, 2]).double().mean())
    assert abs(flipped - 0.5) <= 3 * math.sqrt(0.25 / n)
    assert torch.equal(random_crop_flip(images, padding=0, flip=False), images)


def test_no_padding_no_flip_is_identity():
    x = torch.rand(4, 3, 5, 5)
    assert torch.equal(random_crop_flip(x, padding=0, flip=False), x)


def test_normalize_per_channel():
    x = torch.rand(10, 3, 4, 4)
    out = normalize(x, (0.1, 0.2, 0.3), (0.5, 1.0, 2.0))
    torch.testing.assert_close(out[:, 2], (x[:, 2] - 0.3) / 2.0)
    with pytest.raises(ValueError, match="one entry per channel"):
        normalize(x, (0.1,), (1.0,))
    with pytest.raises(ValueError, match="4-D"):
        random_crop_flip(torch.rand(3, 4, 4))


def test_batch_transform_scales_and_augments_only_when_asked():
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(16)
    plain = ImageBatchTransform((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x, y = plain((images, labels))
    torch.testing.assert_close(x, (images.float() / 255 - 0.5) / 0.25)
    assert torch.equal(y, labels)
    torch.manual_seed(0)
    augmented, _ = ImageBatchTransform((0.5,) * 3, (0.25,) * 3, augment=True)((images, labels))
    assert augmented.shape == x.shape and not torch.equal(augmented, x)
