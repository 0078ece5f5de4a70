"""Pl@ntNet-300K loader on a tiny tree in the Zenodo layout (real JPEGs, JSON metadata)."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from smoothtopk.data.folders import UnreadableImageWarning
from smoothtopk.data.plantnet import load_plantnet300k
from smoothtopk.train.datamodules import build_datamodule

# string order: "1355868" < "1364099" < "999" (class index = rank in sorted string order)
SPECIES = {"1355868": (220, 40, 40), "999": (40, 40, 220), "1364099": (40, 220, 40)}
NAMES = {"1355868": "Lactuca virosa L.", "1364099": "Cirsium arvense (L.) Scop."}
COUNTS = {"train": {"1355868": 5, "999": 1, "1364099": 3},
          "val": {"1355868": 1, "1364099": 1},
          "test": {"1355868": 1, "999": 1}}


def write_plantnet(root: Path, corrupt: bool = True) -> Path:
    """Write ``root/plantnet_300K`` with images/{train,val,test}/<species>/<id>.jpg + JSONs."""
    folder = root / "plantnet_300K"
    metadata = {}
    k = 0
    for split, per_species in COUNTS.items():
        for species, n in per_species.items():
            d = folder / "images" / split / species
            d.mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                image_id = f"{k:040x}"
                Image.new("RGB", (300 + 7 * k, 260), SPECIES[species]).save(
                    d / f"{image_id}.jpg", quality=90)
                metadata[image_id] = {"species_id": species, "split": split,
                                      "organ": "flower", "obs_id": str(k)}
                k += 1
    if corrupt:
        (folder / "images" / "train" / "1364099" / "corrupt.jpg").write_bytes(b"\xff\xd8garbage")
    (folder / "plantnet300K_species_id_2_name.json").write_text(json.dumps(NAMES))
    (folder / "plantnet300K_metadata.json").write_text(json.dumps(metadata))
    return folder


@pytest.fixture
def plantnet_root(tmp_path):
    write_plantnet(tmp_path)
    return tmp_path


def test_classes_names_and_counts(plantnet_root):
    s = load_plantnet300k(plantnet_root, resize=64, crop=56)
    assert s.class_names == ["Lactuca virosa L.", "Cirsium arvense (L.) Scop.", "999"]
    assert s.class_counts.tolist() == [5, 4, 1]  # from the listing (corrupt file included)
    assert s.val.targets.tolist() == [0, 1] and s.test.targets.tolist() == [0, 2]
    # the folder itself works as root too
    assert load_plantnet300k(plantnet_root / "plantnet_300K").class_names == s.class_names


def test_eval_images_centre_cropped_with_species_colour(plantnet_root):
    s = load_plantnet300k(plantnet_root, resize=64, crop=56)
    for i in range(len(s.test)):
        img, target = s.test[i]
        assert img.shape == (3, 56, 56)
        species = sorted(SPECIES)[target]
        colour = torch.tensor(SPECIES[species], dtype=torch.float32)
        assert torch.allclose(img.float().mean((1, 2)), colour, atol=6)


def test_datamodule_skips_corrupt_jpeg_and_reports_it(plantnet_root):
    dm = build_datamodule("plantnet300k", root=plantnet_root, batch_size=5, resize=64,
                          crop=56)
    dm.setup("fit")
    assert dm.num_classes == 3 and dm.input_shape == (3, 56, 56)
    assert dm.class_counts.dtype == torch.int64
    with pytest.warns(UnreadableImageWarning, match="corrupt.jpg"):
        batches = list(dm.train_dataloader())
    assert sum(y.numel() for _, y in batches) == 9  # 10 files in 2 batches, one unreadable
    assert all(x.shape[1:] == (3, 56, 56) and x.dtype == torch.float32 for x, _ in batches)
    assert len(dm.skipped_images) == 1 and dm.skipped_images[0].endswith("corrupt.jpg")
    # ImageNet normalisation: a pure red image maps to ((220/255 - 0.485) / 0.229, ...)
    x, y = next(iter(dm.test_dataloader()))
    red = x[y == 0].mean((0, 2, 3))
    expected = (torch.tensor([220, 40, 40]) / 255 - torch.tensor([0.485, 0.456, 0.406])) \
        / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(red, expected, atol=0.1)


def test_missing_split_and_wrong_root_fail_at_construction(plantnet_root, tmp_path_factory):
    with pytest.raises(ValueError, match="not a Pl@ntNet-300K folder"):
        build_datamodule("plantnet300k", root=tmp_path_factory.mktemp("empty"))
    with pytest.raises(ValueError, match="needs root"):
        build_datamodule("plantnet300k")
    images = plantnet_root / "plantnet_300K" / "images"
    (images / "val").rename(images / "validation")
    with pytest.raises(ValueError, match="missing split 'val'"):
        build_datamodule("plantnet300k", root=plantnet_root)
