"""Generic image folders: decoding, resizing/cropping, skipping unreadable files."""

import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image, JpegImagePlugin

from smoothtopk.data.folders import (
    ImageFolderDataset,
    SkippingCollate,
    SkippingDataLoader,
    UnreadableImageWarning,
    load_image,
    load_image_folders,
)

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "emu": (30, 30, 200)}


def write_folder_tree(root: Path, counts: dict[str, dict[str, int]], size=(80, 60),
                      ext=".jpg") -> Path:
    """``root/<split>/<class>/<i>.jpg`` images of a flat class colour with a white stripe."""
    for split, per_class in counts.items():
        for name, n in per_class.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                im = Image.new("RGB", size, COLOURS.get(name, (128, 128, 128)))
                im.paste((255, 255, 255), (0, 0, size[0], 4))
                im.save(folder / f"{i}{ext}", quality=95)
    return root


def tree(tmp_path):
    return write_folder_tree(tmp_path / "imgs", {
        "train": {"dog": 3, "cat": 4, "emu": 1},
        "val": {"cat": 1, "dog": 1},
        "test": {"emu": 2},
    })


def test_class_index_is_sorted_folder_name_and_counts(tmp_path):
    s = load_image_folders(tree(tmp_path), resize=32, crop=24)
    assert s.class_names == ["cat", "dog", "emu"]
    assert s.class_counts.tolist() == [4, 3, 1]
    assert s.class_counts.dtype == torch.int64
    assert s.val.targets.tolist() == [0, 1] and s.test.targets.tolist() == [2, 2]
    img, target = s.val[1]
    assert img.shape == (3, 24, 24) and img.dtype == torch.uint8 and target == 1


def test_resize_then_centre_crop_keeps_content(tmp_path):
    path = tmp_path / "wide.png"
    im = Image.new("RGB", (120, 60), (0, 0, 0))
    im.paste((255, 255, 255), (50, 0, 70, 60))  # white band in the middle third
    im.save(path)
    out = load_image(path, resize=30, crop=30, random_crop=False)
    assert out.shape == (3, 30, 30)
    # resized to 60x30, centre 30x30 crop: the band (25..35 of 60) sits at columns 10..20
    assert out[:, :, 13:17].float().mean() > 240 and out[:, :, :6].float().mean() < 15


def test_random_crop_positions_vary(tmp_path):
    path = tmp_path / "grad.png"
    Image.linear_gradient("L").convert("RGB").resize((200, 100)).save(path)
    torch.manual_seed(0)
    crops = {tuple(load_image(path, 50, 40, random_crop=True)[0, :, 0].tolist())
             for _ in range(20)}
    assert len(crops) > 3
    centre = {tuple(load_image(path, 50, 40, random_crop=False)[0, :, 0].tolist())
              for _ in range(3)}
    assert len(centre) == 1


def test_jpeg_draft_decodes_at_reduced_size(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (1600, 1200), (10, 120, 240)).save(path, quality=95)
    calls = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        calls.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    out = load_image(path, resize=64, crop=56, random_crop=False)
    assert len(calls) == 1
    requested, decoded = calls[0]
    assert requested == (86, 64)
    assert decoded == (200, 150)  # 1/8-scale DCT decoding, still >= the requested size
    assert torch.allclose(out.float().mean((1, 2)), torch.tensor([10.0, 120.0, 240.0]), atol=4)


def test_unreadable_image_is_skipped_warned_and_counted(tmp_path):
    root = tree(tmp_path)
    bad = root / "train" / "cat" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    s = load_image_folders(root, resize=32, crop=24)
    assert len(s.train) == 9
    loader = SkippingDataLoader(s.train, batch_size=4, collate_fn=SkippingCollate((0.5,) * 3,
                                                                                  (0.5,) * 3))
    with pytest.warns(UnreadableImageWarning, match="broken.jpg"):
        labels = torch.cat([y for _, y in loader])
    assert labels.numel() == 8
    assert s.train.skipped == [str(bad)]
    assert sorted(labels.tolist()) == [0] * 4 + [1] * 3 + [2]


def test_unreadable_image_is_counted_with_workers(tmp_path):
    root = tree(tmp_path)
    bad = root / "train" / "dog" / "truncated.jpg"
    data = (root / "train" / "dog" / "0.jpg").read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    s = load_image_folders(root, resize=32, crop=24)
    loader = SkippingDataLoader(s.train, batch_size=3, num_workers=2,
                                collate_fn=SkippingCollate((0.5,) * 3, (0.5,) * 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        n = sum(y.numel() for _, y in loader)
    assert n == 8 and s.train.skipped == [str(bad)]
    assert any("truncated.jpg" in str(w.message) for w in caught
               if issubclass(w.category, UnreadableImageWarning))


def test_bad_folders(tmp_path):
    root = tree(tmp_path)
    with pytest.raises(ValueError, match="is not a folder"):
        load_image_folders(tmp_path / "nowhere")
    (root / "test" / "emu" / "0.jpg").unlink()
    (root / "test" / "emu" / "1.jpg").unlink()
    (root / "test" / "emu").rmdir()
    (root / "test").rmdir()
    with pytest.raises(ValueError, match="missing split 'test'"):
        load_image_folders(root)
    (root / "test" / "yak").mkdir(parents=True)
    with pytest.raises(ValueError, match="not among the training classes"):
        load_image_folders(root)
    with pytest.raises(ValueError, match=r"crop must be in \[1, 16\]"):
        ImageFolderDataset(root / "train", ["cat"], train=True, resize=16, crop=20)
