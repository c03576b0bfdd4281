"""Reading image files robustly: corrupt or missing files are reported, never fatal one by one.

A training-time reader skips an unreadable image (a zero tensor with
``ok=False`` and a warning naming the file and why); the caller counts them per
split and calls :func:`check_unreadable`, which fails with a clear error when
more than a configurable fraction of a split cannot be read.

How pixels become 8-bit RGB (:func:`read_image`, :func:`load_rgb`):

* ``RGB``, ``L`` (grey), ``1`` (black and white), ``P`` (palette), ``CMYK``,
  ``YCbCr``: Pillow's own conversion (exact for all but CMYK, which uses the
  plain ``255 - ink`` formula; embedded colour profiles are ignored).
* Transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, a palette or grey/RGB image
  with a ``transparency`` colour): composited over **white**, as a viewer shows
  it on a white page; Pillow's ``convert("RGB")`` would instead show whatever
  colour the transparent pixels happen to store (often black). Fully opaque
  pixels keep their colour exactly.
* High bit depth, scaled from the format's full range to 0..255 (rounded)
  instead of being clipped at 255 (which turns a 16-bit picture white):
  16-bit grey (``I;16*``, e.g. 16-bit PNG/TIFF): ``v / 257``; 32-bit integer
  (``I``, Pillow's mode for 16-bit PGM and int TIFF): taken as 16-bit data,
  ``v / 257``, clipped to 0..65535; 32-bit float (``F``): by the values' range,
  0..1 when the largest value is at most 1 (``v * 255``), else 0..255 when it
  is at most 255, else 0..65535 (``v / 257``); negatives and NaN become 0.
  Such images are counted (``ImageRead.high_bit_depth``) so ``datasets
  check`` can say how many were converted. 16-bit RGB PNGs are reduced to 8
  bits by Pillow itself (the high byte: exact for ``v8 * 257`` data).

Decompression bombs: an image with more than :func:`max_image_pixels` pixels
(Pillow's ``Image.MAX_IMAGE_PIXELS``, 89,478,485 by default, or the
``VISPROMPT_MAX_IMAGE_PIXELS`` environment variable) is not decoded; its
error names its size, the limit and the variable to raise it
(``VISPROMPT_MAX_IMAGE_PIXELS=none`` removes the limit). Pillow's own check
(an error above twice its limit, only a ``DecompressionBombWarning`` between
one and two times) is replaced by this single rule: above the limit, refused.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from visprompt.data.types import Sample
from visprompt.errors import VispromptError

logger = logging.getLogger(__name__)

#: Environment variable overriding the largest image (in pixels) that is decoded.
MAX_PIXELS_ENV = "VISPROMPT_MAX_IMAGE_PIXELS"

#: Modes with more than 8 bits per sample, scaled to 8 bits (see the module docstring).
HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_WHITE = (255, 255, 255, 255)
#: Pillow's size check reads a module global; it is switched off only while one of
#: our threads opens a file (header only), and our own limit decides instead.
_OPEN_LOCK = threading.Lock()


class UnreadableImageWarning(UserWarning):
    """An image file could not be decoded and was skipped."""


def _limit_from(pil_limit: int | None) -> int | None:
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "").replace(",", "")
    if not raw:
        return pil_limit
    if raw.lower() in ("none", "unlimited"):
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise VispromptError(
            f"{MAX_PIXELS_ENV} is {os.environ[MAX_PIXELS_ENV]!r}, not a number of pixels; set it "
            f"to a whole number such as 200000000, or to none for no limit"
        )
    return int(raw)


def max_image_pixels() -> int | None:
    """The largest image, in pixels, that is decoded (None: no limit).

    ``$VISPROMPT_MAX_IMAGE_PIXELS`` (a whole number of pixels, or ``none``)
    when set, else Pillow's ``Image.MAX_IMAGE_PIXELS`` (89,478,485 by default).

    Raises:
        VispromptError: the variable is set to something else.
    """
    with _OPEN_LOCK:
        return _limit_from(Image.MAX_IMAGE_PIXELS)


def _suggested_limit(pixels: int) -> int:
    """A round number of pixels at least ``pixels`` (two significant digits)."""
    step = 10 ** max(0, len(str(pixels)) - 2)
    return -(-pixels // step) * step


_BOMB_GUARD = "(a guard against decompression bombs)"


def too_large_message(width: int, height: int, limit: int) -> str:
    """Why an image over the pixel limit is not decoded, and how to allow it."""
    pixels = width * height
    return (
        f"image is {width}x{height} = {pixels:,} pixels, over the limit of {limit:,} pixels "
        f"{_BOMB_GUARD}; if it is a genuine large image, set "
        f"{MAX_PIXELS_ENV}={_suggested_limit(pixels)} (or none) or downscale it"
    )


def is_too_large(error: str) -> bool:
    """Whether an :class:`ImageRead` error says the image is over the pixel limit."""
    return _BOMB_GUARD in error


@dataclass(frozen=True)
class ImageRead:
    """The outcome of reading one image file.

    Attributes:
        image: the decoded RGB image, or None when it could not be read.
        error: why it could not be read (one phrase, no path; '' when read).
        high_bit_depth: the pixels had more than 8 bits (16-bit, 32-bit integer
            or float) and were scaled to 8 bits.
    """

    image: Image.Image | None
    error: str = ""
    high_bit_depth: bool = False

    @property
    def ok(self) -> bool:
        return self.image is not None


def _to_8bit(img: Image.Image) -> Image.Image:
    """A high-bit-depth single-channel image scaled to mode ``L`` (module docstring)."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        finite = values[np.isfinite(values)]
        top = float(finite.max()) if finite.size else 0.0
        scale = 255.0 if top <= 1.0 else 1.0 if top <= 255.0 else 1.0 / 257.0
        values = np.nan_to_num(values, nan=0.0, posinf=top, neginf=0.0) * scale
    else:  # I;16* and I: 16-bit data
        values = np.clip(values, 0, 65535) / 257.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def to_rgb(img: Image.Image) -> tuple[Image.Image, bool]:
    """``(the image as 8-bit RGB, whether it had high bit depth)`` by the module's rules."""
    if img.mode in HIGH_BIT_MODES:
        return _to_8bit(img).convert("RGB"), True
    palette_alpha = img.mode == "P" and img.palette is not None and "A" in img.palette.mode
    if palette_alpha or ("transparency" in img.info and img.mode in ("P", "L", "RGB")):
        img = img.convert("RGBA")  # the transparent colour (or palette alpha) becomes alpha
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, _WHITE)
        return Image.alpha_composite(white, rgba).convert("RGB"), False
    return img.convert("RGB"), False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a folder, not an image file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file (unknown format)"
    text = " ".join(str(exc).split())[:120]
    return f"decoding failed ({type(exc).__name__}: {text})" if text else type(exc).__name__


def read_image(path: str | Path | IO[bytes]) -> ImageRead:
    """Decode an image (a path or an open binary file) fully into 8-bit RGB.

    Never raises for a bad file: a missing file, non-image bytes, a truncated
    file, a decoder error or an image over :func:`max_image_pixels` gives
    ``image=None`` and the reason in ``error``. The image is decoded completely
    (``load()``), so truncation is found here rather than later in a transform.
    Modes are converted as the module docstring describes.

    Raises:
        VispromptError: only for a malformed ``$VISPROMPT_MAX_IMAGE_PIXELS``.
    """
    with _OPEN_LOCK:
        pil_limit = Image.MAX_IMAGE_PIXELS
        limit = _limit_from(pil_limit)
        Image.MAX_IMAGE_PIXELS = None  # opening reads the header only: quick
        try:
            img = Image.open(path)
        except Exception as exc:
            return ImageRead(None, _describe(exc))
        finally:
            Image.MAX_IMAGE_PIXELS = pil_limit
    try:
        with img:
            width, height = img.size
            if limit is not None and width * height > limit:
                return ImageRead(None, too_large_message(width, height, limit))
            if pil_limit is not None and width * height > pil_limit:
                # allowed by our limit, not by Pillow's: its checks while decoding
                # (GIF frames) must not refuse it
                with _OPEN_LOCK:
                    Image.MAX_IMAGE_PIXELS = None
                    try:
                        img.load()
                    finally:
                        Image.MAX_IMAGE_PIXELS = pil_limit
            else:
                img.load()
            rgb, high = to_rgb(img)
            return ImageRead(rgb, "", high)
    except Image.DecompressionBombError:  # a frame bigger than the canvas
        return ImageRead(
            None, f"an image frame is over the pixel limit {_BOMB_GUARD}; set {MAX_PIXELS_ENV}"
        )
    except Exception as exc:  # any decoder failure (OSError, SyntaxError, ...) means "unreadable"
        return ImageRead(None, _describe(exc))


def load_rgb(path: str | Path | IO[bytes]) -> Image.Image | None:
    """Decode an image fully into 8-bit RGB, or None if unreadable (see :func:`read_image`)."""
    return read_image(path).image


def unreadable_reason(path: str | Path) -> str:
    """Why ``path`` cannot be read ('' when it can): :func:`read_image`'s error."""
    return read_image(path).error


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
        read = read_image(path)
        image = read.image
        if image is None:
            message = f"cannot read image {path}: {read.error}; skipping it"
            warnings.warn(message, UnreadableImageWarning, stacklevel=2)
            logger.warning(message)
            return self._zeros(), index, False
        return self.transform(image), index, True


def check_unreadable(
    bad_paths: Sequence[str],
    total: int,
    max_fraction: float,
    split: str,
    reasons: Sequence[str] | None = None,
) -> float:
    """Fail when too many images of a split cannot be read; return the unreadable fraction.

    Args:
        bad_paths: the unreadable files found in this split.
        total: the number of images in the split.
        max_fraction: the largest tolerated fraction (``data.max_unreadable``).
        split: the split's name, used in the message.
        reasons: why each of ``bad_paths`` cannot be read (:class:`ImageRead`
            ``error``); when not given, the first file is read again to name
            its problem in the error (e.g. its size, for an image over the
            pixel limit).

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
        why = reasons[0] if reasons else unreadable_reason(bad_paths[0])
        raise VispromptError(
            f"{len(bad_paths)} of {total} images in split {split} cannot be read "
            f"(first: {bad_paths[0]}: {why or 'unreadable'}); fix or remove them, or raise "
            f"data.max_unreadable (now {max_fraction:g}) to {needed:g}"
        )
    return fraction
