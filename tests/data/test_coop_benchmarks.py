"""CoOp benchmarks: every layout reads, and every broken layout gives a one-line error."""

from __future__ import annotations

import json
import os

import pytest

from visprompt.data import DATASETS
from visprompt.data.datasets.coop_benchmarks import BENCHMARKS
from visprompt.errors import VispromptError

NAMES = [b.name for b in BENCHMARKS]
TEMPLATES = {
    "caltech101": "a photo of a {}.",
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "ucf101": "a photo of a person doing {}.",
}
FOLDERS = {
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "oxford_flowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
}


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", NAMES)
def test_every_benchmark_reads_its_coop_layout(make_coop, name):
    data = make_coop(name, counts=(4, 2, 3))
    spec = DATASETS.get(name)
    splits = spec.read(data)
    assert splits.num_classes == 3
    assert splits.classnames == ("ANT", "BEE", "CAT")  # names come from the split file
    assert splits.sizes() == {"train": 12, "val": 6, "test": 9}
    folder, image_dir, split_file = FOLDERS[name]
    assert spec.templates == (TEMPLATES[name],)
    assert f"DATA/{folder}/{image_dir}/" in spec.layout and split_file in spec.layout
    first = splits.train[0]
    assert os.path.isabs(first.path) and os.path.exists(first.path)
    assert first.path == str(data / folder / image_dir / "ant" / "ant_train_0.jpg")
    assert all(s.label == splits.classnames.index(s.classname) for s in splits.test)


def test_root_may_be_the_benchmark_folder_itself(make_coop):
    data = make_coop("eurosat")
    direct = DATASETS.get("eurosat").read(data / "eurosat")
    assert direct == DATASETS.get("eurosat").read(data)


def test_missing_root_folder(tmp_path):
    with pytest.raises(VispromptError) as exc:
        DATASETS.get("dtd").read(tmp_path / "nowhere")
    assert "root folder" in one_line(exc) and "does not exist" in str(exc.value)


def test_no_root_given():
    with pytest.raises(VispromptError, match="needs a root folder; pass --root DIR"):
        DATASETS.get("dtd").read(None)


def test_missing_dataset_folder_names_it_and_the_layout(tmp_path):
    with pytest.raises(VispromptError) as exc:
        DATASETS.get("caltech101").read(tmp_path)
    msg = one_line(exc)
    assert f"dataset folder {tmp_path / 'caltech-101'} not found" in msg
    assert "DATA/caltech-101/101_ObjectCategories/" in msg
    assert "split_zhou_Caltech101.json" in msg


def test_missing_split_file(make_coop):
    data = make_coop("oxford_pets")
    split = data / "oxford_pets" / "split_zhou_OxfordPets.json"
    split.unlink()
    with pytest.raises(VispromptError) as exc:
        DATASETS.get("oxford_pets").read(data)
    assert f"split file {split} not found" in one_line(exc)
    assert "expected layout: DATA/oxford_pets/images/" in str(exc.value)


def test_missing_image_folder(make_coop, tmp_path):
    data = make_coop("oxford_flowers")
    (data / "oxford_flowers" / "jpg").rename(tmp_path / "elsewhere")
    with pytest.raises(VispromptError) as exc:
        DATASETS.get("oxford_flowers").read(data)
    assert f"image folder {data / 'oxford_flowers' / 'jpg'} not found" in one_line(exc)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "is malformed (not valid JSON"),
        ("[1, 2, 3]", "is malformed (a JSON list, not a dict)"),
        (json.dumps({"train": [], "test": []}), "is malformed (it lacks the 'val' key)"),
        (json.dumps({"train": [], "val": {}, "test": []}), "has no list under the 'val' key"),
        (
            json.dumps({"train": [["a/x.jpg", 0]], "val": [], "test": []}),
            "'train' entry 0 is [\"a/x.jpg\", 0], not [path, label, classname]",
        ),
        (
            json.dumps({"train": [["a/x.jpg", "0", "a"]], "val": [], "test": []}),
            "not [path, label, classname]",
        ),
    ],
)
def test_malformed_split_file(make_coop, content, fragment):
    data = make_coop("dtd")
    split = data / "dtd" / "split_zhou_DescribableTextures.json"
    split.write_text(content)
    with pytest.raises(VispromptError) as exc:
        DATASETS.get("dtd").read(data)
    msg = one_line(exc)
    assert fragment in msg
    assert "a JSON dict with train/val/test lists of [path, label, classname]" in msg


def test_split_pointing_at_missing_images(make_coop):
    data = make_coop("ucf101")
    image_dir = data / "ucf101" / "UCF-101-midframes"
    (image_dir / "bee" / "bee_val_1.jpg").unlink()
    (image_dir / "cat" / "cat_test_0.jpg").unlink()
    with pytest.raises(VispromptError) as exc:
        DATASETS.get("ucf101").read(data)
    msg = one_line(exc)
    assert "2 of 24 images listed in split file" in msg
    assert f"(first: {image_dir / 'bee' / 'bee_val_1.jpg'})" in msg
    assert f"check that {image_dir} holds the complete image set" in msg


@pytest.mark.parametrize(
    ("relabel", "fragment"),
    [
        ({2: 3}, "are not contiguous 0..K-1 (3 distinct labels in 0..3, no samples with label 2)"),
        ({0: 1, 1: 2, 2: 3}, "not contiguous 0..K-1 (3 distinct labels in 1..3, no samples with"),
        ({0: -1}, "negative label -1"),
    ],
)
def test_non_contiguous_labels(make_coop, relabel, fragment):
    data = make_coop("caltech101")
    split_path = data / "caltech-101" / "split_zhou_Caltech101.json"
    split = json.loads(split_path.read_text())
    for entries in split.values():
        for entry in entries:
            entry[1] = relabel.get(entry[1], entry[1])
    split_path.write_text(json.dumps(split))
    with pytest.raises(VispromptError) as exc:
        DATASETS.get("caltech101").read(data)
    assert fragment in one_line(exc)


def test_one_label_two_class_names(make_coop):
    data = make_coop("eurosat")
    split_path = data / "eurosat" / "split_zhou_EuroSAT.json"
    split = json.loads(split_path.read_text())
    split["test"][0][2] = "Wrong Name"
    split_path.write_text(json.dumps(split))
    with pytest.raises(VispromptError, match="label 0 in split file .* has two class names"):
        DATASETS.get("eurosat").read(data)
