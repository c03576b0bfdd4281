"""Transforms: CoOp's train/test pipelines, checked against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from vp_testing import rel_err

from visprompt.data.transforms import build_transforms, transform_spec
from visprompt.errors import VispromptError

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def image(w: int = 50, h: int = 30) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_test_transform_is_resize_center_crop_normalize():
    _, test_tf = build_transforms(24, MEAN, STD)
    img = image()
    out = test_tf(img)
    # Direct computation: shorter side -> 24 (bicubic), centre crop, /255, normalise.
    resized = img.resize((40, 24), Image.Resampling.BICUBIC)
    crop = np.asarray(resized.crop((8, 0, 32, 24)), dtype=np.float32) / 255.0
    expected = (torch.from_numpy(crop).permute(2, 0, 1) - torch.tensor(MEAN)[:, None, None]) / (
        torch.tensor(STD)[:, None, None]
    )
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    assert rel_err(out, expected) < 1e-6


def test_train_transform_is_random_but_seeded():
    train_tf, _ = build_transforms(16, MEAN, STD)
    img = image()
    torch.manual_seed(0)
    a = train_tf(img)
    torch.manual_seed(0)
    b = train_tf(img)
    c = train_tf(img)
    assert a.shape == (3, 16, 16)
    torch.testing.assert_close(a, b)
    assert not torch.equal(b, c)


def test_spec_describes_the_pipelines_and_changes_with_settings():
    spec = transform_spec(224, MEAN, STD)
    assert spec["train"][0] == {
        "op": "random_resized_crop",
        "scale": [0.08, 1.0],
        "ratio": [0.75, 1.333333],
        "interpolation": "bicubic",
    }
    assert [op["op"] for op in spec["test"]] == [
        "resize_shorter",
        "center_crop",
        "to_tensor",
        "normalize",
    ]
    assert transform_spec(224, MEAN, STD) == spec
    assert transform_spec(224, (0.5000000001, 0.4, 0.3), STD) == spec
    assert transform_spec(336, MEAN, STD) != spec
    assert transform_spec(224, MEAN, (0.2, 0.2, 0.2)) != spec


@pytest.mark.parametrize(("size", "std"), [(0, STD), (16, (0.1, 0.0, 0.1)), (16, (1.0,))])
def test_bad_settings(size, std):
    with pytest.raises(VispromptError):
        build_transforms(size, MEAN, std)
