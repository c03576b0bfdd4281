"""Tables of a report: what goes in each cell, and the table as Markdown and CSV text.

* :func:`paper_tables` - the paper-style table: rows dataset x noise type,
  then an ``Average`` row per noise type (the mean over the table's datasets,
  as the papers' "Average" column); columns noise rate x method label; cells
  ``mean ± std [95% CI]`` of the test accuracy over seeds. One per (backbone,
  shots, noise protocol).
* :func:`ablation_tables` - per method whose runs differ in settings: rows
  (dataset, setting), columns (noise type, rate).
* :func:`method_tables` - per dataset: rows method label, columns the noise
  settings (test accuracy), then the final epoch's clean-split precision /
  recall of the methods that purify at each noisy setting. ``visprompt demo``
  prints this one.
* :func:`purification_curves` - clean-split precision and recall per epoch,
  mean over seeds.

``std`` is the sample standard deviation (n - 1 in the denominator), the
interval the Student t interval of :mod:`~visprompt.experiments.report.stats`;
a cell of one run shows neither; ``(n=k)`` follows a cell with fewer runs than
the table's largest cell.

Best: in each group of competing cells (the methods of one row at one rate;
the settings of one ablation row), the cell with the highest mean is marked
only when it is *clearly better* than the runner-up - its 95% interval lies
wholly above the runner-up's (:func:`~visprompt.experiments.report.stats.clearly_better`).
A group of one cell, a tie, or overlapping intervals mark nothing.

An ``Average`` cell (method, noise type, rate) exists where every dataset of
the table with that noise type has the cell: per seed the mean over datasets
of that seed's accuracy (seeds present in every dataset), then mean, std and
interval over those per-seed averages - so its spread is the seeds' spread
of the average, not the datasets'.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from visprompt.experiments.report.records import (
    AVERAGE,
    RunRecord,
    fmt_rate,
    fmt_value,
    method_rank,
    noise_rank,
    short_names,
    table_title,
)
from visprompt.experiments.report.stats import LEVEL, clearly_better, interval


@dataclass
class Cell:
    """The values (test accuracies, or precisions in %) of the runs of one cell.

    ``seeds`` holds each value's seed (``data.seed``), in the order of
    ``values``; ``published`` the number a paper reports for the cell, if a
    ``--paper`` file has it.
    """

    values: list[float]
    run_ids: list[str]
    seeds: list = field(default_factory=list)
    best: bool = False
    published: float | None = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else None

    @property
    def ci(self) -> tuple[float, float] | None:
        """The 95% Student t interval of the mean; None for a cell of one run."""
        return interval(self.values)

    @property
    def diff(self) -> float | None:
        """Our mean minus the published number (None without one)."""
        return None if self.published is None else self.mean - self.published

    def text(self, expected_n: int, digits: int = 2) -> str:
        """``mean ± std`` at ``digits`` decimals, ``(n=k)`` when short of ``expected_n`` runs."""
        out = f"{self.mean:.{digits}f}"
        if self.std is not None:
            out += f" ± {self.std:.{digits}f}"
        if self.n < expected_n:
            out += f" (n={self.n})"
        return out

    def ci_text(self, digits: int = 1) -> str:
        """``[low, high]`` of the interval, ``""`` for a cell of one run."""
        ci = self.ci
        return "" if ci is None else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"

    def text_ci(self, expected_n: int, digits: int = 2) -> str:
        """``mean ± std [low, high]`` (the interval at one decimal fewer), ``(n=k)`` as in :meth:`text`."""
        out = f"{self.mean:.{digits}f}"
        if self.std is not None:
            out += f" ± {self.std:.{digits}f} {self.ci_text(max(digits - 1, 0))}"
        if self.n < expected_n:
            out += f" (n={self.n})"
        return out


@dataclass
class Table:
    """Rows x columns of cells; ``cells[(row, column)]``.

    ``untrained`` holds the labels whose runs trained nothing (see
    :attr:`RunRecord.trained`): plots draw them at every noise rate.
    """

    title: str
    key: tuple
    rows: list[tuple]
    columns: list[tuple]
    cells: dict[tuple, Cell]
    untrained: frozenset[str] = frozenset()

    @property
    def expected_n(self) -> int:
        return max((c.n for c in self.cells.values()), default=0)


def _add(cells: dict[tuple, Cell], at: tuple, value: float, run_id: str, seed: Any = None) -> None:
    cell = cells.setdefault(at, Cell([], []))
    cell.values.append(value)
    cell.run_ids.append(run_id)
    cell.seeds.append(seed)


def mark_best(cells: Iterable[Cell]) -> Cell | None:
    """Mark the top cell of one group where it is clearly better than the runner-up.

    Returns the marked cell, or None (one cell, a tie, or overlapping
    intervals); see the module docstring.
    """
    ranked = sorted(cells, key=lambda c: c.mean, reverse=True)
    for c in ranked:
        c.best = False
    if len(ranked) >= 2 and clearly_better(ranked[0].values, ranked[1].values):
        ranked[0].best = True
        return ranked[0]
    return None


def _mark_best(table: Table, group_of: Callable[[tuple, tuple], Any]) -> None:
    """:func:`mark_best` in each group of cells with the same ``group_of(row, column)``."""
    groups: dict[Any, list[Cell]] = defaultdict(list)
    for (row, column), cell in table.cells.items():
        groups[group_of(row, column)].append(cell)
    for cells in groups.values():
        mark_best(cells)


def _average_cells(cells: dict[tuple, Cell]) -> dict[tuple, Cell]:
    """``(AVERAGE, noise), column`` cells: per-seed means over datasets (module docstring)."""
    datasets: dict[str, set[str]] = defaultdict(set)  # noise type -> datasets with that row
    for (dataset, noise), _ in cells:
        datasets[noise].add(dataset)
    out: dict[tuple, Cell] = {}
    columns = {column for _, column in cells}
    for noise, names in datasets.items():
        if len(names) < 2:
            continue  # the average of one dataset is that dataset's row
        for column in columns:
            mine = [cells.get(((d, noise), column)) for d in sorted(names)]
            if any(c is None for c in mine):
                continue
            by_seed = []
            for c in mine:
                seeds: dict[Any, list[float]] = defaultdict(list)
                for seed, value in zip(c.seeds, c.values, strict=True):
                    seeds[seed].append(value)
                by_seed.append({s: statistics.fmean(v) for s, v in seeds.items()})
            common = set.intersection(*(set(b) for b in by_seed))
            if not common:
                continue
            order = sorted(common, key=str)
            avg = Cell(
                values=[statistics.fmean(b[s] for b in by_seed) for s in order],
                run_ids=[
                    r for c in mine for r, s in zip(c.run_ids, c.seeds, strict=True) if s in common
                ],
                seeds=order,
            )
            published = [c.published for c in mine]
            if all(p is not None for p in published):
                avg.published = statistics.fmean(published)
            out[((AVERAGE, noise), column)] = avg
    return out


def _untrained_labels(records: Iterable[RunRecord]) -> frozenset[str]:
    trained: dict[str, bool] = {}
    for r in records:
        trained[r.label] = trained.get(r.label, False) or r.trained
    return frozenset(label for label, t in trained.items() if not t)


def _table_keys(records: Iterable[RunRecord]) -> list[tuple]:
    return sorted({r.table_key for r in records}, key=lambda k: tuple(map(str, k)))


# ---------------------------------------------------------------- paper and ablation tables


def paper_tables(
    records: list[RunRecord],
    published: Callable[[tuple, str, str, float, str], float | None] | None = None,
) -> list[Table]:
    """One paper-style table per (backbone, shots, protocol), with ``Average`` rows; best marked.

    ``published(table_key, dataset, noise_type, rate, label)`` gives a paper's
    number for a cell (:class:`~visprompt.experiments.report.published.Published`), or None.
    """
    tables = []
    for key in _table_keys(records):
        mine = [r for r in records if r.table_key == key]
        cells: dict[tuple, Cell] = {}
        for r in mine:
            at = ((r.dataset, r.noise_type), (r.noise_rate, r.label))
            _add(cells, at, r.accuracy, r.run_id, r.seed)
        if published is not None:
            for ((dataset, noise), (rate, label)), cell in cells.items():
                cell.published = published(key, dataset, noise, rate, label)
        cells.update(_average_cells(cells))
        rows = sorted(
            {at[0] for at in cells},
            key=lambda rw: (rw[0] == AVERAGE, rw[0], noise_rank(rw[1])),
        )
        columns = sorted({at[1] for at in cells}, key=lambda c: (c[0], method_rank(c[1])))
        table = Table(table_title(key), key, rows, columns, cells, _untrained_labels(mine))
        _mark_best(table, lambda row, column: (row, column[0]))
        tables.append(table)
    return tables


def ablation_tables(records: list[RunRecord], keys: dict[str, list[str]]) -> list[Table]:
    """Per method with differing settings: rows (dataset, setting), columns (noise, rate)."""
    tables = []
    for method in sorted(keys, key=method_rank):
        mine = [r for r in records if r.method == method]
        for key in _table_keys(mine):
            cells: dict[tuple, Cell] = {}
            for r in (r for r in mine if r.table_key == key):
                setting = tuple(fmt_value(r.flat.get(k)) for k in keys[method])
                at = ((r.dataset, setting), (r.noise_type, r.noise_rate))
                _add(cells, at, r.accuracy, r.run_id, r.seed)
            rows = sorted({at[0] for at in cells})
            columns = sorted({at[1] for at in cells}, key=lambda c: (noise_rank(c[0]), c[1]))
            title = f"Ablation of {method}: {table_title(key)}"
            table = Table(title, (method, *key), rows, columns, cells)
            _mark_best(table, lambda row, column: (row[0], column))
            tables.append(table)
    return tables


# ---------------------------------------------------------------- methods x noise settings


def setting_name(noise: str, rate: float) -> str:
    """``clean``, ``real`` or ``sym 50%``: a noise setting as column headers name it."""
    if noise in ("none", "real"):
        return "clean" if noise == "none" else "real"
    return f"{noise} {fmt_rate(rate)}"


@dataclass
class MethodTable:
    """Methods x noise settings of one dataset (see :func:`method_tables`).

    ``accuracy[(label, setting)]`` holds test accuracies; ``precision`` and
    ``recall`` the final epoch's clean-split precision and recall (in %) at the
    ``purified`` settings, for the labels whose runs purify.
    """

    title: str
    key: tuple
    labels: list[str]
    settings: list[tuple[str, float]]
    purified: list[tuple[str, float]]
    accuracy: dict[tuple, Cell] = field(default_factory=dict)
    precision: dict[tuple, Cell] = field(default_factory=dict)
    recall: dict[tuple, Cell] = field(default_factory=dict)

    @property
    def expected_n(self) -> int:
        return max((c.n for c in self.accuracy.values()), default=0)

    def header(self) -> list[str]:
        head = ["method"] + [f"acc {setting_name(*s)}" for s in self.settings]
        return head + [f"clean-split prec/rec {setting_name(*s)}" for s in self.purified]

    def rows(self, digits: int = 2) -> list[list[str]]:
        """The cells as shown: ``mean ± std`` text, ``-`` where there is nothing."""
        n = self.expected_n

        def text(cells: dict[tuple, Cell], at: tuple) -> str:
            return cells[at].text(n, digits) if at in cells else "-"

        out = []
        for label in self.labels:
            row = [label] + [text(self.accuracy, (label, s)) for s in self.settings]
            for s in self.purified:
                at = (label, s)
                row.append(
                    f"{text(self.precision, at)} / {text(self.recall, at)}"
                    if at in self.precision and at in self.recall
                    else "-"
                )
            out.append(row)
        return out


def method_tables(records: list[RunRecord]) -> list[MethodTable]:
    """One table per (backbone, shots, protocol, dataset): method labels x noise settings.

    A label whose runs trained nothing (zero-shot) shows its accuracy at every
    setting of the table: the training labels never reached it. Where it ran
    at several settings, each setting shows its own runs, and a setting it did
    not run at shows those of the setting where it ran most. Purification
    columns (the last epoch's clean split against the true labels) appear for
    the noisy settings where some run purified.
    """
    tables = []
    for key in _table_keys(records):
        for dataset in sorted({r.dataset for r in records if r.table_key == key}):
            mine = [r for r in records if r.table_key == key and r.dataset == dataset]
            settings = sorted(
                {(r.noise_type, r.noise_rate) for r in mine},
                key=lambda s: (noise_rank(s[0]), s[1]),
            )
            labels = sorted({r.label for r in mine}, key=method_rank)
            table = MethodTable(
                title=f"{dataset}: {table_title(key)}",
                key=(*key, dataset),
                labels=labels,
                settings=settings,
                purified=[],
            )
            for r in mine:
                at = (r.label, (r.noise_type, r.noise_rate))
                _add(table.accuracy, at, r.accuracy, r.run_id, r.seed)
                final = _final_purification(r)
                if final is not None and r.noise_type != "none":
                    _add(table.precision, at, 100 * final["precision"], r.run_id, r.seed)
                    _add(table.recall, at, 100 * final["recall"], r.run_id, r.seed)
            for label in _untrained_labels(mine):
                own = [s for s in settings if (label, s) in table.accuracy]
                source = max(own, key=lambda s: table.accuracy[(label, s)].n)
                for s in settings:
                    if (label, s) not in table.accuracy:
                        cell = table.accuracy[(label, source)]
                        table.accuracy[(label, s)] = Cell(
                            list(cell.values), list(cell.run_ids), list(cell.seeds)
                        )
            table.purified = [
                s for s in settings if any((lb, s) in table.precision for lb in labels)
            ]
            tables.append(table)
    return tables


def _final_purification(record: RunRecord) -> dict | None:
    """The last epoch's purification row with both precision and recall, or None."""
    for row in reversed(record.purification):
        if row.get("precision") is not None and row.get("recall") is not None:
            return row
    return None


# ---------------------------------------------------------------- purification curves

#: the logged split metrics (:data:`visprompt.robust.quality.PURIFY_COLUMNS`) a report plots and
#: tabulates per epoch, in its column order (pseudo-label accuracy is OT-only, left out)
PURIFY_METRICS = ("precision", "recall", "clean_fraction", "noisy_precision", "noisy_recall")


def purification_curves(records: list[RunRecord]) -> dict[tuple, dict[int, dict[str, Any]]]:
    """``(table key, dataset, noise, label, rate) -> epoch -> {n, metric means}`` over seeds."""
    groups: dict[tuple, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        for row in r.purification:
            key = (r.table_key, r.dataset, r.noise_type, r.label, r.noise_rate)
            groups[key][int(row["epoch"])].append(row)
    curves: dict[tuple, dict[int, dict[str, Any]]] = {}
    for key, by_epoch in groups.items():
        curves[key] = {}
        for epoch, rows in sorted(by_epoch.items()):
            entry: dict[str, Any] = {"n": len(rows)}
            for metric in PURIFY_METRICS:
                values = [row[metric] for row in rows if row.get(metric) is not None]
                entry[metric] = statistics.fmean(values) if values else None
            curves[key][epoch] = entry
    return curves


# ---------------------------------------------------------------- Markdown


def md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _shown(cell: Cell | None, expected_n: int) -> str:
    if cell is None:
        return ""
    text = cell.text_ci(expected_n)
    return f"**{text}**" if cell.best else text


#: the legend under every table that marks a best cell
BEST_LEGEND = (
    f"Cells: mean ± sample std over seeds [{LEVEL:.0%} Student t confidence interval of the "
    "mean]; (n=k): fewer runs than the other cells. **Bold**: the best cell of its group, "
    "marked only where its interval lies wholly above the runner-up's (no overlap); "
    "overlapping intervals, ties and cells of one run mark nothing."
)


def paper_table_markdown(table: Table) -> str:
    head = ["Dataset", "Noise"] + [f"{fmt_rate(rate)} {label}" for rate, label in table.columns]
    lines = [
        "| " + " | ".join(md_escape(h) for h in head) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * len(table.columns)) + "|",
    ]
    for row in table.rows:
        cells = [
            _shown(table.cells.get((row, column)), table.expected_n) for column in table.columns
        ]
        lines.append("| " + " | ".join([row[0], row[1], *cells]) + " |")
    return "\n".join(lines)


def ablation_markdown(table: Table, setting_keys: list[str]) -> str:
    short = short_names(setting_keys)
    head = ["Dataset", *(short[k] for k in setting_keys)]
    head += [f"{noise} {fmt_rate(rate)}" for noise, rate in table.columns]
    lines = [
        "| " + " | ".join(md_escape(h) for h in head) + " |",
        "|" + "|".join(["---"] * (1 + len(setting_keys)) + ["---:"] * len(table.columns)) + "|",
    ]
    for dataset, setting in table.rows:
        cells = [
            _shown(table.cells.get(((dataset, setting), column)), table.expected_n)
            for column in table.columns
        ]
        lines.append("| " + " | ".join([dataset, *setting, *cells]) + " |")
    return "\n".join(lines)


def method_table_markdown(table: MethodTable, digits: int = 2) -> str:
    header = table.header()
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in table.rows(digits)]
    return "\n".join(lines)


# ---------------------------------------------------------------- CSV


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


#: the tidy-CSV columns of one table cell (:func:`_cell_fields`)
CELL_FIELDS = ("n", "mean", "std", "ci_low", "ci_high", "best", "values", "seeds", "run_ids")


def _cell_fields(cell: Cell) -> list:
    """The :data:`CELL_FIELDS` of one cell; per-seed values, seeds and run ids ``;``-joined,
    in the order of the seeds."""
    low, high = cell.ci or (None, None)
    seeds = cell.seeds if len(cell.seeds) == cell.n else [None] * cell.n
    order = sorted(range(cell.n), key=lambda i: (seeds[i] is None, str(seeds[i]).zfill(12)))
    return [
        cell.n,
        _num(cell.mean),
        _num(cell.std),
        _num(low),
        _num(high),
        int(cell.best),
        ";".join(f"{cell.values[i]:.6f}" for i in order),
        ";".join("" if seeds[i] is None else str(seeds[i]) for i in order),
        # an Average cell's runs are every dataset's: all of them, in dataset order
        ";".join(cell.run_ids[i] for i in order)
        if len(cell.run_ids) == cell.n
        else ";".join(cell.run_ids),
    ]


def paper_table_csv(tables: list[Table]) -> str:
    """Tidy CSV: one line per cell (``Average`` rows included): :data:`CELL_FIELDS`, published, diff."""
    header = [
        "backbone", "shots", "protocol", "dataset", "noise_type", "noise_rate", "method",
        *CELL_FIELDS, "published", "diff",
    ]  # fmt: skip
    rows = []
    for t in tables:
        for row in t.rows:
            for column in t.columns:
                cell = t.cells.get((row, column))
                if cell is not None:
                    rows.append(
                        [*t.key, row[0], row[1], column[0], column[1], *_cell_fields(cell)]
                        + [_num(cell.published), _num(cell.diff)]
                    )
    return csv_text(header, rows)


def paper_table_wide_csv(tables: list[Table]) -> str:
    """The table as shown: ``mean ± std [CI]`` strings, ``*`` after a best cell."""
    columns: list[tuple] = []
    for t in tables:
        columns.extend(c for c in t.columns if c not in columns)
    columns.sort(key=lambda c: (c[0], method_rank(c[1])))
    header = ["backbone", "shots", "protocol", "dataset", "noise_type"]
    header += [f"{fmt_rate(rate)} {label}" for rate, label in columns]
    rows = []
    for t in tables:
        for row in t.rows:
            line = [*t.key, *row]
            for column in columns:
                cell = t.cells.get((row, column))
                line.append(
                    "" if cell is None else cell.text_ci(t.expected_n) + ("*" if cell.best else "")
                )
            rows.append(line)
    return csv_text(header, rows)


def ablation_csv(tables: list[Table], keys: dict[str, list[str]]) -> str:
    header = [
        "method", "backbone", "shots", "protocol", "dataset", "setting", "noise_type",
        "noise_rate", *CELL_FIELDS,
    ]  # fmt: skip
    rows = []
    for t in tables:
        method = t.key[0]
        short = short_names(keys[method])
        for dataset, setting in t.rows:
            text = ", ".join(f"{short[k]}={v}" for k, v in zip(keys[method], setting, strict=True))
            for column in t.columns:
                cell = t.cells.get(((dataset, setting), column))
                if cell is not None:
                    rows.append([*t.key, dataset, text, *column, *_cell_fields(cell)])
    return csv_text(header, rows)


def method_table_csv(tables: list[MethodTable], digits: int = 2) -> str:
    """The methods tables as shown, one line per (table, label), prefixed by what places them."""
    columns: list[str] = []
    for t in tables:
        columns.extend(h for h in t.header()[1:] if h not in columns)
    header = ["backbone", "shots", "protocol", "dataset", "method", *columns]
    rows = []
    for t in tables:
        head = t.header()
        for row in t.rows(digits):
            shown = dict(zip(head, row, strict=True))
            rows.append([*t.key, row[0], *(shown.get(c, "") for c in columns)])
    return csv_text(header, rows)


def purification_csv(curves: dict[tuple, dict[int, dict[str, Any]]]) -> str:
    header = [
        "backbone", "shots", "protocol", "dataset", "noise_type", "method", "noise_rate",
        "epoch", "n", *PURIFY_METRICS,
    ]  # fmt: skip
    rows = []
    for key in sorted(curves, key=lambda k: tuple(map(str, k))):
        table_key, dataset, noise, label, rate = key
        for epoch, entry in sorted(curves[key].items()):
            rows.append(
                [*table_key, dataset, noise, label, rate, epoch, entry["n"]]
                + [_num(entry[m]) for m in PURIFY_METRICS]
            )
    return csv_text(header, rows)
