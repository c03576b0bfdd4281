"""Plain records that flow from dataset readers to the trainer."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One labelled image: absolute path, integer label in 0..K-1, class name."""

    path: str
    label: int
    classname: str


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset's train/val/test lists and its K class names (index = label)."""

    name: str
    classnames: tuple[str, ...]
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    test: tuple[Sample, ...]
    #: True labels are unknown/unreliable in ``train`` (e.g. Food-101N's web labels).
    real_noise: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def with_splits(self, **splits: Sequence[Sample]) -> DatasetSplits:
        return replace(self, **{k: tuple(v) for k, v in splits.items()})

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def fingerprint(self, root: str | Path | None) -> str:
        """SHA-256 of what the dataset is, wherever it lies: its name, class names and
        every split's (path relative to ``root``, label, file size). A moved copy keeps
        it; other files, labels, classes or sizes change it. (Sizes, not contents: one
        stat per file keeps it cheap enough to check on every ``--root``.)"""
        digest = hashlib.sha256(json.dumps([self.name, list(self.classnames)]).encode())
        base = os.path.abspath(root) if root is not None else None
        for split in (self.train, self.val, self.test):
            digest.update(b"|")
            for s in split:
                rel = os.path.relpath(s.path, base) if base else s.path
                try:
                    size = os.path.getsize(s.path)
                except OSError:
                    size = -1
                digest.update(f"{Path(rel).as_posix()}\t{s.label}\t{size}\n".encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: how to read it and what a user needs to know about it.

    Attributes:
        name: registry name (``caltech101``, ``folder``, ...).
        description: one line for ``visprompt datasets list``.
        layout: the expected folder layout under ``--root``, shown in errors.
        read: ``read(root, seed=...) -> DatasetSplits``; raises ``VispromptError``
            naming the missing file or folder.
        templates: CoOp's hand-written zero-shot templates (``{}`` = class name).
        needs_root: False for generated datasets that live in a cache folder.
        options: ``data.*`` options the reader takes as keyword arguments
            (e.g. ``allow_duplicates`` for CSV files); others are not passed.
    """

    name: str
    description: str
    layout: str
    read: Callable[..., DatasetSplits]
    templates: tuple[str, ...] = ("a photo of a {}.",)
    needs_root: bool = True
    options: tuple[str, ...] = ()


def resolve_root(root: str | Path | None) -> Path | None:
    return None if root is None else Path(root).expanduser().resolve()
