"""Tiny fake datasets in every layout a registered reader understands.

Each image is a few pixels (PNG or JPEG by extension), so a whole fake
benchmark is written in milliseconds. ``tests/data/conftest.py`` wraps these
writers as fixtures; :data:`LAYOUTS` maps every registered dataset to the
writer of its smallest valid layout, so the contract tests can read every
reader's fixture (a newly registered dataset needs an entry here).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
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


def write_coop(
    data: Path, name: str, counts: Sequence[int] = (4, 2, 2), classes: Sequence[str] = CLASSES
) -> Path:
    """Benchmark ``name`` in CoOp's layout under ``data`` (the DATA root, returned).

    Image files ``<class>/<class>_<split>_<i>.jpg`` under the benchmark's image
    folder, listed in its ``split_zhou_*.json``.
    """
    b = bench(name)
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


def write_food101n(
    data: Path, noisy_per_class: int = 5, folder: str = "food101n", counts=(3, 2, 2)
) -> Path:
    """Food-101N's web images plus Food-101's CoOp split under ``data`` (returned)."""
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


def write_folder(
    root: Path,
    train: int = 5,
    test: int = 2,
    val: int | None = None,
    classes: Sequence[str] = CLASSES,
) -> Path:
    """``root/{train,test[,val]}/<class>/img<i>.<ext>`` with mixed extensions (returned).

    The extensions (.png, .JPG, .jpeg) test case-insensitive matching.
    """
    exts = (".png", ".JPG", ".jpeg")
    for split, n in (("train", train), ("test", test), ("val", val)):
        if n is None:
            continue
        for c, cls in enumerate(classes):
            for i in range(n):
                write_image(root / split / cls / f"img{i}{exts[i % 3]}", seed=c * 10 + i)
    return root


def csv_rows(per_class: dict[str, int], split: str | None = None) -> list[list[str]]:
    """``[[images/<cls>_<i>.png, cls(, split)], ...]`` for a quick CSV."""
    rows = []
    for cls, n in per_class.items():
        for i in range(n):
            row = [f"images/{cls}_{split or 'x'}_{i}.png", cls]
            rows.append(row + [split] if split else row)
    return rows


def write_csv(root: Path, rows, header=("path", "label", "split"), name: str = "data.csv") -> Path:
    """``root/<name>`` listing ``rows``; returns the CSV's path.

    Every row's image is created (relative to the CSV's folder) unless its
    path starts with ``missing``.
    """
    root.mkdir(parents=True, exist_ok=True)
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


def _coop_layout(name: str) -> Callable[[Path], Path]:
    return lambda tmp: write_coop(tmp / "DATA", name)


#: Registered dataset name -> ``writer(empty_folder) -> the root to read``: each
#: reader's smallest valid layout. ``synthetic-shapes`` generates its own files
#: into an empty root.
LAYOUTS: dict[str, Callable[[Path], Path]] = {
    **{b.name: _coop_layout(b.name) for b in BENCHMARKS},
    "food101n": lambda tmp: write_food101n(tmp / "DATA"),
    "folder": lambda tmp: write_folder(tmp / "folder_ds"),
    "csv": lambda tmp: write_csv(
        tmp / "csv_ds", csv_rows({"cat": 4, "dog": 4}, "train") + csv_rows({"cat": 2}, "test")
    ),
    "synthetic-shapes": lambda tmp: tmp / "synthetic-shapes",
}
