"""The feature cache follows the images' contents: edits, fixes and removals are never stale."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from vp_testing import rel_err

from visprompt.backbone import load_backbone
from visprompt.data import features as features_mod
from visprompt.data.features import FeatureCache, FeatureExtractor
from visprompt.data.types import Sample


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor(load_backbone(name="tiny-vit", device="cpu"), progress=False)


def _picture(path, seed: int) -> None:
    """A 40 x 40 BMP: every picture of that size has the same file size."""
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="BMP")


@pytest.fixture
def images(tmp_path) -> list[Sample]:
    folder = tmp_path / "images"
    folder.mkdir()
    paths = [folder / f"{i}.bmp" for i in range(4)]
    for i, p in enumerate(paths):
        _picture(p, seed=i)
    return [Sample(path=str(p), label=0, classname="x") for p in paths]


def _fresh(extractor, samples, num_views=0):
    return extractor.extract(samples, num_views=num_views)


def _replace_keeping_size_and_mtime(path: str, seed: int) -> None:
    st = os.stat(path)
    _picture(path, seed=seed)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize("num_views", [0, 2])
def test_an_image_replaced_in_place_is_encoded_afresh(tmp_path, extractor, images, num_views):
    cache = FeatureCache(extractor, root=tmp_path / "cache")
    first = cache.get(images, num_views)
    assert torch.equal(cache.get(images, num_views).image, first.image)  # unchanged: a hit
    assert (cache.misses, cache.hits) == (1, 1)
    _replace_keeping_size_and_mtime(images[1].path, seed=99)
    second = cache.get(images, num_views)
    fresh = _fresh(extractor, images, num_views)
    assert cache.misses == 2
    assert rel_err(second.image[1], first.image[1]) > 0.05  # a different picture
    assert rel_err(second.image, fresh.image) < 1e-6
    if num_views:
        assert rel_err(second.views, fresh.views) < 1e-6
    assert torch.equal(second.image[[0, 2, 3]], first.image[[0, 2, 3]])


def test_an_unreadable_image_fixed_in_place_is_read_and_a_removed_one_never_served(
    tmp_path, extractor, images
):
    cache = FeatureCache(extractor, root=tmp_path / "cache")
    broken = Path(images[2].path)
    good = broken.read_bytes()
    broken.write_bytes(b"not an image" * 100)
    first = cache.get(images)
    assert first.ok.tolist() == [True, True, False, True]
    assert first.errors[2] == "not an image file (unknown format)"
    again = cache.get(images)  # from disk: the reason comes back with the entry
    assert cache.hits == 1 and again.errors == first.errors
    broken.write_bytes(good)
    fixed = cache.get(images)
    assert fixed.ok.all() and rel_err(fixed.image, _fresh(extractor, images).image) < 1e-6
    os.remove(images[0].path)
    gone = cache.get(images)
    assert gone.ok.tolist() == [False, True, True, True] and gone.errors[0] == "file not found"
    assert torch.count_nonzero(gone.image[0]) == 0


def test_the_index_skips_hashing_unchanged_files_and_misses_edited_ones(
    tmp_path, extractor, images, monkeypatch
):
    hashed: list[str] = []
    real = features_mod.content_hash
    monkeypatch.setattr(features_mod, "content_hash", lambda p: hashed.append(p) or real(p))
    cache = FeatureCache(extractor, root=tmp_path / "cache")
    cache.get(images)  # files written a moment ago: not settled, no index record
    assert len(hashed) == 4 and not (tmp_path / "cache" / "index").exists()
    monkeypatch.setattr(features_mod, "SETTLE_SECONDS", 0.0)
    cache.get(images)  # hashed again, now recorded
    assert len(hashed) == 8 and list((tmp_path / "cache" / "index").rglob("*.json"))
    hashed.clear()
    cache.get(images)
    assert hashed == [] and cache.misses == 1 and cache.hits == 2
    _replace_keeping_size_and_mtime(images[3].path, seed=7)  # only the change time moves
    replaced = cache.get(images)
    assert len(hashed) == 4 and cache.misses == 2
    assert rel_err(replaced.image, _fresh(extractor, images).image) < 1e-6


def test_the_same_images_elsewhere_share_the_entry(tmp_path, extractor, images):
    cache = FeatureCache(extractor, root=tmp_path / "cache")
    first = cache.get(images)
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "images", moved)
    there = [Sample(str(moved / os.path.basename(s.path)), 0, "x") for s in images]
    assert torch.equal(cache.get(there).image, first.image) and cache.misses == 1


def test_cache_files_follow_the_umask(tmp_path, extractor, images, monkeypatch):
    monkeypatch.setattr(features_mod, "SETTLE_SECONDS", 0.0)
    old = os.umask(0o022)
    try:
        FeatureCache(extractor, root=tmp_path / "cache").get(images)
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert {p.suffix for p in files} == {".safetensors", ".json"}
    assert {p.stat().st_mode & 0o777 for p in files} == {0o644}
