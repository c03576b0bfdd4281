"""``synthetic-shapes``: a generated few-shot classification task, no download needed.

Fourteen shape classes (:data:`visprompt.data.synthetic.SHAPES`) drawn from
:data:`~visprompt.data.synthetic.DOWNSTREAM_WORLD`: the same world the shipped
``demo-tiny`` backbone was pretrained on, under a shift: a coarser camera
(pictures rendered at 16 x 16 pixels and stored at 32 x 32 in 2 x 2 blocks, so
the backbone sees pixelated shapes it never saw in pretraining), colours
independent of shapes (pretraining showed each shape in a habitual colour half
of the time), backgrounds the backbone never saw, more clutter and occlusion. Several
classes come in visually and semantically close groups (circle/ellipse/ring,
square/rectangle/diamond, pentagon/hexagon, star/cross), so ``asym-semantic``
label noise has meaning.

The images are generated on first use as PNG files into a cache folder
(``root`` when given, else ``$VISPROMPT_CACHE/synthetic-shapes/<version>``,
``VISPROMPT_CACHE`` defaulting to ``~/.cache/visprompt``), and only if that
folder does not hold them already. Generation writes to a temporary folder that
is renamed into place at the end, so an interrupted run never leaves a half
dataset behind. Contents are a fixed function of :data:`VERSION`: every split
(train pool, val, test) is the same on every machine and for every run seed;
few-shot sampling draws from the train pool with the run seed later.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from visprompt.data.registry import register_dataset
from visprompt.data.synthetic import DOWNSTREAM_WORLD, SHAPES, generate_class_balanced
from visprompt.data.types import DatasetSpec, DatasetSplits, Sample, resolve_root
from visprompt.errors import VispromptError

NAME = "synthetic-shapes"
#: Bump when the generator or the split sizes change: the cache path includes it.
VERSION = "v3"
CLASSNAMES: tuple[str, ...] = SHAPES
#: Pixels per side (the demo backbone's input size, so no resizing happens).
IMAGE_SIZE = 32
#: Images per class and the generator seed of each split.
SPLITS: dict[str, tuple[int, int]] = {
    "train": (64, 1001),
    "val": (16, 2002),
    "test": (50, 3003),
}
#: Groups of classes that look alike (documentation; noise uses text similarity).
SIMILAR_GROUPS: tuple[tuple[str, ...], ...] = (
    ("circle", "ellipse", "ring"),
    ("square", "rectangle", "diamond"),
    ("pentagon", "hexagon"),
    ("star", "cross"),
    ("heart", "crescent"),
)
MANIFEST = "manifest.json"


def default_root() -> Path:
    """``$VISPROMPT_CACHE/synthetic-shapes/<version>`` (cache default ``~/.cache/visprompt``)."""
    cache = os.environ.get("VISPROMPT_CACHE") or "~/.cache/visprompt"
    return Path(cache).expanduser().resolve() / NAME / VERSION


def generate_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images ``(n, 32, 32, 3)`` uint8 and labels ``(n,)`` of one split, in memory."""
    per_class, seed = SPLITS[split]
    images, labels, _ = generate_class_balanced(
        per_class, seed=seed, world=DOWNSTREAM_WORLD, size=IMAGE_SIZE, shapes=CLASSNAMES
    )
    return images, labels


def relative_paths(split: str, labels: Sequence[int]) -> list[str]:
    """``<split>/<class>/<nnn>.png``: the file name of each image of a split, in order.

    Images are numbered per class in generation order. Code that works on the
    in-memory split (:func:`generate_split`) uses these names to draw the same
    few-shot images as a run on the files (sampling sorts each class by path).
    """
    counts = dict.fromkeys(range(len(CLASSNAMES)), 0)
    paths = []
    for label in labels:
        label = int(label)
        paths.append(f"{split}/{CLASSNAMES[label]}/{counts[label]:03d}.png")
        counts[label] += 1
    return paths


def _write(folder: Path) -> None:
    entries: dict[str, list[list]] = {}
    for split in SPLITS:
        images, labels = generate_split(split)
        rows = []
        for image, label, rel in zip(images, labels, relative_paths(split, labels), strict=True):
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / rel, compress_level=1)
            rows.append([rel, int(label)])
        entries[split] = rows
    manifest = {
        "name": NAME,
        "version": VERSION,
        "image_size": IMAGE_SIZE,
        "classnames": list(CLASSNAMES),
        "splits": entries,
    }
    # The manifest is written last: a folder with a manifest is complete.
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _load_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise VispromptError(
            f"{path} is unreadable; delete {folder} and it will be generated again"
        ) from None
    if manifest.get("name") != NAME or manifest.get("version") != VERSION:
        raise VispromptError(
            f"{folder} holds {manifest.get('name')} {manifest.get('version')}, not {NAME} "
            f"{VERSION}; delete it or choose another root, and it will be generated again"
        )
    return manifest


def ensure_generated(folder: Path) -> tuple[Path, bool]:
    """Generate the dataset into ``folder`` unless it is already there.

    Returns:
        ``(folder, generated)``: ``generated`` is False when the files were
        already in place.

    Raises:
        VispromptError: ``folder`` exists, is not empty and is not a
            synthetic-shapes cache of this version.
    """
    folder = Path(folder)
    if _load_manifest(folder) is not None:
        return folder, False
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise VispromptError(
            f"{folder} exists and is not a {NAME} cache; give an empty or new folder as root"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        _write(tmp)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        try:
            os.replace(tmp, folder)
        except OSError:
            # Another process finished the same generation first: use its copy.
            if _load_manifest(folder) is None:
                raise
            return folder, False
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder, True


def read(root: str | Path | None = None, seed: int = 1) -> DatasetSplits:  # noqa: ARG001
    """The synthetic-shapes splits, generating the PNG files first if needed.

    Args:
        root: folder holding (or to hold) the generated files; default
            :func:`default_root`.
        seed: unused: the splits are fixed by :data:`VERSION` (few-shot
            sampling applies the run seed later).
    """
    folder = resolve_root(root) or default_root()
    folder, _ = ensure_generated(folder)
    manifest = _load_manifest(folder)
    names = tuple(manifest["classnames"])
    splits = {}
    for split in SPLITS:
        samples = []
        for rel, label in manifest["splits"][split]:
            path = folder / rel
            if not path.is_file():
                raise VispromptError(
                    f"{path} is missing from the {NAME} cache; delete {folder} and it will be "
                    "generated again"
                )
            samples.append(Sample(path=str(path), label=int(label), classname=names[label]))
        splits[split] = tuple(samples)
    return DatasetSplits(name=NAME, classnames=names, **splits)


SPEC = register_dataset(
    DatasetSpec(
        name=NAME,
        description=(
            f"generated shapes world: {len(CLASSNAMES)} shape classes, 64 train / 16 val / "
            "50 test images per class, 32 px (pixelated camera); made on first use, no download"
        ),
        layout=(
            "nothing to download: generated on first use into root, or into "
            "$VISPROMPT_CACHE/synthetic-shapes/" + VERSION + " (default ~/.cache/visprompt)"
        ),
        read=read,
        templates=("a photo of a {}.",),
        needs_root=False,
    )
)
