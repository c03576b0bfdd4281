"""Writing a report folder: every table and plot of a results database, and an index page.

:func:`write_report` reads the finished runs (``status = done``) of a results
database, optionally filtered by dataset, method, backbone or run ids, and
writes into one folder:

``table.md`` / ``table.csv`` / ``table_wide.csv``
    The paper-style table (:func:`~visprompt.experiments.report.tables.paper_tables`);
    the best method of each row at each noise rate is bold in Markdown, ``*``
    in ``table_wide.csv`` and ``best = 1`` in the tidy ``table.csv``.
``methods.md`` / ``methods.csv``
    Per dataset, method x noise setting: test accuracy, and the final epoch's
    clean-split precision / recall of the methods that purify.
``plots/accuracy-<dataset>-<noise>.png``
    Accuracy vs noise rate per dataset and noise type.
``plots/purification-<dataset>-<noise>-<method>.png`` and ``purification.csv``
    For runs that purify the training set: precision and recall of the clean
    split against the true labels over the epochs, mean over seeds.
``ablation.md`` / ``ablation.csv``
    When runs of one method differ in settings (e.g. VisPrompt's ``attention``,
    ``film``, ``gate``, ``purify``, ``visual_tokens`` switches): settings x
    (noise type, rate) per dataset.
``index.md``
    Links to everything, with the tables inline and the plots embedded.

The report is written into a temporary folder and moved into place at the
end, so a failure leaves no half-written report.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from visprompt.errors import VispromptError
from visprompt.experiments.report.plots import accuracy_plots, purification_plots
from visprompt.experiments.report.records import RunRecord, assign_labels, load_records
from visprompt.experiments.report.tables import (
    MethodTable,
    Table,
    ablation_csv,
    ablation_markdown,
    ablation_tables,
    method_table_csv,
    method_table_markdown,
    method_tables,
    paper_table_csv,
    paper_table_markdown,
    paper_table_wide_csv,
    paper_tables,
    purification_csv,
    purification_curves,
)
from visprompt.experiments.store import DEFAULT_TIMEOUT, ResultsStore


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote."""

    folder: Path
    files: list[Path]
    runs: int


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
    run_ids: Collection[str] | None = None,
) -> ReportFiles:
    """Write the report of a results database into the folder ``out`` (see module docstring).

    ``run_ids`` limits the report to those runs (e.g. the runs of one sweep in
    a database that holds several).

    Raises:
        VispromptError: the database is missing, empty or unusable; nothing
            matches the filters; ``out`` is a file or a non-empty folder that is
            not an earlier report.
    """
    out = Path(out).expanduser()
    with ResultsStore(db_path, timeout=timeout, create=False) as store:
        records = load_records(store, datasets, methods, backbones, run_ids)
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

    summaries = method_tables(records)
    smd = ["# Methods x noise settings", ""]
    smd.append(
        "Test accuracy (%) per noise setting, then the last epoch's clean-split precision / "
        "recall (%) of the purified training set against the true labels; mean ± std over "
        "seeds. A method that trains nothing (zero-shot) is shown at every setting."
    )
    for t in summaries:
        smd += ["", f"## {t.title}", "", method_table_markdown(t)]
    put("methods.md", "\n".join(smd) + "\n")
    put("methods.csv", method_table_csv(summaries))

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
        _index(
            records,
            tables,
            summaries,
            ablations,
            keys,
            plots,
            purify_plots,
            db,
            counts,
            filters,
            folder,
        ),
    )
    return written


def _index(
    records: list[RunRecord],
    tables: list[Table],
    summaries: list[MethodTable],
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
        "- [methods.md](methods.md) - methods x noise settings with the final clean split "
        "([methods.csv](methods.csv))",
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
    for t in summaries:
        lines += ["", f"## Methods x noise settings: {t.title}", "", method_table_markdown(t)]
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
