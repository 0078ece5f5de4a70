"""Pl@ntNet-300K from its Zenodo layout.

``plantnet_300K/images/{train,val,test}/<species_id>/<image_id>.jpg`` with
``plantnet300K_species_id_2_name.json`` (species id -> scientific name) beside
``images/``. The loader is :func:`~smoothtopk.data.folders.load_image_folders` on
``images/`` plus the names: class index = rank of the species-id folder in sorted string
order among the training folders (as the dataset authors' torchvision ``ImageFolder``);
every species of Pl@ntNet-300K has training images. A species missing from the JSON keeps
its id as name. ``plantnet300K_metadata.json`` (per-image split and species) is not
needed: the folders carry the same information.
"""

from __future__ import annotations

import json
from pathlib import Path

from .folders import ImageFolderSplits, list_classes, load_image_folders

NAMES_FILE = "plantnet300K_species_id_2_name.json"


def find_plantnet_folder(root: str | Path) -> Path:
    """``root`` or ``root/plantnet_300K``, whichever holds the ``images`` folder."""
    root = Path(root)
    for folder in (root, root / "plantnet_300K"):
        if (folder / "images").is_dir():
            return folder
    raise ValueError(
        f"root={str(root)!r} is not a Pl@ntNet-300K folder: expected 'images/' with "
        f"train, val, test subfolders in it or in its 'plantnet_300K' subfolder"
    )


def load_plantnet300k(root: str | Path, resize: int = 256, crop: int = 224) -> ImageFolderSplits:
    """Pl@ntNet-300K splits (resize the shorter side to 256, crop 224 by default)."""
    folder = find_plantnet_folder(root)
    names_path = folder / NAMES_FILE
    names = None
    if names_path.is_file():
        with open(names_path, encoding="utf-8") as f:
            id_to_name = json.load(f)
        train_dir = folder / "images" / "train"
        if train_dir.is_dir():
            names = [str(id_to_name.get(s, s)) for s in list_classes(train_dir)]
    return load_image_folders(folder / "images", resize=resize, crop=crop, class_names=names)
