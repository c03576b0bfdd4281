"""`datasets list` / `datasets check` back ends: names, sizes, unreadable images, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from visprompt.data.check import check_dataset, format_check, list_datasets
from visprompt.errors import VispromptError

SUPPORTED = (
    "caltech101",
    "oxford_pets",
    "oxford_flowers",
    "dtd",
    "eurosat",
    "ucf101",
    "food101n",
    "folder",
    "csv",
)


def test_list_names_every_supported_dataset_with_a_description():
    rows = dict(list_datasets())
    assert set(SUPPORTED) <= set(rows)
    assert all(rows[name] for name in SUPPORTED)
    assert "real web label noise" in rows["food101n"] and "Food-101 test" in rows["food101n"]
    assert "train/, test/ and optional val/" in rows["folder"]
    assert "seeded 20%" in rows["folder"]
    assert "path,label[,split]" in rows["csv"]


def test_check_coop_benchmark_counts_and_formats(make_coop):
    data = make_coop("dtd", counts=(4, 2, 3))
    check = check_dataset("dtd", data)
    assert check.num_classes == 3
    assert check.sizes == {"train": 12, "val": 6, "test": 9}
    assert check.ok and check.verified and check.smallest_class == ("ANT", 4)
    text = format_check(check)
    assert text.splitlines()[:3] == [
        f"dataset dtd at {data}",
        "classes: 3",
        "train: 12  val: 6  test: 9",
    ]
    assert "images: all 27 readable" in text


def test_check_counts_and_lists_unreadable_images(make_coop, image_writers):
    data = make_coop("eurosat")
    image_dir = data / "eurosat" / "2750"
    bad = image_writers["corrupt"](image_dir / "ant" / "ant_train_1.jpg")
    cut = image_writers["truncated"](image_dir / "cat" / "cat_test_0.jpg")
    check = check_dataset("eurosat", data, progress=False)
    assert check.unreadable == {"train": [str(bad)], "val": [], "test": [str(cut)]}
    assert check.num_unreadable == 2 and not check.ok
    text = format_check(check)
    assert "unreadable images: 2 (train: 1, test: 1)" in text
    assert f"  {bad}" in text and f"  {cut}" in text
    quick = check_dataset("eurosat", data, verify_images=False)
    assert quick.ok and "not decoded" in format_check(quick)


def test_check_every_user_layout(make_food101n, make_folder, make_csv, csv_rows_fn):
    food = check_dataset("food101n", make_food101n(noisy_per_class=4))
    assert (food.num_classes, food.sizes) == (3, {"train": 12, "val": 6, "test": 6})
    assert food.real_noise and "real noise" in format_check(food)
    folder = check_dataset("folder", make_folder(train=5, test=2), seed=2)
    assert folder.sizes == {"train": 12, "val": 3, "test": 6}
    rows = csv_rows_fn({"cat": 4}, "train") + csv_rows_fn({"cat": 1}, "test")
    assert check_dataset("csv", make_csv(rows)).sizes == {"train": 3, "val": 1, "test": 1}


def test_unknown_name_and_missing_root(tmp_path):
    with pytest.raises(VispromptError) as exc:
        check_dataset("imagenet", tmp_path)
    assert str(exc.value).startswith("unknown dataset 'imagenet'; choose one of: caltech101")
    with pytest.raises(VispromptError, match="root folder .*nope does not exist"):
        check_dataset("caltech101", tmp_path / "nope")
    with pytest.raises(VispromptError, match="dataset folder .*caltech-101 not found"):
        check_dataset("caltech101", tmp_path)


def test_check_counts_high_bit_depth_and_too_large_images(make_folder, monkeypatch):
    root = make_folder(train=3, test=1)  # 8 x 8 images
    deep = np.full((8, 8), 40000, np.uint16)
    Image.fromarray(deep).save(root / "train" / "ant" / "img0.png")  # 16-bit grey
    Image.fromarray(deep.astype(np.float32) / 65535).save(root / "test" / "bee" / "f.tif")
    big = root / "train" / "cat" / "img1.JPG"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(big, format="JPEG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 16 x 16 = 256: over 2x the limit
    monkeypatch.delenv("VISPROMPT_MAX_IMAGE_PIXELS", raising=False)
    check = check_dataset("folder", root, seed=1)
    assert check.num_high_bit_depth == 2 and check.num_unreadable == 1
    assert sum(check.high_bit_depth.values()) == 2 and check.num_too_large == 1
    assert check.reasons[str(big)].startswith("image is 16x16 = 256 pixels, over the limit of 100")
    text = format_check(check)
    assert "high-bit-depth images: 2 (" in text and "scaled to 8 bits" in text
    assert f"  {big}: image is 16x16 = 256 pixels" in text
    assert "1 of them over the pixel limit: set VISPROMPT_MAX_IMAGE_PIXELS" in text
    monkeypatch.setenv("VISPROMPT_MAX_IMAGE_PIXELS", "256")
    allowed = check_dataset("folder", root, seed=1)
    assert allowed.ok and allowed.num_high_bit_depth == 2
