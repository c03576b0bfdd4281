"""``visprompt datasets list`` / ``datasets check``: what the CLI prints, computed here.

The CLI only prints :func:`list_datasets` rows or :func:`format_check`'s text;
every problem with a dataset arrives as a one-line
:class:`~visprompt.errors.VispromptError` naming the missing file or folder and
the expected layout.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from visprompt.data.datasets._common import SymlinkLoopWarning
from visprompt.data.images import MAX_PIXELS_ENV, is_too_large, max_image_pixels, read_image
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
        reasons: why each unreadable file cannot be read (path -> reason).
        high_bit_depth: per split, how many images had more than 8 bits per
            sample (16-bit PNG/TIFF, 32-bit integer or float) and were scaled
            to 8 bits (zeros when images were not verified).
        symlink_loops: the symbolic links inside the dataset folder that point
            back at a folder holding them; skipped while listing images.
    """

    name: str
    root: str
    num_classes: int
    sizes: dict[str, int]
    unreadable: dict[str, list[str]] = field(default_factory=dict)
    verified: bool = False
    real_noise: bool = False
    smallest_class: tuple[str, int] = ("", 0)
    reasons: dict[str, str] = field(default_factory=dict)
    high_bit_depth: dict[str, int] = field(default_factory=dict)
    symlink_loops: tuple[str, ...] = ()

    @property
    def num_unreadable(self) -> int:
        return sum(len(v) for v in self.unreadable.values())

    @property
    def num_high_bit_depth(self) -> int:
        return sum(self.high_bit_depth.values())

    @property
    def num_too_large(self) -> int:
        """Unreadable only because they have more pixels than the limit allows."""
        return sum(1 for r in self.reasons.values() if is_too_large(r))

    @property
    def ok(self) -> bool:
        """True when every image could be read (or images were not verified)."""
        return self.num_unreadable == 0


def list_datasets() -> list[tuple[str, str]]:
    """``(name, description)`` of every registered dataset, sorted by name."""
    return [(name, DATASETS.get(name).description) for name in DATASETS.names()]


def _decode_all(paths: list[str], progress: bool, desc: str) -> list[tuple[str, bool]]:
    """``(error or '', high bit depth)`` of every path, in input order.

    Threads: decoding releases the GIL. Only the outcome is kept, never the pixels.
    """
    if not paths:
        return []

    def outcome(path: str) -> tuple[str, bool]:
        read = read_image(path)
        return read.error, read.high_bit_depth

    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(outcome, paths, chunksize=16)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(paths), desc=desc, unit="img")
        return list(results)


def _read_splits(spec, root, seed: int) -> tuple[DatasetSplits, tuple[str, ...]]:
    """The reader's splits and the symlink loops it skipped (its warnings, caught)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SymlinkLoopWarning)
        splits = spec.read(root, seed=seed)
    loops = []
    for w in caught:
        if issubclass(w.category, SymlinkLoopWarning):
            loops.append(w.message.link)
        else:  # not ours to swallow
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return splits, tuple(dict.fromkeys(loops))


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
    splits, loops = _read_splits(spec, root, seed)
    unreadable: dict[str, list[str]] = {s: [] for s in SPLITS}
    high_bit: dict[str, int] = {s: 0 for s in SPLITS}
    reasons: dict[str, str] = {}
    if verify_images:
        max_image_pixels()  # a malformed $VISPROMPT_MAX_IMAGE_PIXELS: one error, now
        for split in SPLITS:
            paths = [s.path for s in getattr(splits, split)]
            outcomes = _decode_all(paths, progress, f"{name} {split}")
            for path, (error, high) in zip(paths, outcomes, strict=True):
                if error:
                    unreadable[split].append(path)
                    reasons[path] = error
                high_bit[split] += high
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
        reasons=reasons,
        high_bit_depth=high_bit,
        symlink_loops=loops,
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
    if check.symlink_loops:
        n = len(check.symlink_loops)
        lines.append(f"symlink loops skipped: {n} (links to a folder holding them; remove them)")
        lines.extend(f"  {p}" for p in check.symlink_loops[:max_listed])
        if n > max_listed:
            lines.append(f"  ... and {n - max_listed} more")
    if not check.verified:
        lines.append("images: not decoded (only checked that the files exist)")
        return "\n".join(lines)
    if check.ok:
        lines.append(f"images: all {sum(check.sizes.values())} readable")
    else:
        per_split = ", ".join(f"{s}: {len(v)}" for s, v in check.unreadable.items() if v)
        lines.append(f"unreadable images: {check.num_unreadable} ({per_split})")
        listed = [p for s in SPLITS for p in check.unreadable.get(s, [])]
        for p in listed[:max_listed]:
            why = check.reasons.get(p)
            lines.append(f"  {p}: {why}" if why else f"  {p}")
        if len(listed) > max_listed:
            lines.append(f"  ... and {len(listed) - max_listed} more")
        if check.num_too_large:
            lines.append(
                f"{check.num_too_large} of them over the pixel limit: set {MAX_PIXELS_ENV} "
                f"to allow large images"
            )
    if check.num_high_bit_depth:
        per_split = ", ".join(f"{s}: {n}" for s, n in check.high_bit_depth.items() if n)
        lines.append(
            f"high-bit-depth images: {check.num_high_bit_depth} ({per_split}) scaled to 8 bits "
            f"from their full range (16-bit, 32-bit integer or float pixels)"
        )
    return "\n".join(lines)
