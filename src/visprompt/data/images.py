"""Reading image files robustly: corrupt or missing files are reported, never fatal one by one.

A training-time reader skips an unreadable image (a zero tensor with
``ok=False`` and a warning naming the file); the caller counts them per split
and calls :func:`check_unreadable`, which fails with a clear error when more
than a configurable fraction of a split cannot be read.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import torch
from PIL import Image
from torch.utils.data import Dataset

from visprompt.data.types import Sample
from visprompt.errors import VispromptError

logger = logging.getLogger(__name__)


class UnreadableImageWarning(UserWarning):
    """An image file could not be decoded and was skipped."""


def load_rgb(path: str | Path | IO[bytes]) -> Image.Image | None:
    """Decode an image (a path or an open binary file) fully into RGB, or None if unreadable.

    Missing files, non-image bytes, truncated files and decoder errors all
    give None: the image is decoded completely (``load()``), so truncation is
    found here rather than later in a transform. Never raises for a bad file.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except Exception:  # any decoder failure (OSError, SyntaxError, ...) means "unreadable"
        return None


class ImageFileDataset(Dataset):
    """A torch Dataset over image files whose items are ``(image, index, ok)``.

    Args:
        samples: the images to read (:class:`Sample` records or plain paths).
        transform: maps an RGB PIL image to a tensor of fixed shape (e.g. one
            of :func:`visprompt.data.transforms.build_transforms`).
        placeholder_size: side of the blank image pushed through ``transform``
            to learn the output shape for unreadable files.

    An unreadable image yields a zero tensor of the transform's output shape,
    its index and ``ok=False``, and emits an :class:`UnreadableImageWarning`
    (plus a log record) naming the file; the consumer drops those rows and
    counts them.
    """

    def __init__(
        self,
        samples: Sequence[Sample | str | Path],
        transform: Callable[[Image.Image], torch.Tensor],
        placeholder_size: int = 256,
    ) -> None:
        self.paths = [s.path if isinstance(s, Sample) else str(s) for s in samples]
        self.transform = transform
        self.placeholder_size = placeholder_size
        self._blank: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def _zeros(self) -> torch.Tensor:
        if self._blank is None:
            # A private RNG state: learning the output shape must not shift the
            # augmentation stream of the images that follow.
            with torch.random.fork_rng(devices=[]):
                size = (self.placeholder_size, self.placeholder_size)
                shaped = self.transform(Image.new("RGB", size))
            self._blank = torch.zeros_like(shaped)
        return self._blank.clone()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool]:
        path = self.paths[index]
        image = load_rgb(path)
        if image is None:
            message = f"cannot read image {path}; skipping it"
            warnings.warn(message, UnreadableImageWarning, stacklevel=2)
            logger.warning(message)
            return self._zeros(), index, False
        return self.transform(image), index, True


def check_unreadable(
    bad_paths: Sequence[str], total: int, max_fraction: float, split: str
) -> float:
    """Fail when too many images of a split cannot be read; return the unreadable fraction.

    Args:
        bad_paths: the unreadable files found in this split.
        total: the number of images in the split.
        max_fraction: the largest tolerated fraction (``data.max_unreadable``).
        split: the split's name, used in the message.

    Raises:
        VispromptError: ``len(bad_paths) / total > max_fraction``, or
            ``max_fraction`` outside [0, 1].
    """
    if not 0.0 <= max_fraction <= 1.0 or math.isnan(max_fraction):
        raise VispromptError(
            f"data.max_unreadable is {max_fraction}, outside [0, 1]; set it to a fraction "
            f"such as 0.01"
        )
    if total <= 0 or not bad_paths:
        return 0.0
    fraction = len(bad_paths) / total
    if fraction > max_fraction:
        # The smallest 3-significant-digit setting that would let this split pass.
        needed = math.ceil(fraction * 1000) / 1000
        raise VispromptError(
            f"{len(bad_paths)} of {total} images in split {split} cannot be read "
            f"(first: {bad_paths[0]}); fix or remove them, or raise data.max_unreadable "
            f"(now {max_fraction:g}) to {needed:g}"
        )
    return fraction
