"""Food-101N: noisy web train from class folders, Food-101's val/test from the CoOp split."""

from __future__ import annotations

import shutil

import pytest

from visprompt.data import DATASETS
from visprompt.errors import VispromptError

FOOD = ("apple_pie", "baby_back_ribs", "caesar_salad")


def test_reads_train_from_food101n_and_test_from_food101(make_food101n):
    data = make_food101n(noisy_per_class=5)
    spec = DATASETS.get("food101n")
    splits = spec.read(data)
    assert splits.real_noise
    assert spec.templates == ("a photo of {}, a type of food.",)
    assert splits.classnames == FOOD
    assert splits.sizes() == {"train": 15, "val": 6, "test": 6}
    assert all("/food101n/images/" in s.path for s in splits.train)
    assert all("/food-101/images/" in s.path for s in splits.val + splits.test)
    for s in splits.train:  # label = the Food-101 label of the class folder
        assert f"/images/{FOOD[s.label]}/" in s.path and s.classname == FOOD[s.label]


@pytest.mark.parametrize("folder", ["food-101n", "Food-101N_release"])
def test_accepts_the_other_folder_names(make_food101n, folder):
    data = make_food101n(folder=folder)
    assert DATASETS.get("food101n").read(data).sizes()["train"] == 15
    # ... and a root pointing at the Food-101N folder itself.
    assert DATASETS.get("food101n").read(data / folder).sizes()["train"] == 15


def test_missing_food101n_folder(make_food101n):
    data = make_food101n()
    shutil.rmtree(data / "food101n")
    with pytest.raises(VispromptError) as exc:
        DATASETS.get("food101n").read(data)
    msg = str(exc.value)
    assert f"Food-101N folder {data / 'food101n'} not found" in msg
    assert "DATA/food101n/images/<class>/*.jpg" in msg and "split_zhou_Food101.json" in msg


def test_missing_food101_test_set(make_food101n):
    data = make_food101n()
    shutil.rmtree(data / "food-101")
    with pytest.raises(VispromptError, match="Food-101 folder .*food-101 not found"):
        DATASETS.get("food101n").read(data)


def test_missing_food101_split_file(make_food101n):
    data = make_food101n()
    (data / "food-101" / "split_zhou_Food101.json").unlink()
    with pytest.raises(VispromptError, match="split file .*split_zhou_Food101.json not found"):
        DATASETS.get("food101n").read(data)


def test_unknown_and_missing_class_folders(make_food101n):
    data = make_food101n()
    images = data / "food101n" / "images"
    (images / "caesar_salad").rename(images / "pizza_typo")
    with pytest.raises(VispromptError, match="pizza_typo is not a Food-101 class"):
        DATASETS.get("food101n").read(data)
    shutil.rmtree(images / "pizza_typo")
    with pytest.raises(VispromptError, match="caesar_salad not found \\(1 of 3 classes missing"):
        DATASETS.get("food101n").read(data)


def test_missing_test_image(make_food101n):
    data = make_food101n()
    (data / "food-101" / "images" / "apple_pie" / "test1.jpg").unlink()
    with pytest.raises(VispromptError, match="1 of 12 images listed in split file"):
        DATASETS.get("food101n").read(data)
