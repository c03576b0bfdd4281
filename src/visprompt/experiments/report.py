"""Reports from a results database: paper-style tables, plots, ablations, an index page.

:func:`write_report` reads the finished runs (``status = done``) of a results
database, optionally filtered by dataset, method and backbone, and writes into
one folder:

``table.md`` / ``table.csv`` / ``table_wide.csv``
    The paper-style table: rows dataset x noise type, columns noise rate x
    method, cells ``mean ± std`` of the test accuracy over the runs that differ
    only in their seeds (``data.seed`` / ``seed``). ``std`` is the sample
    standard deviation (n - 1 in the denominator); a cell of one run shows no
    std. ``(n=k)`` follows a cell with fewer runs than the table's largest
    cell. The best method of each row at each noise rate is marked (bold in
    Markdown, ``*`` in ``table_wide.csv``, ``best = 1`` in the tidy
    ``table.csv``); ties, compared at the two shown decimals, are all marked.
    One table per (backbone, shots, noise protocol).
``plots/accuracy-<dataset>-<noise>.png``
    Accuracy vs noise rate per dataset and noise type, one line per method,
    error bars = std over seeds; the clean runs (noise type ``none``) of the
    same dataset, if any, are drawn at rate 0.
``plots/purification-<dataset>-<noise>-<method>.png`` and ``purification.csv``
    For methods that purify the training set (OT methods log ``purify_*``
    metrics): precision and recall of the clean split against the true labels
    over the epochs, mean over seeds, one line per noise rate.
``ablation.md`` / ``ablation.csv``
    When runs of one method differ in its own settings (e.g. VisPrompt's
    ``attention``, ``film``, ``gate``, ``purify``, ``visual_tokens``
    switches): settings x (noise type, rate) per dataset.
``index.md``
    Links to everything, with the tables inline and the plots embedded.

A method's runs that differ in any setting besides seeds, dataset, noise and
backbone (e.g. ablation switches, or two learning rates) become separate
columns labelled with the settings that differ from the method's defaults,
e.g. ``visprompt`` and ``visprompt (film=off)``, so runs with different
settings are never averaged together.

The report is written into a temporary folder and moved into place at the
end, so a failure leaves no half-written report.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visprompt.config import identity_dict
from visprompt.errors import VispromptError
from visprompt.experiments.store import DEFAULT_TIMEOUT, ResultsStore, backbone_label

#: Column order of well-known methods; others follow alphabetically.
METHOD_ORDER = ("zeroshot", "coop", "cocoop", "gce", "ptnl", "joapr", "nlprompt", "visprompt")
#: Noise types whose rows have a rate (drawn as accuracy-vs-rate plots).
NOISE_ORDER = ("none", "real", "sym", "asym", "asym-semantic")
#: Config keys that place a run in the table (or are its seeds), never in a method label.
PLACEMENT_KEYS = frozenset(
    {
        "data.dataset",
        "data.root",
        "data.shots",
        "data.seed",
        "seed",
        "noise.type",
        "noise.rate",
        "noise.protocol",
        "method.name",
    }
)


@dataclass
class RunRecord:
    """A finished run as the report sees it."""

    run_id: str
    method: str
    dataset: str
    noise_type: str
    noise_rate: float
    backbone: str
    shots: int | None
    protocol: str
    seed: Any
    accuracy: float
    flat: dict[str, Any]
    purification: list[dict] = field(default_factory=list)
    label: str = ""

    @property
    def table_key(self) -> tuple[str, Any, str]:
        return (self.backbone, self.shots, self.protocol)


@dataclass
class Cell:
    """Test accuracies of the runs of one table cell and their summary."""

    values: list[float]
    run_ids: list[str]
    best: bool = False

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else None

    def text(self, expected_n: int) -> str:
        out = f"{self.mean:.2f}"
        if self.std is not None:
            out += f" ± {self.std:.2f}"
        if self.n < expected_n:
            out += f" (n={self.n})"
        return out


@dataclass
class Table:
    """Rows x columns of cells; ``cells[(row, column)]``."""

    title: str
    key: tuple
    rows: list[tuple]
    columns: list[tuple]
    cells: dict[tuple, Cell]

    @property
    def expected_n(self) -> int:
        return max((c.n for c in self.cells.values()), default=0)


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote."""

    folder: Path
    files: list[Path]
    runs: int


# ---------------------------------------------------------------- loading


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def _matches(value: str, wanted: Sequence[str] | None) -> bool:
    return not wanted or value.lower() in {w.lower() for w in wanted}


def load_records(
    store: ResultsStore,
    datasets: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    backbones: Sequence[str] | None = None,
) -> list[RunRecord]:
    """The finished runs of ``store`` that pass the filters, with method labels assigned.

    Raises:
        VispromptError: no finished run, or none passes the filters.
    """
    rows = store.list_runs(status=["done"])
    if not rows:
        raise VispromptError(
            f"results database {store.path} holds no finished runs; run a sweep into it first"
        )
    records = []
    for row in rows:
        if row["test_accuracy"] is None:  # a non-finite accuracy: nothing to average
            continue
        config = row["config"]
        result = row["result"] or {}
        backbone = str(result.get("backbone") or backbone_label(config))
        rec = RunRecord(
            run_id=row["id"],
            method=str(row["method"]),
            dataset=str(row["dataset"]),
            noise_type=str(row["noise_type"]),
            noise_rate=float(row["noise_rate"] or 0.0),
            backbone=backbone,
            shots=row["shots"],
            protocol=str((config.get("noise") or {}).get("protocol", "relabel")),
            seed=row["seed"],
            accuracy=float(row["test_accuracy"]),
            flat=_flatten(identity_dict(config)),
        )
        if not (
            _matches(rec.dataset, datasets)
            and _matches(rec.method, methods)
            and (_matches(rec.backbone, backbones) or _matches(backbone_label(config), backbones))
        ):
            continue
        rec.purification = store.purification(rec.run_id)
        records.append(rec)
    if not records:
        filters = " ".join(
            f"--{name} {v}"
            for name, values in (
                ("dataset", datasets),
                ("method", methods),
                ("backbone", backbones),
            )
            for v in values or []
        )
        available = (
            f"datasets {', '.join(sorted({r['dataset'] for r in rows}))}; methods "
            f"{', '.join(sorted({r['method'] for r in rows}))}"
        )
        raise VispromptError(
            f"no finished run in {store.path} matches {filters}; the database has {available}"
        )
    assign_labels(records)
    return records


def variant_keys(records: Iterable[RunRecord]) -> dict[str, list[str]]:
    """Per method, the settings that differ between runs that would share a table cell."""
    cells: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in records:
        cells[(r.table_key, r.dataset, r.noise_type, r.noise_rate, r.method)].append(r)
    out: dict[str, set[str]] = defaultdict(set)
    for (*_, method), group in cells.items():
        keys = set().union(*(g.flat for g in group))
        for key in keys:
            if key in PLACEMENT_KEYS or key.startswith("backbone."):
                continue
            values = {repr(g.flat.get(key)) for g in group}
            if len(values) > 1:
                out[method].add(key)
    return {m: sorted(keys) for m, keys in out.items()}


def _short_names(keys: list[str]) -> dict[str, str]:
    last = [k.split(".")[-1] for k in keys]
    return {
        k: (s if last.count(s) == 1 else k.removeprefix("method."))
        for k, s in zip(keys, last, strict=True)
    }


def _fmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "-" if value is None else str(value)


def method_defaults(method: str) -> dict[str, Any]:
    """``method.<option>`` -> default value (as JSON gives it) of a registered method."""
    import json

    from visprompt.methods import METHOD_REGISTRY

    if method not in METHOD_REGISTRY:
        return {}
    out = {}
    for name, info in METHOD_REGISTRY.get(method).config_cls.model_fields.items():
        if not info.is_required():
            try:
                out[f"method.{name}"] = json.loads(json.dumps(info.get_default()))
            except (TypeError, ValueError):
                continue
    return out


def assign_labels(records: list[RunRecord]) -> dict[str, list[str]]:
    """Set each record's column label: the method name plus its differing settings.

    A method option at its registered default is left out of the label, so
    the full model of an ablation is plain ``visprompt`` and its variants read
    ``visprompt (attention=off)``; distinct settings always get distinct labels.
    """
    keys = variant_keys(records)
    defaults = {method: method_defaults(method) for method in keys}
    for r in records:
        mine = keys.get(r.method, [])
        short = _short_names(mine)
        unset = object()
        shown = [k for k in mine if defaults[r.method].get(k, unset) != r.flat.get(k)]
        setting = ", ".join(f"{short[k]}={_fmt_value(r.flat.get(k))}" for k in shown)
        r.label = f"{r.method} ({setting})" if setting else r.method
    return keys


def _method_rank(label: str) -> tuple:
    base = label.split(" (")[0]
    pos = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
    return (pos, base, label)


def _noise_rank(noise: str) -> tuple:
    return (NOISE_ORDER.index(noise) if noise in NOISE_ORDER else len(NOISE_ORDER), noise)


def _fmt_rate(rate: float) -> str:
    return f"{rate * 100:g}%"


def _table_title(key: tuple) -> str:
    backbone, shots, protocol = key
    shots_text = "all images" if shots is None else f"{shots} shots"
    return f"{backbone}, {shots_text}, {protocol} noise"


def _mark_best(table: Table, group_of: Any) -> None:
    """Mark the best cell(s) of each group (cells with the same ``group_of(row, column)``)."""
    groups: dict[Any, list[Cell]] = defaultdict(list)
    for (row, column), cell in table.cells.items():
        groups[group_of(row, column)].append(cell)
    for cells in groups.values():
        top = max(round(c.mean, 2) for c in cells)
        for c in cells:
            c.best = round(c.mean, 2) == top


# ---------------------------------------------------------------- tables


def paper_tables(records: list[RunRecord]) -> list[Table]:
    """One paper-style table per (backbone, shots, protocol); best per row and rate marked."""
    tables = []
    for key in sorted({r.table_key for r in records}, key=lambda k: tuple(map(str, k))):
        mine = [r for r in records if r.table_key == key]
        cells: dict[tuple, Cell] = {}
        for r in mine:
            at = ((r.dataset, r.noise_type), (r.noise_rate, r.label))
            cell = cells.setdefault(at, Cell([], []))
            cell.values.append(r.accuracy)
            cell.run_ids.append(r.run_id)
        rows = sorted({at[0] for at in cells}, key=lambda rw: (rw[0], _noise_rank(rw[1])))
        columns = sorted({at[1] for at in cells}, key=lambda c: (c[0], _method_rank(c[1])))
        table = Table(_table_title(key), key, rows, columns, cells)
        _mark_best(table, lambda row, column: (row, column[0]))
        tables.append(table)
    return tables


def ablation_tables(records: list[RunRecord], keys: dict[str, list[str]]) -> list[Table]:
    """Per method with differing settings: rows (dataset, setting), columns (noise, rate)."""
    tables = []
    for method in sorted(keys, key=_method_rank):
        mine = [r for r in records if r.method == method]
        for key in sorted({r.table_key for r in mine}, key=lambda k: tuple(map(str, k))):
            cells: dict[tuple, Cell] = {}
            for r in (r for r in mine if r.table_key == key):
                setting = tuple(_fmt_value(r.flat.get(k)) for k in keys[method])
                at = ((r.dataset, setting), (r.noise_type, r.noise_rate))
                cell = cells.setdefault(at, Cell([], []))
                cell.values.append(r.accuracy)
                cell.run_ids.append(r.run_id)
            rows = sorted({at[0] for at in cells})
            columns = sorted({at[1] for at in cells}, key=lambda c: (_noise_rank(c[0]), c[1]))
            title = f"Ablation of {method}: {_table_title(key)}"
            table = Table(title, (method, *key), rows, columns, cells)
            _mark_best(table, lambda row, column: (row[0], column))
            tables.append(table)
    return tables


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def paper_table_markdown(table: Table) -> str:
    head = ["Dataset", "Noise"] + [f"{_fmt_rate(rate)} {label}" for rate, label in table.columns]
    lines = [
        "| " + " | ".join(_md_escape(h) for h in head) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * len(table.columns)) + "|",
    ]
    for row in table.rows:
        cells = []
        for column in table.columns:
            cell = table.cells.get((row, column))
            if cell is None:
                cells.append("")
                continue
            text = cell.text(table.expected_n)
            cells.append(f"**{text}**" if cell.best else text)
        lines.append("| " + " | ".join([row[0], row[1], *cells]) + " |")
    return "\n".join(lines)


def ablation_markdown(table: Table, setting_keys: list[str]) -> str:
    short = _short_names(setting_keys)
    head = ["Dataset", *(short[k] for k in setting_keys)]
    head += [f"{noise} {_fmt_rate(rate)}" for noise, rate in table.columns]
    lines = [
        "| " + " | ".join(_md_escape(h) for h in head) + " |",
        "|" + "|".join(["---"] * (1 + len(setting_keys)) + ["---:"] * len(table.columns)) + "|",
    ]
    for dataset, setting in table.rows:
        cells = []
        for column in table.columns:
            cell = table.cells.get(((dataset, setting), column))
            if cell is None:
                cells.append("")
                continue
            text = cell.text(table.expected_n)
            cells.append(f"**{text}**" if cell.best else text)
        lines.append("| " + " | ".join([dataset, *setting, *cells]) + " |")
    return "\n".join(lines)


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _cell_fields(cell) -> list:
    """The tidy-CSV columns n, mean, std, best, run_ids of one table cell."""
    return [cell.n, _num(cell.mean), _num(cell.std), int(cell.best), ";".join(cell.run_ids)]


def paper_table_csv(tables: list[Table]) -> str:
    """Tidy CSV: one line per cell, with its mean, std, n, best flag and run ids."""
    header = [
        "backbone", "shots", "protocol", "dataset", "noise_type", "noise_rate", "method",
        "n", "mean", "std", "best", "run_ids",
    ]  # fmt: skip
    rows = []
    for t in tables:
        for row in t.rows:
            for column in t.columns:
                cell = t.cells.get((row, column))
                if cell is None:
                    continue
                rows.append(
                    [
                        *t.key,
                        row[0],
                        row[1],
                        column[0],
                        column[1],
                        *_cell_fields(cell),
                    ]
                )
    return _csv_text(header, rows)


def paper_table_wide_csv(tables: list[Table]) -> str:
    """The table as shown: ``mean ± std`` strings, ``*`` after the best of each row and rate."""
    columns: list[tuple] = []
    for t in tables:
        columns.extend(c for c in t.columns if c not in columns)
    columns.sort(key=lambda c: (c[0], _method_rank(c[1])))
    header = ["backbone", "shots", "protocol", "dataset", "noise_type"]
    header += [f"{_fmt_rate(rate)} {label}" for rate, label in columns]
    rows = []
    for t in tables:
        for row in t.rows:
            line = [*t.key, *row]
            for column in columns:
                cell = t.cells.get((row, column))
                line.append(
                    "" if cell is None else cell.text(t.expected_n) + ("*" if cell.best else "")
                )
            rows.append(line)
    return _csv_text(header, rows)


def ablation_csv(tables: list[Table], keys: dict[str, list[str]]) -> str:
    header = [
        "method", "backbone", "shots", "protocol", "dataset", "setting", "noise_type",
        "noise_rate", "n", "mean", "std", "best", "run_ids",
    ]  # fmt: skip
    rows = []
    for t in tables:
        method = t.key[0]
        short = _short_names(keys[method])
        for dataset, setting in t.rows:
            text = ", ".join(f"{short[k]}={v}" for k, v in zip(keys[method], setting, strict=True))
            for column in t.columns:
                cell = t.cells.get(((dataset, setting), column))
                if cell is None:
                    continue
                rows.append(
                    [
                        *t.key,
                        dataset,
                        text,
                        *column,
                        *_cell_fields(cell),
                    ]
                )
    return _csv_text(header, rows)


# ---------------------------------------------------------------- plots


def _slug(*parts: Any) -> str:
    text = "_".join(str(p) for p in parts if p is not None and str(p) != "")
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-").lower()


def _figure(width: float = 6.4, height: float = 4.2, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def accuracy_plots(tables: list[Table], folder: Path, multi: bool) -> list[tuple[str, Path]]:
    """Accuracy vs noise rate per (table, dataset, noise type with rates); returns (title, path)."""
    out = []
    for t in tables:
        datasets = sorted({row[0] for row in t.rows})
        for dataset in datasets:
            noises = sorted(
                {row[1] for row in t.rows if row[0] == dataset and row[1] not in ("none", "real")},
                key=_noise_rank,
            )
            for noise in noises:
                fig, (ax,) = _figure()
                labels = sorted(
                    {c[1] for (row, c) in t.cells if row == (dataset, noise)}, key=_method_rank
                )
                for label in labels:
                    points = []
                    clean = [
                        (c[0], cell)
                        for (row, c), cell in t.cells.items()
                        if row == (dataset, "none") and c[1] == label
                    ]
                    noisy = [
                        (c[0], cell)
                        for (row, c), cell in t.cells.items()
                        if row == (dataset, noise) and c[1] == label
                    ]
                    points = sorted(clean + noisy, key=lambda p: p[0])
                    xs = [100 * rate for rate, _ in points]
                    ys = [cell.mean for _, cell in points]
                    errs = [cell.std or 0.0 for _, cell in points]
                    ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=label)
                ax.set_xlabel("noise rate (%)")
                ax.set_ylabel("test accuracy (%)")
                title = f"{dataset} - {noise} noise"
                ax.set_title(title + (f" ({t.title})" if multi else ""), fontsize=10)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)
                fig.tight_layout()
                name = _slug("accuracy", dataset, noise, _slug(*t.key) if multi else None)
                path = folder / "plots" / f"{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                fig.savefig(path)
                out.append((title + (f" ({t.title})" if multi else ""), path))
    return out


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


def purification_plots(
    curves: dict[tuple, dict[int, dict[str, Any]]], folder: Path, multi: bool
) -> list[tuple[str, Path]]:
    """Precision and recall of the clean split vs epoch, per (dataset, noise, method)."""
    from matplotlib.ticker import MaxNLocator

    out = []
    figures = sorted({key[:4] for key in curves}, key=lambda k: tuple(map(str, k)))
    for table_key, dataset, noise, label in figures:
        fig, axes = _figure(width=10.0, height=4.0, ncols=2)
        rates = sorted(k[4] for k in curves if k[:4] == (table_key, dataset, noise, label))
        for rate in rates:
            by_epoch = curves[(table_key, dataset, noise, label, rate)]
            epochs = sorted(by_epoch)
            for ax, metric in zip(axes, ("precision", "recall"), strict=True):
                ys = [by_epoch[e][metric] for e in epochs]
                xs = [e for e, y in zip(epochs, ys, strict=True) if y is not None]
                ys = [y for y in ys if y is not None]
                if xs:
                    ax.plot(xs, ys, marker=".", label=f"{_fmt_rate(rate)}")
        for ax, metric in zip(axes, ("precision", "recall"), strict=True):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"clean-split {metric}")
            ax.grid(alpha=0.3)
            ax.legend(title="noise rate", fontsize=8)
        title = f"{dataset} - {noise} noise - {label}"
        if multi:
            title += f" ({_table_title(table_key)})"
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        name = _slug("purification", dataset, noise, label, _slug(*table_key) if multi else None)
        path = folder / "plots" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        out.append((title, path))
    return out


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
    return _csv_text(header, rows)


# ---------------------------------------------------------------- writing


def _prepare_out(out: Path) -> Path:
    """A temporary folder next to ``out``; refuse an ``out`` that is not a report."""
    if out.exists():
        if not out.is_dir():
            raise VispromptError(f"report output {out} is a file; give a folder for --out")
        if any(out.iterdir()) and not (out / "index.md").is_file():
            raise VispromptError(
                f"folder {out} is not empty and holds no earlier report (no index.md); give an "
                "empty or new folder for --out"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def _swap_into_place(tmp: Path, out: Path) -> None:
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / "report")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def write_report(
    db_path: str | Path,
    out: str | Path,
    datasets: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    backbones: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> ReportFiles:
    """Write the report of a results database into the folder ``out`` (see module docstring).

    Raises:
        VispromptError: the database is missing, empty or unusable; nothing
            matches the filters; ``out`` is a file or a non-empty folder that is
            not an earlier report.
    """
    out = Path(out).expanduser()
    with ResultsStore(db_path, timeout=timeout, create=False) as store:
        records = load_records(store, datasets, methods, backbones)
        counts: dict[str, int] = defaultdict(int)
        for row in store.list_runs():
            counts[row["status"]] += 1
        db_shown = store.path
    tmp = _prepare_out(out)
    try:
        files = _write_all(records, tmp, db_shown, counts, (datasets, methods, backbones))
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ReportFiles(
        folder=out, files=[out / f.relative_to(tmp) for f in files], runs=len(records)
    )


def _write_all(
    records: list[RunRecord],
    folder: Path,
    db: Path,
    counts: dict[str, int],
    filters: tuple,
) -> list[Path]:
    written: list[Path] = []

    def put(name: str, text: str) -> None:
        path = folder / name
        path.write_text(text)
        written.append(path)

    keys = assign_labels(records)
    tables = paper_tables(records)
    multi = len(tables) > 1
    md = ["# Test accuracy (%), mean ± std over seeds", ""]
    md.append(
        "Rows: dataset x noise type; columns: noise rate x method. **Bold**: best method of the "
        "row at that noise rate. std: sample standard deviation over seeds; (n=k): fewer runs "
        "than the other cells."
    )
    for t in tables:
        md += ["", f"## {t.title}", "", paper_table_markdown(t)]
    put("table.md", "\n".join(md) + "\n")
    put("table.csv", paper_table_csv(tables))
    put("table_wide.csv", paper_table_wide_csv(tables))

    plots = accuracy_plots(tables, folder, multi)
    written.extend(p for _, p in plots)

    curves = purification_curves(records)
    purify_plots: list[tuple[str, Path]] = []
    if curves:
        purify_plots = purification_plots(curves, folder, multi)
        written.extend(p for _, p in purify_plots)
        put("purification.csv", purification_csv(curves))

    ablations = ablation_tables(records, keys)
    if ablations:
        amd = ["# Ablations: test accuracy (%), mean ± std over seeds", ""]
        amd.append("**Bold**: best setting of the dataset at that noise type and rate.")
        for t in ablations:
            amd += ["", f"## {t.title}", "", ablation_markdown(t, keys[t.key[0]])]
        put("ablation.md", "\n".join(amd) + "\n")
        put("ablation.csv", ablation_csv(ablations, keys))

    put(
        "index.md",
        _index(records, tables, ablations, keys, plots, purify_plots, db, counts, filters, folder),
    )
    return written


def _index(
    records: list[RunRecord],
    tables: list[Table],
    ablations: list[Table],
    keys: dict[str, list[str]],
    plots: list[tuple[str, Path]],
    purify_plots: list[tuple[str, Path]],
    db: Path,
    counts: dict[str, int],
    filters: tuple,
    folder: Path,
) -> str:
    datasets, methods, backbones = filters
    shown = [
        f"{name} {', '.join(values)}"
        for name, values in (("dataset", datasets), ("method", methods), ("backbone", backbones))
        if values
    ]
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines = [
        "# visprompt report",
        "",
        f"- database: `{db}` ({status})",
        f"- runs in this report: {len(records)} finished"
        + (f" (filters: {'; '.join(shown)})" if shown else ""),
        f"- generated: {time.strftime('%Y-%m-%d %H:%M:%S')}",
    ]
    if counts.get("failed"):
        lines.append(
            f"- {counts['failed']} failed runs are not shown: `visprompt runs list --db {db} "
            "--status failed`"
        )
    lines += [
        "",
        "## Files",
        "",
        "- [table.md](table.md) - the paper-style table "
        "([table.csv](table.csv) tidy, [table_wide.csv](table_wide.csv) as shown)",
    ]
    if ablations:
        lines.append("- [ablation.md](ablation.md) - ablations ([ablation.csv](ablation.csv))")
    if purify_plots:
        lines.append("- [purification.csv](purification.csv) - clean-split precision/recall")
    for title, path in plots + purify_plots:
        rel = path.relative_to(folder).as_posix()
        lines.append(f"- [{rel}]({rel}) - {title}")
    for t in tables:
        lines += ["", f"## {t.title}", "", paper_table_markdown(t)]
    for t in ablations:
        lines += ["", f"## {t.title}", "", ablation_markdown(t, keys[t.key[0]])]
    if plots:
        lines += ["", "## Accuracy vs noise rate", ""]
        for title, path in plots:
            lines.append(f"![{title}]({path.relative_to(folder).as_posix()})")
    if purify_plots:
        lines += ["", "## Purification: clean-split precision and recall", ""]
        for title, path in purify_plots:
            lines.append(f"![{title}]({path.relative_to(folder).as_posix()})")
    return "\n".join(lines) + "\n"
