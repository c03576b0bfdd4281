"""Unreadable images: load_rgb never raises, the Dataset skips with a warning, the threshold."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from visprompt.data.images import (
    ImageFileDataset,
    UnreadableImageWarning,
    check_unreadable,
    load_rgb,
)
from visprompt.data.transforms import build_transforms
from visprompt.data.types import Sample
from visprompt.errors import VispromptError

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def test_load_rgb_reads_good_images_and_returns_none_for_bad_ones(tmp_path, image_writers):
    good = image_writers["ok"](tmp_path / "a.png")
    gray = tmp_path / "g.png"
    Image.new("L", (5, 7), 128).save(gray)
    img = load_rgb(gray)
    assert img is not None and img.mode == "RGB" and img.size == (5, 7)
    assert load_rgb(good).mode == "RGB"
    assert load_rgb(image_writers["corrupt"](tmp_path / "bad.jpg")) is None
    assert load_rgb(image_writers["truncated"](tmp_path / "cut.jpg")) is None
    assert load_rgb(tmp_path / "does_not_exist.png") is None
    assert load_rgb(tmp_path) is None  # a folder


def test_dataset_yields_zero_tensor_and_warns_naming_the_file(tmp_path, image_writers):
    good = image_writers["ok"](tmp_path / "a.png", size=40)
    bad = image_writers["truncated"](tmp_path / "cut.jpg")
    _, test_tf = build_transforms(32, MEAN, STD)
    ds = ImageFileDataset([Sample(str(good), 0, "a"), str(bad)], test_tf)
    image, index, ok = ds[0]
    assert image.shape == (3, 32, 32) and index == 0 and ok
    with pytest.warns(UnreadableImageWarning, match=f"cannot read image {bad}; skipping it"):
        image, index, ok = ds[1]
    assert image.shape == (3, 32, 32) and index == 1 and ok is False
    assert torch.count_nonzero(image) == 0


def test_dataloader_batches_carry_the_ok_flag(tmp_path, image_writers):
    paths = [image_writers["ok"](tmp_path / f"{i}.png", seed=i, size=36) for i in range(3)]
    paths.insert(1, image_writers["corrupt"](tmp_path / "bad.jpg"))
    train_tf, _ = build_transforms(16, MEAN, STD)
    loader = DataLoader(ImageFileDataset(paths, train_tf), batch_size=4)
    with pytest.warns(UnreadableImageWarning):
        images, index, ok = next(iter(loader))
    assert images.shape == (4, 3, 16, 16)
    assert index.tolist() == [0, 1, 2, 3] and ok.tolist() == [True, False, True, True]


def test_unreadable_placeholder_does_not_shift_the_augmentation_stream(tmp_path, image_writers):
    good = image_writers["ok"](tmp_path / "a.png", size=40)
    bad = image_writers["corrupt"](tmp_path / "bad.jpg")
    train_tf, _ = build_transforms(16, MEAN, STD)
    torch.manual_seed(0)
    expected = ImageFileDataset([good], train_tf)[0][0]
    torch.manual_seed(0)
    ds = ImageFileDataset([bad, good], train_tf)
    with pytest.warns(UnreadableImageWarning):
        ds[0]
    torch.testing.assert_close(ds[1][0], expected)


def test_check_unreadable_threshold():
    bad = ["/d/x.jpg", "/d/y.jpg"]
    assert check_unreadable([], 100, 0.0, "train") == 0.0
    assert check_unreadable(bad, 100, 0.02, "train") == 0.02  # at the threshold: fine
    with pytest.raises(VispromptError) as exc:
        check_unreadable(bad, 100, 0.01, "train")
    assert str(exc.value) == (
        "2 of 100 images in split train cannot be read (first: /d/x.jpg); fix or remove them, "
        "or raise data.max_unreadable (now 0.01) to 0.02"
    )
    with pytest.raises(VispromptError, match=r"data.max_unreadable is 1.5, outside \[0, 1\]"):
        check_unreadable(bad, 100, 1.5, "train")
