"""Reading images: modes to 8-bit RGB, the pixel limit, unreadable files skipped, the threshold."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from vp_testing import rel_err

from visprompt.data.images import (
    MAX_PIXELS_ENV,
    ImageFileDataset,
    UnreadableImageWarning,
    check_unreadable,
    is_too_large,
    load_rgb,
    read_image,
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
    expected = f"cannot read image {bad}: decoding failed (OSError: image file is truncated"
    with pytest.warns(UnreadableImageWarning, match=re.escape(expected)):
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
        "2 of 100 images in split train cannot be read (first: /d/x.jpg: file not found); fix or "
        "remove them, or raise data.max_unreadable (now 0.01) to 0.02"
    )
    with pytest.raises(VispromptError, match=r"data.max_unreadable is 1.5, outside \[0, 1\]"):
        check_unreadable(bad, 100, 1.5, "train")


# ---------------------------------------------------------------- image modes


def _picture(seed: int = 3, size: tuple[int, int] = (9, 7)) -> np.ndarray:
    """An 8-bit RGB picture (H, W, 3) with every value 0..255 likely present."""
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


def _alpha(shape: tuple[int, int]) -> np.ndarray:
    """Half the pixels opaque, the rest partly or fully transparent."""
    a = np.random.default_rng(5).integers(0, 256, shape, dtype=np.uint8)
    a[::2] = 255
    return a


def _on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.rint(colour * a + 255.0 * (1.0 - a)).astype(np.uint8)


def _write_pgm16(path, values: np.ndarray) -> None:
    h, w = values.shape
    path.write_bytes(f"P5 {w} {h} 65535\n".encode() + values.astype(">u2").tobytes())


def _mode_case(mode: str, tmp_path):
    """``(file in that mode, its 8-bit RGB twin (H, W, 3), exact?)``."""
    rgb = _picture()
    g = _grey(rgb)
    path = tmp_path / f"{mode.replace(';', '_').replace(' ', '_')}"
    if mode == "I;16 png":
        Image.fromarray(g.astype(np.uint16) * 257).save(path.with_suffix(".png"))
        return path.with_suffix(".png"), np.dstack([g] * 3), True
    if mode == "I;16 tiff":
        Image.fromarray(g.astype(np.uint16) * 257).save(path.with_suffix(".tif"))
        return path.with_suffix(".tif"), np.dstack([g] * 3), True
    if mode == "I pgm":
        _write_pgm16(path.with_suffix(".pgm"), g.astype(np.uint32) * 257)
        return path.with_suffix(".pgm"), np.dstack([g] * 3), True
    if mode == "I tiff":
        Image.fromarray(g.astype(np.int32) * 257).save(path.with_suffix(".tif"))
        return path.with_suffix(".tif"), np.dstack([g] * 3), True
    if mode == "F 0..1":
        Image.fromarray(g.astype(np.float32) / 255).save(path.with_suffix(".tif"))
        return path.with_suffix(".tif"), np.dstack([g] * 3), False
    if mode == "F 0..65535":
        Image.fromarray(g.astype(np.float32) * 257).save(path.with_suffix(".tif"))
        return path.with_suffix(".tif"), np.dstack([g] * 3), False
    if mode == "CMYK":
        Image.fromarray(rgb).convert("CMYK").save(path.with_suffix(".tif"))
        return path.with_suffix(".tif"), rgb, True
    if mode in ("P", "P transparency"):
        pal = Image.fromarray(rgb).quantize(16)
        twin = np.asarray(pal.convert("RGB")).copy()
        if mode == "P transparency":
            index = int(np.asarray(pal)[0, 0])
            pal.info["transparency"] = index
            twin[np.asarray(pal) == index] = 255
        pal.save(path.with_suffix(".png"))
        return path.with_suffix(".png"), twin, True
    if mode == "LA":
        a = _alpha(g.shape)
        Image.fromarray(np.dstack([g, a]), "LA").save(path.with_suffix(".png"))
        return path.with_suffix(".png"), np.dstack([_on_white(g[..., None], a)] * 3), False
    if mode == "RGBA":
        a = _alpha(g.shape)
        Image.fromarray(np.dstack([rgb, a]), "RGBA").save(path.with_suffix(".png"))
        return path.with_suffix(".png"), _on_white(rgb, a), False
    if mode == "1":
        bits = g > 127
        Image.fromarray(bits).save(path.with_suffix(".png"))
        return path.with_suffix(".png"), np.dstack([bits.astype(np.uint8) * 255] * 3), True
    if mode == "L":
        Image.fromarray(g).save(path.with_suffix(".png"))
        return path.with_suffix(".png"), np.dstack([g] * 3), True
    raise AssertionError(mode)


MODES = ("I;16 png", "I;16 tiff", "I pgm", "I tiff", "F 0..1", "F 0..65535", "CMYK", "P",
         "P transparency", "LA", "RGBA", "1", "L")  # fmt: skip
HIGH_BIT = {"I;16 png", "I;16 tiff", "I pgm", "I tiff", "F 0..1", "F 0..65535"}


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_decodes_like_its_8bit_rgb_twin(tmp_path, mode):
    path, twin, exact = _mode_case(mode, tmp_path)
    expected_mode = mode.split()[0]
    with Image.open(path) as img:  # the file really is in that mode
        assert img.mode == expected_mode
    twin_file = tmp_path / "twin.png"
    Image.fromarray(twin, "RGB").save(twin_file)
    reference = np.asarray(load_rgb(twin_file))
    read = read_image(path)
    assert read.ok and read.image.mode == "RGB" and read.image.size == (7, 9)
    got = np.asarray(read.image)
    if exact:
        np.testing.assert_array_equal(got, reference)
    else:  # float scaling and alpha compositing round: at most one step of 255
        assert rel_err(got, reference) <= 1 / 255 + 1e-12
    assert read.high_bit_depth == (mode in HIGH_BIT)


def test_opaque_alpha_is_exactly_the_picture_and_transparent_is_white(tmp_path):
    rgb = _picture()
    opaque = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    np.testing.assert_array_equal(np.asarray(load_rgb(tmp_path / "opaque.png")), rgb)
    clear = np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])
    Image.fromarray(clear, "RGBA").save(tmp_path / "clear.png")
    assert (np.asarray(load_rgb(tmp_path / "clear.png")) == 255).all()


def test_a_dark_16bit_image_stays_dark_and_a_bright_one_is_not_clipped(tmp_path):
    for value, expected in ((100, 0), (32896, 128), (65535, 255)):
        Image.fromarray(np.full((4, 4), value, np.uint16)).save(tmp_path / "v.png")
        assert np.asarray(load_rgb(tmp_path / "v.png")).max() == expected


# ---------------------------------------------------------------- the pixel limit


def _large_png(path, side: int = 64):
    Image.fromarray(_picture(size=(side, side))).save(path)
    return path


@pytest.mark.parametrize(
    ("pil_limit", "range_name"),
    [(2500, "between 1x and 2x the limit: Pillow only warns"),
     (2000, "over 2x the limit: Pillow raises")],
)  # fmt: skip
def test_an_image_over_the_pixel_limit_says_its_size_the_limit_and_the_fix(
    tmp_path, monkeypatch, pil_limit, range_name
):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pil_limit)
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    path = _large_png(tmp_path / "big.png")  # 64 x 64 = 4096 pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning never escapes
        read = read_image(path)
    assert read.image is None, range_name
    assert read.error.startswith(
        f"image is 64x64 = 4,096 pixels, over the limit of {pil_limit:,} pixels"
    )
    assert f"set {MAX_PIXELS_ENV}=4100 (or none)" in read.error
    assert is_too_large(read.error)
    assert pil_limit == Image.MAX_IMAGE_PIXELS  # Pillow's own setting is left as it was
    with pytest.raises(VispromptError, match=r"\(first: .*big.png: image is 64x64 = 4,096 pix"):
        check_unreadable([str(path)], 10, 0.0, "train")


def test_the_pixel_limit_is_raised_or_removed_by_the_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # below 4096 / 2: Pillow would raise
    path = _large_png(tmp_path / "big.png")
    for value in ("4096", "5_000", "none"):
        monkeypatch.setenv(MAX_PIXELS_ENV, value)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            read = read_image(path)
        assert read.ok and read.image.size == (64, 64), value
    monkeypatch.setenv(MAX_PIXELS_ENV, "4095")
    assert "over the limit of 4,095 pixels" in read_image(path).error
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(VispromptError, match="VISPROMPT_MAX_IMAGE_PIXELS is 'lots', not a numb"):
        read_image(path)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_the_reasons_name_the_problem(tmp_path, image_writers):
    assert read_image(tmp_path / "nope.png").error == "file not found"
    assert read_image(tmp_path).error == "is a folder, not an image file"
    assert "unknown format" in read_image(image_writers["corrupt"](tmp_path / "b.jpg")).error
    assert "truncated" in read_image(image_writers["truncated"](tmp_path / "c.jpg")).error
