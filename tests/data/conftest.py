"""Tiny fake datasets, generated on the fly in every supported layout.

Each image is a few pixels of one colour (PNG or JPEG by extension), so a
whole fake benchmark is written in milliseconds.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visprompt.data.datasets.coop_benchmarks import BENCHMARKS, CoopBenchmark

CLASSES = ("ant", "bee", "cat")
FOOD_CLASSES = ("apple_pie", "baby_back_ribs", "caesar_salad")


def write_image(path: Path, seed: int = 0, size: int = 8) -> Path:
    """A small random RGB image; the format follows the file extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_corrupt(path: Path) -> Path:
    """A file with an image extension whose bytes are not an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image at all" * 4)
    return path


def write_truncated(path: Path) -> Path:
    """A JPEG cut in half: the header parses, decoding fails."""
    buf = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def bench(name: str) -> CoopBenchmark:
    return next(b for b in BENCHMARKS if b.name == name)


@pytest.fixture
def make_coop(tmp_path):
    """``make_coop(name, counts=(4, 2, 2)) -> DATA root`` in CoOp's layout.

    Classes are ``CLASSES``; image files ``<class>/<class>_<split>_<i>.jpg``
    under the benchmark's image folder, listed in its ``split_zhou_*.json``.
    """

    def make(name: str, counts=(4, 2, 2), classes=CLASSES, root: Path | None = None) -> Path:
        b = bench(name)
        data = root or tmp_path / "DATA"
        image_dir = data / b.folder / b.image_dir
        split = {}
        for split_name, n in zip(("train", "val", "test"), counts, strict=True):
            entries = []
            for label, cls in enumerate(classes):
                for i in range(n):
                    rel = f"{cls}/{cls}_{split_name}_{i}.jpg"
                    write_image(image_dir / rel, seed=label * 100 + i)
                    entries.append([rel, label, cls.upper()])
            split[split_name] = entries
        (data / b.folder / b.split_file).write_text(json.dumps(split))
        return data

    return make


@pytest.fixture
def make_food101n(tmp_path):
    """``make_food101n(noisy_per_class=5, folder="food101n") -> DATA root``."""

    def make(noisy_per_class: int = 5, folder: str = "food101n", counts=(3, 2, 2)) -> Path:
        data = tmp_path / "DATA"
        clean = data / "food-101"
        split = {}
        for split_name, n in zip(("train", "val", "test"), counts, strict=True):
            entries = []
            # The split's labels follow sorted class folder names, as in CoOp's file.
            for label, cls in enumerate(FOOD_CLASSES):
                for i in range(n):
                    rel = f"{cls}/{split_name}{i}.jpg"
                    write_image(clean / "images" / rel, seed=i)
                    entries.append([rel, label, cls])
            split[split_name] = entries
        (clean / "split_zhou_Food101.json").write_text(json.dumps(split))
        for label, cls in enumerate(FOOD_CLASSES):
            for i in range(noisy_per_class):
                write_image(data / folder / "images" / cls / f"web{i}.jpg", seed=label + i)
        return data

    return make


@pytest.fixture
def make_folder(tmp_path):
    """``make_folder(train=5, test=2, val=None, classes=CLASSES) -> root``.

    Mixed extensions (.png, .JPG, .jpeg) test case-insensitive matching.
    """

    def make(train: int = 5, test: int = 2, val: int | None = None, classes=CLASSES) -> Path:
        root = tmp_path / "folder_ds"
        exts = (".png", ".JPG", ".jpeg")
        for split, n in (("train", train), ("test", test), ("val", val)):
            if n is None:
                continue
            for c, cls in enumerate(classes):
                for i in range(n):
                    write_image(root / split / cls / f"img{i}{exts[i % 3]}", seed=c * 10 + i)
        return root

    return make


@pytest.fixture
def make_csv(tmp_path):
    """``make_csv(rows, header=("path", "label", "split")) -> csv path``.

    Every row's image is created (relative to the CSV's folder) unless its
    path starts with ``missing``.
    """

    def make(rows, header=("path", "label", "split"), name: str = "data.csv") -> Path:
        root = tmp_path / "csv_ds"
        root.mkdir(exist_ok=True)
        col = next((i for i, h in enumerate(header or ()) if h.lower() == "path"), 0)
        for i, row in enumerate(rows):
            if row and not str(row[col]).startswith("missing"):
                write_image(root / row[col], seed=i)
        csv_path = root / name
        with csv_path.open("w", newline="") as f:
            writer = csv.writer(f)
            if header is not None:
                writer.writerow(header)
            writer.writerows(rows)
        return csv_path

    return make


def csv_rows(per_class: dict[str, int], split: str | None = None) -> list[list[str]]:
    """``[[images/<cls>_<i>.png, cls(, split)], ...]`` for a quick CSV."""
    rows = []
    for cls, n in per_class.items():
        for i in range(n):
            row = [f"images/{cls}_{split or 'x'}_{i}.png", cls]
            rows.append(row + [split] if split else row)
    return rows


@pytest.fixture
def csv_rows_fn():
    return csv_rows


@pytest.fixture
def image_writers():
    """The image writers, for tests that need a corrupt or truncated file."""
    return {"ok": write_image, "corrupt": write_corrupt, "truncated": write_truncated}
