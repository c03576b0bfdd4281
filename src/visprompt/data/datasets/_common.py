"""Helpers shared by the dataset readers: roots, image listing, existence checks, splits.

Nothing here decodes an image: readers must stay fast (a stat or a directory
listing per file at most), decoding happens in ``datasets check`` and in the
training-time readers.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from visprompt.data.types import Sample
from visprompt.data.validation import check_seed
from visprompt.errors import VispromptError

#: Extensions accepted by the folder and Food-101N readers (compared lower-case).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)

#: Fraction of a class moved to an automatically made split (val or test).
AUTO_SPLIT_FRACTION = 0.2


def require_root(root: str | Path | None, name: str, layout: str) -> Path:
    """The resolved root folder, or a one-line error when it is missing.

    Raises:
        VispromptError: ``root`` is None or does not exist.
    """
    if root is None:
        raise VispromptError(
            f"dataset {name!r} needs a root folder; pass --root DIR (data.root in a run config; {layout})"
        )
    path = Path(root).expanduser().resolve()
    if not path.exists():
        raise VispromptError(
            f"root folder {path} does not exist; point --root (data.root in a run config) at your "
            f"data ({layout})"
        )
    return path


def is_image_file(name: str) -> bool:
    """True for a visible file name with a known image extension (case-insensitive)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


class SymlinkLoopWarning(UserWarning):
    """A symbolic link inside a dataset folder points back at a folder above it; not followed.

    Attributes:
        link: the link's path.
    """

    def __init__(self, link: str) -> None:
        super().__init__(
            f"skipped symlink loop {link} -> {os.path.realpath(link)} (a link to a folder "
            f"holding the link itself); remove the link, its images are listed once anyway"
        )
        self.link = link


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def list_images(folder: Path) -> list[str]:
    """Absolute paths of all images below ``folder`` (recursive), sorted.

    Hidden files and folders (names starting with ``.``) are skipped. Symbolic
    links are followed, but every real folder is walked once and every real
    file listed once (by device and inode), so a file reached through two links
    is one image, under the path met first (sorted walk, a folder's own files
    before its sub-folders). A link back to the folder itself or one above it
    (a loop, which would list every image again and again) is skipped with a
    :class:`SymlinkLoopWarning` naming it. Broken links are listed as they are
    (the image is then reported as unreadable).
    """
    found: list[str] = []
    seen_files: set[tuple[int, int]] = set()
    seen_dirs: set[tuple[int, int]] = set()

    loops: list[str] = []

    def loop(link: str) -> None:
        loops.append(link)

    def walk(path: str, chain: frozenset[tuple[int, int]]) -> None:
        try:
            ident = _identity(os.stat(path))
        except OSError:
            return
        if ident in chain:  # a loop only bind mounts make (links are caught below)
            loop(path)
            return
        if ident in seen_dirs:  # the same folder through a second link: already listed
            return
        seen_dirs.add(ident)
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return
        here = None
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir, is_link = entry.is_dir(), entry.is_symlink()  # is_dir follows links
            except OSError:
                continue
            if is_dir:
                if is_link:
                    here = here or os.path.realpath(path)
                    target = os.path.realpath(entry.path)
                    if os.path.commonpath([target, here]) == target:
                        loop(entry.path)  # the link lies inside its own target
                        continue
                subdirs.append(entry.path)
                continue
            if not is_image_file(entry.name):
                continue
            try:
                # a plain file's inode comes with the listing; a link's needs a stat
                key = _identity(entry.stat()) if is_link else (ident[0], entry.inode())
            except OSError:  # a broken link: listed, found unreadable later
                key = (-1, len(seen_files))
            if key not in seen_files:
                seen_files.add(key)
                found.append(entry.path)
        inner = chain | {ident}
        for sub in subdirs:
            walk(sub, inner)

    walk(str(folder), frozenset())
    for link in loops:
        warnings.warn(SymlinkLoopWarning(link), stacklevel=2)
    return sorted(found)


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``folder`` (one per class)."""
    return sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def missing_files(paths: Iterable[str]) -> list[str]:
    """The paths that do not exist, in input order.

    Lists each parent folder once instead of one ``stat`` per file, which is
    much faster for tens of thousands of files (network file systems).
    """
    by_dir: dict[str, set[str] | None] = {}
    missing = []
    for path in paths:
        parent, base = os.path.split(path)
        if parent not in by_dir:
            try:
                by_dir[parent] = set(os.listdir(parent))
            except OSError:
                by_dir[parent] = None
        names = by_dir[parent]
        if names is None or base not in names:
            missing.append(path)
    return missing


def require_files(samples: Sequence[Sample], source: str, fix: str) -> None:
    """Raise when any sample's image file does not exist.

    Args:
        samples: the samples to check.
        source: what listed them (a split file, a CSV), named in the error.
        fix: the second half of the error message (how to fix it).
    """
    missing = missing_files(s.path for s in samples)
    if missing:
        raise VispromptError(
            f"{len(missing)} of {len(samples)} images listed in {source} do not exist "
            f"(first: {missing[0]}); {fix}"
        )


def check_contiguous_labels(samples: Iterable[Sample], source: str, fix: str) -> tuple[str, ...]:
    """Class names indexed by label, checking labels are exactly 0..K-1 with one name each.

    Raises:
        VispromptError: a gap in the labels, a negative label, or one label
            carrying two different class names.
    """
    names: dict[int, str] = {}
    for s in samples:
        known = names.setdefault(s.label, s.classname)
        if known != s.classname:
            raise VispromptError(
                f"label {s.label} in {source} has two class names ({known!r} and "
                f"{s.classname!r}); {fix}"
            )
    if not names:
        raise VispromptError(f"{source} lists no images; {fix}")
    labels = sorted(names)
    k = len(labels)
    if labels[0] != 0 or labels[-1] != k - 1:
        if labels[0] < 0:
            detail = f"negative label {labels[0]}"
        else:
            gaps = sorted(set(range(labels[-1] + 1)) - set(labels))
            detail = f"no samples with label {', '.join(map(str, gaps[:5]))}"
        raise VispromptError(
            f"class labels in {source} are not contiguous 0..K-1 ({k} distinct labels in "
            f"{labels[0]}..{labels[-1]}, {detail}); {fix}"
        )
    return tuple(names[i] for i in range(k))


def seeded_holdout(
    samples: Sequence[Sample], seed: int, stream: int, min_class_size: int
) -> tuple[list[Sample], list[Sample]]:
    """Split off a seeded 20% of every class: ``(kept, held_out)``.

    Each class is sorted by path and permuted with a generator seeded by
    ``(seed, stream, label)``, so the result does not depend on input order or
    on the other classes. A class with at least ``min_class_size`` images gives
    ``max(1, round(0.2 * n))`` of them; smaller classes give none.
    """
    seed = check_seed(seed)  # the readers' one check: they pass their seed straight here
    by_label: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        by_label[s.label].append(s)
    kept: list[Sample] = []
    held: list[Sample] = []
    for label in sorted(by_label):
        items = sorted(by_label[label], key=lambda s: s.path)
        n = len(items)
        n_hold = max(1, round(AUTO_SPLIT_FRACTION * n)) if n >= min_class_size else 0
        order = np.random.default_rng([seed, stream, label]).permutation(n)
        chosen = set(order[:n_hold].tolist())
        for i, item in enumerate(items):
            (held if i in chosen else kept).append(item)
    return kept, held


def sort_samples(samples: Iterable[Sample]) -> tuple[Sample, ...]:
    """Samples ordered by (label, path): a canonical order for every split."""
    return tuple(sorted(samples, key=lambda s: (s.label, s.path)))
