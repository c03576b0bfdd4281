"""The image-folder reader: train/test(/val) class folders, seeded val hold-out."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest

from visprompt.data import DATASETS
from visprompt.errors import VispromptError

read = DATASETS.get("folder").read


def test_reads_train_val_test_with_mixed_case_extensions(make_folder):
    root = make_folder(train=5, test=2, val=3)
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    splits = read(root)
    assert splits.classnames == ("ant", "bee", "cat")
    assert splits.sizes() == {"train": 15, "val": 9, "test": 6}
    assert {s.path.rsplit(".", 1)[1] for s in splits.train} == {"png", "JPG", "jpeg"}
    assert all(s.path.startswith(str(root)) for s in splits.train)


def test_without_val_a_seeded_fifth_of_train_becomes_val(make_folder):
    root = make_folder(train=10, test=2)
    a = read(root, seed=1)
    assert Counter(s.label for s in a.val) == {0: 2, 1: 2, 2: 2}
    assert len(a.train) == 24
    assert not {s.path for s in a.train} & {s.path for s in a.val}
    assert read(root, seed=1) == a  # same seed, same split
    others = [{s.path for s in read(root, seed=seed).val} for seed in range(2, 7)]
    assert any(o != {s.path for s in a.val} for o in others)


def test_val_holdout_takes_one_image_from_a_class_of_two(make_folder):
    root = make_folder(train=2, test=1)
    assert read(root).sizes() == {"train": 3, "val": 3, "test": 3}


def test_val_holdout_leaves_a_class_of_one_alone(make_folder):
    root = make_folder(train=1, test=1)
    assert read(root).sizes() == {"train": 3, "val": 0, "test": 3}


def test_class_missing_from_test_is_fine(make_folder):
    root = make_folder()
    shutil.rmtree(root / "test" / "cat")
    splits = read(root)
    assert splits.num_classes == 3 and {s.label for s in splits.test} == {0, 1}


def test_class_in_test_unknown_to_train(make_folder):
    root = make_folder()
    shutil.copytree(root / "test" / "cat", root / "test" / "dog")
    with pytest.raises(VispromptError, match="class folder .*test/dog has no counterpart in"):
        read(root)


@pytest.mark.parametrize("split", ["train", "test"])
def test_missing_train_or_test_folder(make_folder, split):
    root = make_folder()
    shutil.rmtree(root / split)
    with pytest.raises(VispromptError) as exc:
        read(root)
    assert f"folder {root / split} not found; expected layout: DIR/train/<class>/" in str(exc.value)


def test_missing_root_and_empty_class(make_folder, tmp_path):
    with pytest.raises(VispromptError, match="root folder .* does not exist"):
        read(tmp_path / "missing")
    root = make_folder()
    (root / "train" / "empty_class").mkdir()
    with pytest.raises(VispromptError, match="train/empty_class has no images"):
        read(root)
