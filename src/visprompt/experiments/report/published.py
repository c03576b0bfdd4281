"""Published numbers next to ours: the ``--paper FILE.csv`` of ``visprompt report``.

The file is a CSV with the header ``dataset,noise_type,rate,method,accuracy``
(any order) and the optional columns ``backbone`` (``RN50``), ``shots`` (16)
and ``source`` (where the number was read: paper, table). Lines starting with
``#`` are comments (cite the tables there).

* ``dataset``: a dataset name of ``visprompt datasets list`` (``caltech101``);
* ``noise_type``: one of the noise types (``sym``, ``asym``, ``real``, ...);
* ``rate``: the noise rate as a fraction (``0.5``) - ``0`` for ``none``/``real``;
* ``method``: a method name of ``visprompt methods`` (``coop``, ``nlprompt``);
* ``accuracy``: the published test accuracy in percent.

A published number is put next to the report cell of the same dataset, noise
type, rate, backbone and shots (where the file gives them; compared without
case) and method *label* equal to the method's name: a labelled variant
(``coop (lr=0.001)``) departs from the defaults and so is not the paper's
setting. Missing cells are simply left empty; a file that names an unknown
column, method, dataset or noise type, or holds a value that is not a number
in range, is refused with its line number, before anything is written.

The shipped file (:data:`SHIPPED`) holds only numbers read in a source's text;
its header says which and where.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from visprompt.errors import VispromptError

#: the columns a --paper file must have
REQUIRED = ("dataset", "noise_type", "rate", "method", "accuracy")
#: the columns it may have besides
OPTIONAL = ("backbone", "shots", "source")
#: the published numbers that ship with visprompt (see the file's header)
SHIPPED = (
    Path(__file__).resolve().parents[2] / "assets" / "published" / "noisy-prompt-rn50-16shot.csv"
)


@dataclass(frozen=True)
class PublishedNumber:
    dataset: str
    noise_type: str
    rate: float
    method: str
    accuracy: float
    source: str = ""
    backbone: str = ""
    shots: int | None = None

    def fits(self, backbone: str, shots: int | None) -> bool:
        """Whether the number is of a run with this backbone and shots (where it says)."""
        return (not self.backbone or self.backbone.lower() == str(backbone).lower()) and (
            self.shots is None or self.shots == shots
        )


def _key(dataset: str, noise_type: str, rate: float, method: str) -> tuple:
    return (dataset, noise_type, round(float(rate), 6), method)


@dataclass
class Published:
    """The numbers of one ``--paper`` file, looked up by cell."""

    path: Path
    numbers: dict[tuple, list[PublishedNumber]]

    def __call__(
        self, table_key: tuple, dataset: str, noise_type: str, rate: float, label: str
    ) -> float | None:
        """The published accuracy of a report cell (None where the file has none).

        ``table_key`` is the cell's table's (backbone, shots, protocol).
        """
        hit = self.get(dataset, noise_type, rate, label, *table_key[:2])
        return None if hit is None else hit.accuracy

    def get(
        self,
        dataset: str,
        noise_type: str,
        rate: float,
        method: str,
        backbone: str = "",
        shots: int | None = None,
    ) -> PublishedNumber | None:
        """The number of that cell for that backbone and shots (any, where not given)."""
        for number in self.numbers.get(_key(dataset, noise_type, rate, method), []):
            if not backbone or number.fits(backbone, shots):
                return number
        return None


def _number(text: str, what: str, where: str, low: float, high: float, high_open: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    ok = math.isfinite(value) and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bound = f"[{low:g}, {high:g}{')' if high_open else ']'}"
        raise VispromptError(
            f"{where}: {what} {text!r} is not a number in {bound}; write e.g. "
            f"{'0.5 for 50%' if what == 'rate' else '71.3 (percent)'}"
        )
    return value


def _shots(text: str, where: str) -> int | None:
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise VispromptError(
            f"{where}: shots {text!r} is not a positive whole number; write e.g. 16"
        )
    return int(text)


def load_published(path: str | Path) -> Published:
    """Read and check a ``--paper`` CSV (see the module docstring).

    Raises:
        VispromptError: the file is missing or unreadable, lacks a required
            column, names an unknown column, method, dataset or noise type,
            holds a value out of range, gives one cell two numbers, or has no rows.
    """
    from visprompt.config import decode_text
    from visprompt.data import DATASETS
    from visprompt.data.noise import NOISE_TYPES
    from visprompt.method_spec import METHOD_REGISTRY

    path = Path(path).expanduser()
    if not path.is_file():
        raise VispromptError(f"--paper file {path} not found; give a CSV of published numbers")
    text = decode_text(path.read_bytes(), f"--paper file {path}")
    lines = [(i, line) for i, line in enumerate(text.splitlines(), start=1)]
    data = [(i, line) for i, line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not data:
        raise VispromptError(
            f"--paper file {path} holds no header; its first line must be "
            f"{','.join(REQUIRED)}[,source]"
        )
    rows = list(csv.reader(io.StringIO("\n".join(line for _, line in data))))
    header = [h.strip() for h in rows[0]]
    unknown = [h for h in header if h not in REQUIRED + OPTIONAL]
    if unknown:
        raise VispromptError(
            f"--paper file {path} has unknown column(s) {', '.join(map(repr, unknown))}; the "
            f"columns are {', '.join(REQUIRED)} and optionally {', '.join(OPTIONAL)}"
        )
    missing = [h for h in REQUIRED if h not in header]
    if missing:
        raise VispromptError(
            f"--paper file {path} lacks the column(s) {', '.join(missing)}; its header must "
            f"name {', '.join(REQUIRED)}"
        )
    methods, datasets = set(METHOD_REGISTRY.names()), set(DATASETS.names())
    numbers: dict[tuple, list[PublishedNumber]] = {}
    for (lineno, _), row in zip(data[1:], rows[1:], strict=True):
        where = f"--paper file {path} line {lineno}"
        if len(row) != len(header):
            raise VispromptError(
                f"{where} has {len(row)} fields, the header {len(header)}; give one value per "
                "column"
            )
        rec = {h: v.strip() for h, v in zip(header, row, strict=True)}
        if rec["method"] not in methods:
            raise VispromptError(
                f"{where}: unknown method {rec['method']!r}; use a name of `visprompt methods` "
                f"({', '.join(sorted(methods))})"
            )
        if rec["dataset"] not in datasets:
            raise VispromptError(
                f"{where}: unknown dataset {rec['dataset']!r}; use a name of `visprompt "
                f"datasets list` ({', '.join(sorted(datasets))})"
            )
        if rec["noise_type"] not in NOISE_TYPES:
            raise VispromptError(
                f"{where}: unknown noise type {rec['noise_type']!r}; use one of "
                f"{', '.join(NOISE_TYPES)}"
            )
        number = PublishedNumber(
            dataset=rec["dataset"],
            noise_type=rec["noise_type"],
            rate=_number(rec["rate"], "rate", where, 0.0, 1.0, high_open=True),
            method=rec["method"],
            accuracy=_number(rec["accuracy"], "accuracy", where, 0.0, 100.0, high_open=False),
            source=rec.get("source", ""),
            backbone=rec.get("backbone", ""),
            shots=_shots(rec.get("shots", ""), where),
        )
        key = _key(number.dataset, number.noise_type, number.rate, number.method)
        for other in numbers.get(key, []):
            same = (other.backbone.lower(), other.shots) == (number.backbone.lower(), number.shots)
            if same and other.accuracy != number.accuracy:
                raise VispromptError(
                    f"{where} gives {number.method} on {number.dataset} {number.noise_type} "
                    f"{number.rate:g} a second number ({number.accuracy:g}, before "
                    f"{other.accuracy:g}); keep one"
                )
        numbers.setdefault(key, []).append(number)
    if not numbers:
        raise VispromptError(
            f"--paper file {path} holds a header but no numbers; add one line per published cell"
        )
    return Published(path=path, numbers=numbers)


# ---------------------------------------------------------------- the comparison table

#: columns of ``published.csv``: one line per report cell that has a published number
COMPARISON_HEADER = (
    "backbone", "shots", "protocol", "dataset", "noise_type", "noise_rate", "method",
    "n", "mean", "std", "ci_low", "ci_high", "published", "diff", "published_in_ci",
)  # fmt: skip


def comparison_rows(tables: list) -> list[list]:
    """Per paper-table cell with a published number: placement, ours, published, difference.

    ``diff`` is ours minus published; ``published_in_ci`` is 1 where the
    published number lies inside our 95% interval, 0 outside, empty for a cell
    of one run (no interval).
    """
    rows = []
    for t in tables:
        for row in t.rows:
            for column in t.columns:
                cell = t.cells.get((row, column))
                if cell is None or cell.published is None:
                    continue
                ci = cell.ci
                inside = "" if ci is None else int(ci[0] <= cell.published <= ci[1])
                rows.append(
                    [*t.key, row[0], row[1], column[0], column[1], cell.n, cell.mean, cell.std]
                    + [None if ci is None else ci[0], None if ci is None else ci[1]]
                    + [cell.published, cell.diff, inside]
                )
    return rows
