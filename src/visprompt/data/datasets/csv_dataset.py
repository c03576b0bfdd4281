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

Every image is listed once: a repeated row (the same path, label and split
twice, e.g. two CSVs concatenated), an image under two labels, or an image in
two splits (train and test: a leak) is refused with a count and the first few
images and lines, unless ``allow_duplicates=True`` (then exact repeats are
dropped, the first row kept, and the rest kept as listed, with a warning).
A quote that is never closed (``"images/a.jpg,cat``) would swallow the rest of
the file into one cell; it is refused naming its line.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections import defaultdict
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
#: How an error names the opt-out of :func:`read_csv_dataset`'s ``allow_duplicates``.
ALLOW_DUPLICATES_HINT = "set data.allow_duplicates=true to keep them (exact repeats are dropped)"
#: How many offending images an error names.
SHOWN = 3


class DuplicateImagesWarning(UserWarning):
    """A CSV lists an image more than once and ``allow_duplicates`` kept it."""


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


def _check_quotes(parsed: list[tuple[int, int, list[str]]], csv_path: Path) -> None:
    """Refuse a row whose opening quote is never closed (it swallows the lines after it).

    Paths, labels and splits never hold a line break, so a cell that does spans
    lines only because of an unbalanced quote; so does any cell whose extra
    lines look like more rows (commas in them).
    """
    first = next((row for _, _, row in parsed if any(c.strip() for c in row)), None)
    if first is None:
        return
    header = [c.strip().lower() for c in first]
    width = max(1, len(header))
    key_columns = {i for i, c in enumerate(header) if c in (*REQUIRED, "split")}
    for start, end, row in parsed:
        for i, cell in enumerate(row):
            if "\n" not in cell and "\r" not in cell:
                continue
            extra = cell.splitlines()[1:]
            if (
                row is first
                or i in key_columns
                or any(line.count(",") >= width - 1 for line in extra)
            ):
                span = f"line {start}" if end == start else f"lines {start} to {end}"
                raise VispromptError(
                    f'line {start} of CSV file {csv_path} has an unbalanced quote (") that '
                    f"swallows {span} into one cell; close the quote or remove it"
                )


def _read_rows(csv_path: Path) -> tuple[list[tuple[int, str, str, str | None]], bool]:
    """``([(line, path, label, split or None), ...], has_split_column)``."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            parsed = []
            last = 0  # physical lines read so far: a row starts on the next one
            for row in reader:
                parsed.append((last + 1, reader.line_num, row))
                last = reader.line_num
    except UnicodeDecodeError:
        raise VispromptError(f"CSV file {csv_path} is not UTF-8 text; {LAYOUT}") from None
    except csv.Error as exc:
        raise VispromptError(f"CSV file {csv_path} cannot be parsed ({exc}); {LAYOUT}") from None
    _check_quotes(parsed, csv_path)
    numbered = [(start, row) for start, _, row in parsed if any(c.strip() for c in row)]
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


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _duplicates(
    rows: list[tuple[int, str, str, str | None]],
    split_of: dict[int, str],
    base: Path,
    csv_path: Path,
    allow: bool,
) -> set[int]:
    """The lines that repeat an earlier row exactly; refuse any image listed twice.

    Images are compared by their normalised full path. Every kind of problem
    is counted in one message, naming the first few images with their lines.
    Returns the repeated lines (to drop) when ``allow``; otherwise raises.
    """
    by_image: dict[str, list[tuple[int, str, str, str]]] = defaultdict(list)
    for line, path, label, _ in rows:
        full = os.path.normpath(os.path.join(base, path))
        by_image[full].append((line, path, label, split_of[line]))
    repeated: list[str] = []
    repeated_lines: set[int] = set()
    relabelled: list[str] = []
    leaked: list[str] = []
    for entries in by_image.values():
        if len(entries) == 1:
            continue
        first: dict[tuple[str, str], int] = {}
        for line, path, label, split in entries:
            seen = first.setdefault((label, split), line)
            if seen != line:
                repeated_lines.add(line)
                repeated.append(f"line {line} repeats line {seen}: {path}")
        path = entries[0][1]
        labels = dict.fromkeys(label for _, _, label, _ in entries)
        if len(labels) > 1:
            where = ", ".join(f"{lab!r} on line {ln}" for ln, _, lab, _ in entries[:4])
            relabelled.append(f"{path}: {where}")
        if len({split for *_, split in entries}) > 1:
            where = ", ".join(f"{split} on line {ln}" for ln, _, _, split in entries[:4])
            leaked.append(f"{path}: {where}")
    parts = []
    if repeated:
        parts.append(f"{_count(len(repeated), 'repeated row')} ({', '.join(repeated[:SHOWN])})")
    if relabelled:
        what = _count(len(relabelled), "image")
        parts.append(f"{what} under two or more labels ({', '.join(relabelled[:SHOWN])})")
    if leaked:
        parts.append(f"{_count(len(leaked), 'image')} in two splits ({', '.join(leaked[:SHOWN])})")
    if not parts:
        return set()
    summary = f"CSV file {csv_path} lists images more than once: {', '.join(parts)}"
    if not allow:
        raise VispromptError(f"{summary}; remove or correct those rows, or {ALLOW_DUPLICATES_HINT}")
    warnings.warn(
        f"{summary}; kept as listed (allow_duplicates), "
        f"{_count(len(repeated_lines), 'exact repeat')} dropped",
        DuplicateImagesWarning,
        stacklevel=3,
    )
    return repeated_lines


def read_csv_dataset(
    root: str | Path | None, seed: int = 1, allow_duplicates: bool = False
) -> DatasetSplits:
    """Read a CSV-listed dataset.

    Args:
        root: the CSV file or a folder holding exactly one.
        seed: seeds the automatic val/test hold-out (see the module docstring).
        allow_duplicates: accept images listed more than once (see the module
            docstring): exact repeats are dropped, images under two labels or
            in two splits are kept as listed; a :class:`DuplicateImagesWarning`
            says how many.

    Raises:
        VispromptError: missing file, empty file, missing columns, empty cells,
            an unbalanced quote, unknown split values, no train or no test rows,
            val/test labels unknown to train, an image listed twice (unless
            ``allow_duplicates``), listed images that do not exist.
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
    repeats = _duplicates(rows, split_of, base, csv_path, allow_duplicates)
    for line, path, label, _ in rows:
        split = split_of[line]
        if label not in index:
            raise VispromptError(
                f"line {line} of CSV file {csv_path} has {split} label {label!r}, which no train "
                f"row has; add training images of that class or remove the line"
            )
        if line in repeats:
            continue
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
        options=("allow_duplicates",),
    )
)
