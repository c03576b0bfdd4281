"""A user's own images in class folders: ``train/``, ``test/`` and optional ``val/``.

Layout under ``--root DIR``::

    DIR/train/<class>/*.jpg     one sub-folder per class (nested folders are fine)
    DIR/test/<class>/*.jpg      a class may be absent from test, not unknown to train
    DIR/val/<class>/*.jpg       optional

Class names are the sorted sub-folder names of ``train/`` (label = position).
Without ``val/``, a seeded 20% of every training class (at least one image when
the class has two or more) becomes val; the seed is the run seed. Images are
recognised by extension, case-insensitively (.jpg .jpeg .png .bmp .gif .tif
.tiff .webp .ppm .pgm).
"""

from __future__ import annotations

from pathlib import Path

from visprompt.data.datasets._common import (
    IMAGE_EXTENSIONS,
    class_folders,
    list_images,
    require_root,
    seeded_holdout,
    sort_samples,
)
from visprompt.data.registry import register_dataset
from visprompt.data.types import DatasetSpec, DatasetSplits, Sample
from visprompt.errors import VispromptError

LAYOUT = (
    "expected layout: DIR/train/<class>/*.jpg, DIR/test/<class>/*.jpg and optional "
    "DIR/val/<class>/*.jpg (one sub-folder per class), with --root DIR"
)
_EXTS = " ".join(sorted(IMAGE_EXTENSIONS))


def _read_split(root: Path, split: str, classnames: tuple[str, ...] | None) -> list[Sample]:
    """Samples of one split folder; ``classnames`` None means this is train (defines them)."""
    folder = root / split
    names = class_folders(folder)
    if not names:
        raise VispromptError(f"folder {folder} has no class sub-folders; {LAYOUT}")
    if classnames is None:
        classnames = tuple(names)
    index = {name: i for i, name in enumerate(classnames)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise VispromptError(
            f"class folder {folder / unknown[0]} has no counterpart in {root / 'train'} "
            f"({len(unknown)} such classes); add the class to train/ or remove it from {split}/"
        )
    samples = []
    for name in names:
        paths = list_images(folder / name)
        if not paths and split == "train":
            raise VispromptError(
                f"class folder {folder / name} has no images (extensions {_EXTS}); add images "
                f"or remove the folder"
            )
        samples.extend(Sample(path=p, label=index[name], classname=name) for p in paths)
    return samples


def read_folder(root: str | Path | None, seed: int = 1) -> DatasetSplits:
    """Read an image-folder dataset.

    Args:
        root: the folder holding ``train/`` and ``test/`` (and maybe ``val/``).
        seed: seeds the 20% val hold-out when there is no ``val/``.

    Raises:
        VispromptError: root, ``train/`` or ``test/`` missing; no class
            folders; an empty training class; a val/test class unknown to train;
            an empty test split.
    """
    path = require_root(root, "folder", LAYOUT)
    for split in ("train", "test"):
        if not (path / split).is_dir():
            raise VispromptError(f"folder {path / split} not found; {LAYOUT}")
    train = _read_split(path, "train", None)
    classnames = tuple(class_folders(path / "train"))
    test = _read_split(path, "test", classnames)
    if not test:
        raise VispromptError(f"folder {path / 'test'} has no images (extensions {_EXTS}); {LAYOUT}")
    if (path / "val").is_dir():
        val = _read_split(path, "val", classnames)
    else:
        train, val = seeded_holdout(train, seed=seed, stream=0, min_class_size=2)
    return DatasetSplits(
        name="folder",
        classnames=classnames,
        train=sort_samples(train),
        val=sort_samples(val),
        test=sort_samples(test),
    )


register_dataset(
    DatasetSpec(
        name="folder",
        description=(
            "your images: train/, test/ and optional val/ with one sub-folder per class "
            "(no val/: a seeded 20% of train)"
        ),
        layout=LAYOUT,
        read=read_folder,
    )
)
