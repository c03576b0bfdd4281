"""Image transforms with CoOp/Dassl's defaults, built from torchvision's v2 transforms.

- train: RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3/4, 4/3), bicubic)
  -> RandomHorizontalFlip(0.5) -> to float tensor in [0, 1] -> Normalize(mean, std);
- test: Resize(size, bicubic) on the shorter side -> CenterCrop(size) -> to float
  tensor -> Normalize(mean, std).

Augmentations draw from torch's global RNG (seed it, or each DataLoader worker,
for reproducible views). :func:`transform_spec` describes both pipelines as a
plain dict for cache keys: a cache built with other transforms is never reused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from visprompt.errors import VispromptError

#: Dassl's ``INPUT.RRCROP_SCALE`` default and torchvision's default aspect ratios.
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
#: Bumped whenever the pipelines below change, so old caches stop matching.
TRANSFORM_VERSION = 1


def _to_tensor() -> list:
    # v2 spells ToTensor as ToImage + ToDtype(scale=True): same values, no deprecation.
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True)]


def _check(image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise VispromptError(f"image size {image_size!r} is not a positive integer; fix it")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise VispromptError(
            f"image mean {tuple(mean)} / std {tuple(std)} must be 3 numbers each, std > 0; fix them"
        )


def _check_crop_scale(crop_scale: Sequence[float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in crop_scale)
    if not 0.0 < lo <= hi <= 1.0:
        raise VispromptError(
            f"crop scale {tuple(crop_scale)} must satisfy 0 < min <= max <= 1 (fractions of "
            f"the image area); use e.g. {list(CROP_SCALE)}"
        )
    return lo, hi


def build_transforms(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: Sequence[float] = CROP_SCALE,
) -> tuple[Callable, Callable]:
    """``(train_transform, test_transform)`` mapping an RGB PIL image to a (3, S, S) tensor.

    Args:
        image_size: output side S (the backbone's input resolution).
        mean: per-channel mean for normalisation (the backbone's).
        std: per-channel standard deviation (the backbone's).
        crop_scale: (min, max) area fraction of the random resized crop;
            Dassl's ``INPUT.RRCROP_SCALE`` default (0.08, 1.0).

    Raises:
        VispromptError: a non-positive size, mean/std not three numbers, or a
            crop scale outside 0 < min <= max <= 1.
    """
    _check(image_size, mean, std)
    crop_scale = _check_crop_scale(crop_scale)
    normalize = T.Normalize(mean=list(mean), std=list(std))
    bicubic = InterpolationMode.BICUBIC
    train = T.Compose(
        [
            T.RandomResizedCrop(
                image_size, scale=crop_scale, ratio=CROP_RATIO, interpolation=bicubic
            ),
            T.RandomHorizontalFlip(p=0.5),
            *_to_tensor(),
            normalize,
        ]
    )
    test = T.Compose(
        [
            T.Resize(image_size, interpolation=bicubic),
            T.CenterCrop(image_size),
            *_to_tensor(),
            normalize,
        ]
    )
    return train, test


def transform_spec(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: Sequence[float] = CROP_SCALE,
) -> dict:
    """A JSON-friendly description of :func:`build_transforms`' pipelines (for cache keys).

    Floats are rounded to 6 decimals so that equal settings written differently
    (``0.48145466`` vs ``0.481454660``) give the same key.
    """
    _check(image_size, mean, std)
    crop_scale = _check_crop_scale(crop_scale)
    return {
        "version": TRANSFORM_VERSION,
        "image_size": image_size,
        "mean": [round(float(m), 6) for m in mean],
        "std": [round(float(s), 6) for s in std],
        "train": [
            {
                "op": "random_resized_crop",
                "scale": [round(v, 6) for v in crop_scale],
                "ratio": [round(r, 6) for r in CROP_RATIO],
                "interpolation": "bicubic",
            },
            {"op": "horizontal_flip", "p": 0.5},
            {"op": "to_tensor"},
            {"op": "normalize"},
        ],
        "test": [
            {"op": "resize_shorter", "interpolation": "bicubic"},
            {"op": "center_crop"},
            {"op": "to_tensor"},
            {"op": "normalize"},
        ],
    }
