"""Tiny fake datasets, generated on the fly in every supported layout.

The writers live in ``tests/dataset_layouts.py`` (the contract tests read
every registered reader's layout through them); these fixtures write into the
test's own temporary folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dataset_layouts import (
    CLASSES,
    csv_rows,
    write_coop,
    write_corrupt,
    write_csv,
    write_folder,
    write_food101n,
    write_image,
    write_truncated,
)


@pytest.fixture
def make_coop(tmp_path):
    """``make_coop(name, counts=(4, 2, 2)) -> DATA root`` in CoOp's layout.

    Classes are ``CLASSES``; image files ``<class>/<class>_<split>_<i>.jpg``
    under the benchmark's image folder, listed in its ``split_zhou_*.json``.
    """

    def make(name: str, counts=(4, 2, 2), classes=CLASSES, root: Path | None = None) -> Path:
        return write_coop(root or tmp_path / "DATA", name, counts, classes)

    return make


@pytest.fixture
def make_food101n(tmp_path):
    """``make_food101n(noisy_per_class=5, folder="food101n") -> DATA root``."""

    def make(noisy_per_class: int = 5, folder: str = "food101n", counts=(3, 2, 2)) -> Path:
        return write_food101n(tmp_path / "DATA", noisy_per_class, folder, counts)

    return make


@pytest.fixture
def make_folder(tmp_path):
    """``make_folder(train=5, test=2, val=None, classes=CLASSES) -> root``.

    Mixed extensions (.png, .JPG, .jpeg) test case-insensitive matching.
    """

    def make(train: int = 5, test: int = 2, val: int | None = None, classes=CLASSES) -> Path:
        return write_folder(tmp_path / "folder_ds", train, test, val, classes)

    return make


@pytest.fixture
def make_csv(tmp_path):
    """``make_csv(rows, header=("path", "label", "split")) -> csv path``.

    Every row's image is created (relative to the CSV's folder) unless its
    path starts with ``missing``.
    """

    def make(rows, header=("path", "label", "split"), name: str = "data.csv") -> Path:
        return write_csv(tmp_path / "csv_ds", rows, header, name)

    return make


@pytest.fixture
def csv_rows_fn():
    return csv_rows


@pytest.fixture
def image_writers():
    """The image writers, for tests that need a corrupt or truncated file."""
    return {"ok": write_image, "corrupt": write_corrupt, "truncated": write_truncated}
