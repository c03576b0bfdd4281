"""``visprompt datasets list`` / ``datasets check``: what the CLI prints, computed here.

The CLI only prints :func:`list_datasets` rows or :func:`format_check`'s text;
every problem with a dataset arrives as a one-line
:class:`~visprompt.errors.VispromptError` naming the missing file or folder and
the expected layout.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from visprompt.data.images import load_rgb
from visprompt.data.registry import DATASETS
from visprompt.data.types import DatasetSplits

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetCheck:
    """The outcome of reading (and optionally decoding) a dataset.

    Attributes:
        name: the dataset's registry name.
        root: the root folder or file given, as an absolute path ('' when none).
        num_classes: K.
        sizes: images per split (``train``/``val``/``test``).
        unreadable: per split, the image files that could not be decoded
            (empty lists when images were not verified).
        verified: whether every image was decoded.
        real_noise: the training labels carry real noise (Food-101N).
        smallest_class: ``(class name, training images)`` of the class with the
            fewest training images: the largest ``shots`` that works everywhere.
    """

    name: str
    root: str
    num_classes: int
    sizes: dict[str, int]
    unreadable: dict[str, list[str]] = field(default_factory=dict)
    verified: bool = False
    real_noise: bool = False
    smallest_class: tuple[str, int] = ("", 0)

    @property
    def num_unreadable(self) -> int:
        return sum(len(v) for v in self.unreadable.values())

    @property
    def ok(self) -> bool:
        """True when every image could be read (or images were not verified)."""
        return self.num_unreadable == 0


def list_datasets() -> list[tuple[str, str]]:
    """``(name, description)`` of every registered dataset, sorted by name."""
    return [(name, DATASETS.get(name).description) for name in DATASETS.names()]


def _unreadable(paths: list[str], progress: bool, desc: str) -> list[str]:
    """The paths Pillow cannot decode, in input order (threads: decoding releases the GIL)."""
    if not paths:
        return []
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda p: load_rgb(p) is not None, paths, chunksize=16)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(paths), desc=desc, unit="img")
        return [p for p, ok in zip(paths, results, strict=True) if not ok]


def check_dataset(
    name: str,
    root: str | Path | None,
    seed: int = 1,
    verify_images: bool = True,
    progress: bool = False,
) -> DatasetCheck:
    """Read a dataset, count its classes and splits, and optionally decode every image.

    Args:
        name: a registered dataset name.
        root: its root folder (or CSV file); may be None for generated datasets.
        seed: the seed for readers that split automatically (folder, csv).
        verify_images: decode every image with Pillow and list the failures.
        progress: show a tqdm bar per split while decoding.

    Raises:
        VispromptError: unknown name, missing root, or anything the reader
            rejects (missing files/folders, malformed split files, ...).
    """
    spec = DATASETS.get(name)
    splits: DatasetSplits = spec.read(root, seed=seed)
    unreadable: dict[str, list[str]] = {s: [] for s in SPLITS}
    if verify_images:
        for split in SPLITS:
            paths = [s.path for s in getattr(splits, split)]
            unreadable[split] = _unreadable(paths, progress, f"{name} {split}")
    counts = Counter(s.label for s in splits.train)
    smallest = min(range(splits.num_classes), key=lambda k: (counts.get(k, 0), k), default=None)
    return DatasetCheck(
        name=name,
        root="" if root is None else str(Path(root).expanduser().resolve()),
        num_classes=splits.num_classes,
        sizes=splits.sizes(),
        unreadable=unreadable,
        verified=verify_images,
        real_noise=splits.real_noise,
        smallest_class=("", 0)
        if smallest is None
        else (splits.classnames[smallest], counts[smallest]),
    )


def format_check(check: DatasetCheck, max_listed: int = 5) -> str:
    """The report ``datasets check`` prints (several lines, no trailing newline)."""
    lines = [f"dataset {check.name}" + (f" at {check.root}" if check.root else "")]
    lines.append(f"classes: {check.num_classes}")
    lines.append("  ".join(f"{s}: {check.sizes.get(s, 0)}" for s in SPLITS))
    cls, n = check.smallest_class
    lines.append(f"fewest training images in a class: {n} ({cls}), the most shots possible")
    if check.real_noise:
        lines.append("training labels: real noise (true labels unknown)")
    if not check.verified:
        lines.append("images: not decoded (only checked that the files exist)")
    elif check.ok:
        lines.append(f"images: all {sum(check.sizes.values())} readable")
    else:
        per_split = ", ".join(f"{s}: {len(v)}" for s, v in check.unreadable.items() if v)
        lines.append(f"unreadable images: {check.num_unreadable} ({per_split})")
        listed = [p for s in SPLITS for p in check.unreadable.get(s, [])]
        lines.extend(f"  {p}" for p in listed[:max_listed])
        if len(listed) > max_listed:
            lines.append(f"  ... and {len(listed) - max_listed} more")
    return "\n".join(lines)
