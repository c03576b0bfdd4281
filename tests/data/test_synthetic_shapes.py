"""The generated ``synthetic-shapes`` dataset: class structure, determinism, caching."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visprompt.data import DATASETS
from visprompt.data.datasets import synthetic_shapes as ss
from visprompt.errors import VispromptError


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("shapes") / "cache"
    return root, DATASETS.get("synthetic-shapes").read(root)


def test_registered_without_root():
    spec = DATASETS.get("synthetic-shapes")
    assert spec.needs_root is False
    assert spec.templates == ("a photo of a {}.",)


def test_class_structure(generated):
    root, data = generated
    assert data.classnames == ss.CLASSNAMES
    assert data.num_classes >= 10
    for split, (per_class, _) in ss.SPLITS.items():
        samples = getattr(data, split)
        assert Counter(s.label for s in samples) == dict.fromkeys(
            range(data.num_classes), per_class
        )
        assert all(data.classnames[s.label] == s.classname for s in samples)
        assert all(Path(s.path).is_file() and Path(s.path).is_relative_to(root) for s in samples)
    # the splits are disjoint files and images
    paths = [s.path for split in ("train", "val", "test") for s in getattr(data, split)]
    assert len(set(paths)) == len(paths)
    # groups of look-alike classes exist (so asym-semantic noise has meaning)
    for group in ss.SIMILAR_GROUPS:
        assert set(group) <= set(data.classnames)


def test_files_hold_the_generated_pixels(generated):
    _, data = generated
    images, labels = ss.generate_split("test")
    for i in (0, 77, len(labels) - 1):
        sample = data.test[i]
        assert sample.label == labels[i]
        with Image.open(sample.path) as im:
            assert im.size == (ss.IMAGE_SIZE, ss.IMAGE_SIZE)
            assert np.array_equal(np.asarray(im.convert("RGB")), images[i])


def test_second_read_generates_nothing(generated, monkeypatch):
    root, data = generated

    def fail(split):
        raise AssertionError("generated again")

    monkeypatch.setattr(ss, "generate_split", fail)
    again = ss.read(root, seed=5)
    assert again == data  # the seed does not change the splits
    assert ss.ensure_generated(root) == (root, False)
    assert not [p for p in root.parent.iterdir() if ".tmp-" in p.name]


def test_default_root_follows_visprompt_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VISPROMPT_CACHE", str(tmp_path / "c"))
    assert ss.default_root() == (tmp_path / "c" / "synthetic-shapes" / ss.VERSION).resolve()


def test_foreign_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(VispromptError, match="not a synthetic-shapes cache"):
        ss.read(tmp_path)


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def broken(split):
        calls.append(split)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return ss.generate_split.__wrapped__(split)

    broken.__wrapped__ = ss.generate_split
    monkeypatch.setattr(ss, "generate_split", broken)
    root = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        ss.read(root)
    assert not root.exists()
    assert list(tmp_path.iterdir()) == []
