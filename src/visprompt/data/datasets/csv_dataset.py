"""A user's own images listed in a CSV file: ``path,label[,split]``.

``--root`` is the CSV file, or a folder holding exactly one ``.csv`` file. The
first row is a header naming at least the columns ``path`` and ``label``
(any order, case-insensitive; other columns are ignored)::

    path,label,split
    images/cat_001.jpg,cat,train
    images/dog_017.jpg,dog,test

- ``path``: image path relative to the CSV's folder (absolute paths work too).
- ``label``: the class name. Class names are the distinct training labels,
  sorted (numerically when every label is a whole number); label = position.
- ``split`` (optional): ``train``, ``val`` or ``test``. Without it, every class
  is split with the run seed: about 20% test (at least one image when the class
  has three or more), then about 20% of the rest val (at least one when two or
  more remain), the rest train. With it but without val rows, a seeded 20% of
  train becomes val, as for the folder reader.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from visprompt.data.datasets._common import (
    require_files,
    require_root,
    seeded_holdout,
    sort_samples,
)
from visprompt.data.registry import register_dataset
from visprompt.data.types import DatasetSpec, DatasetSplits, Sample
from visprompt.errors import VispromptError

LAYOUT = (
    "expected a CSV file with a header path,label[,split], one row per image, paths relative "
    "to the CSV's folder, label = class name, split in train/val/test; --root FILE.csv or a "
    "folder holding exactly one .csv"
)
REQUIRED = ("path", "label")
SPLIT_VALUES = ("train", "val", "test")


def find_csv(root: Path) -> Path:
    """The CSV file: ``root`` itself, or the only ``.csv`` file in the folder ``root``."""
    if root.is_file():
        return root
    found = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    if len(found) != 1:
        what = "no .csv file" if not found else f"{len(found)} .csv files"
        raise VispromptError(f"folder {root} holds {what}; pass --root FILE.csv ({LAYOUT})")
    return found[0]


def _class_order(names: set[str]) -> tuple[str, ...]:
    if names and all(n.isdigit() for n in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def _read_rows(csv_path: Path) -> tuple[list[tuple[int, str, str, str | None]], bool]:
    """``([(line, path, label, split or None), ...], has_split_column)``."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError:
        raise VispromptError(f"CSV file {csv_path} is not UTF-8 text; {LAYOUT}") from None
    except csv.Error as exc:
        raise VispromptError(f"CSV file {csv_path} cannot be parsed ({exc}); {LAYOUT}") from None
    numbered = [(i + 1, row) for i, row in enumerate(rows) if any(c.strip() for c in row)]
    if not numbered:
        raise VispromptError(f"CSV file {csv_path} is empty; {LAYOUT}")
    _, header = numbered[0]
    columns = [c.strip().lower() for c in header]
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        found = ",".join(c for c in columns if c) or "nothing"
        raise VispromptError(
            f"CSV file {csv_path} lacks the column(s) {','.join(missing)} in its header "
            f"(found: {found}); {LAYOUT}"
        )
    if len(numbered) == 1:
        raise VispromptError(f"CSV file {csv_path} is empty (a header but no rows); {LAYOUT}")
    i_path, i_label = columns.index("path"), columns.index("label")
    i_split = columns.index("split") if "split" in columns else None
    out = []
    for line, row in numbered[1:]:
        cells = [c.strip() for c in row] + [""] * (len(columns) - len(row))
        path, label = cells[i_path], cells[i_label]
        split = cells[i_split].lower() if i_split is not None else None
        if not path or not label:
            empty = "path" if not path else "label"
            raise VispromptError(
                f"line {line} of CSV file {csv_path} has an empty {empty}; fill it in or remove "
                f"the line ({LAYOUT})"
            )
        if split is not None and split not in SPLIT_VALUES:
            raise VispromptError(
                f"line {line} of CSV file {csv_path} has split {cells[i_split]!r}; use train, "
                f"val or test ({LAYOUT})"
            )
        out.append((line, path, label, split))
    return out, i_split is not None


def read_csv_dataset(root: str | Path | None, seed: int = 1) -> DatasetSplits:
    """Read a CSV-listed dataset.

    Args:
        root: the CSV file or a folder holding exactly one.
        seed: seeds the automatic val/test hold-out (see the module docstring).

    Raises:
        VispromptError: missing file, empty file, missing columns, empty cells,
            unknown split values, no train or no test rows, val/test labels
            unknown to train, listed images that do not exist.
    """
    csv_path = find_csv(require_root(root, "csv", LAYOUT))
    rows, has_split = _read_rows(csv_path)
    base = csv_path.parent
    split_of = {line: (split or "train") for line, _, _, split in rows}
    train_names = {label for line, _, label, _ in rows if split_of[line] == "train"}
    if not train_names:
        raise VispromptError(
            f"CSV file {csv_path} has no train rows; mark some rows split=train ({LAYOUT})"
        )
    classnames = _class_order(train_names)
    index = {name: i for i, name in enumerate(classnames)}
    by_split: dict[str, list[Sample]] = {s: [] for s in SPLIT_VALUES}
    for line, path, label, _ in rows:
        split = split_of[line]
        if label not in index:
            raise VispromptError(
                f"line {line} of CSV file {csv_path} has {split} label {label!r}, which no train "
                f"row has; add training images of that class or remove the line"
            )
        full = os.path.normpath(os.path.join(base, path))
        by_split[split].append(Sample(path=full, label=index[label], classname=label))
    everything = [s for split in SPLIT_VALUES for s in by_split[split]]
    require_files(everything, f"CSV file {csv_path}", f"fix the paths (relative to {base})")
    train, val, test = by_split["train"], by_split["val"], by_split["test"]
    if not has_split:
        train, test = seeded_holdout(train, seed=seed, stream=1, min_class_size=3)
        train, val = seeded_holdout(train, seed=seed, stream=0, min_class_size=2)
    else:
        if not test:
            raise VispromptError(
                f"CSV file {csv_path} has no test rows; mark some rows split=test, or drop the "
                f"split column to split automatically"
            )
        if not val:
            train, val = seeded_holdout(train, seed=seed, stream=0, min_class_size=2)
    return DatasetSplits(
        name="csv",
        classnames=classnames,
        train=sort_samples(train),
        val=sort_samples(val),
        test=sort_samples(test),
    )


register_dataset(
    DatasetSpec(
        name="csv",
        description=(
            "your images listed in a CSV file: path,label[,split] rows, paths relative to the "
            "CSV, label = class name"
        ),
        layout=LAYOUT,
        read=read_csv_dataset,
    )
)
