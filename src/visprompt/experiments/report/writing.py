"""Writing a report folder: every table and plot of a results database, and an index page.

:func:`write_report` reads the finished runs (``status = done``) of a results
database, optionally filtered by dataset, method, backbone or run ids, and
writes into one folder:

``table.md`` / ``table.csv`` / ``table_wide.csv``
    The paper-style table (:func:`~visprompt.experiments.report.tables.paper_tables`)
    with ``Average`` rows (mean over datasets); cells mean ± std and the 95%
    Student t interval over seeds; a method clearly best at its row and rate
    (its interval above the runner-up's) is bold in Markdown, ``*`` in
    ``table_wide.csv`` and ``best = 1`` in the tidy ``table.csv``, which also
    holds each cell's per-seed values, seeds, run ids and, with ``--paper``,
    the published number and the difference.
``published.md`` / ``published.csv`` (with ``--paper FILE.csv``)
    Every cell that has a published number: ours, the published one, ours
    minus published, and whether the published number lies in our interval.
``*.tex`` (with ``--latex``)
    booktabs LaTeX of the same tables: ``table.tex``, ``methods.tex``,
    ``ablation.tex`` and ``published.tex`` where those exist.
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
from visprompt.experiments.report import latex as tex
from visprompt.experiments.report.plots import accuracy_plots, purification_plots
from visprompt.experiments.report.published import (
    COMPARISON_HEADER,
    Published,
    comparison_rows,
    load_published,
)
from visprompt.experiments.report.records import RunRecord, assign_labels, load_records
from visprompt.experiments.report.tables import (
    BEST_LEGEND,
    MethodTable,
    Table,
    ablation_csv,
    ablation_markdown,
    ablation_tables,
    csv_text,
    md_escape,
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


def prepare_out(out: Path) -> Path:
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


def swap_into_place(tmp: Path, out: Path) -> None:
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
    latex: bool = False,
    paper: str | Path | None = None,
) -> ReportFiles:
    """Write the report of a results database into the folder ``out`` (see module docstring).

    ``run_ids`` limits the report to those runs (e.g. the runs of one sweep in
    a database that holds several). ``latex`` adds the ``.tex`` tables;
    ``paper`` (a CSV, :mod:`~visprompt.experiments.report.published`) puts
    published numbers next to ours.

    Raises:
        VispromptError: the database is missing, empty or unusable; nothing
            matches the filters; the ``paper`` file is bad; ``out`` is a file or
            a non-empty folder that is not an earlier report. Nothing is
            written then.
    """
    out = Path(out).expanduser()
    published = None if paper is None else load_published(paper)
    with ResultsStore(db_path, timeout=timeout, create=False) as store:
        records = load_records(store, datasets, methods, backbones, run_ids)
        counts: dict[str, int] = defaultdict(int)
        for row in store.list_runs():
            counts[row["status"]] += 1
        db_shown = store.path
    tmp = prepare_out(out)
    try:
        files = _write_all(
            records, tmp, db_shown, counts, (datasets, methods, backbones), latex, published
        )
        swap_into_place(tmp, out)
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
    latex: bool = False,
    published: Published | None = None,
) -> list[Path]:
    written: list[Path] = []

    def put(name: str, text: str) -> None:
        path = folder / name
        path.write_text(text)
        written.append(path)

    keys = assign_labels(records)
    tables = paper_tables(records, published)
    multi = len(tables) > 1
    selection = selection_text(records)
    md = ["# Test accuracy (%), mean ± std over seeds", ""]
    md.append(
        "Rows: dataset x noise type, then Average (the mean over the datasets, per seed); "
        f"columns: noise rate x method. {BEST_LEGEND} {selection}"
    )
    for t in tables:
        md += ["", f"## {t.title}", "", paper_table_markdown(t)]
    put("table.md", "\n".join(md) + "\n")
    put("table.csv", paper_table_csv(tables))
    put("table_wide.csv", paper_table_wide_csv(tables))
    if latex:
        put("table.tex", tex.tables_document([tex.paper_table_latex(t) for t in tables]))
    compared = comparison_rows(tables) if published is not None else []
    if published is not None:
        pmd = ["# Ours next to the published numbers", ""]
        pmd.append(
            f"Published numbers from `{published.path}`; diff = ours - published; in CI: the "
            "published number lies inside our 95% interval. Only cells with a published number "
            f"are listed ({len(compared)} of them). {selection}"
        )
        pmd += ["", _comparison_markdown(compared)]
        if not compared:
            pmd += ["", "No cell of this report has a published number (dataset, noise, rate, "
                    "method, backbone and shots must all match)."]  # fmt: skip
        put("published.md", "\n".join(pmd) + "\n")
        put("published.csv", csv_text(COMPARISON_HEADER, [_csv_row(r) for r in compared]))
        if latex:
            put("published.tex", tex.tables_document([_comparison_latex(compared)]))

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
    if latex:
        put("methods.tex", tex.tables_document([tex.method_table_latex(t) for t in summaries]))

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
        amd.append(f"Groups: the settings of one dataset at one noise type and rate. {BEST_LEGEND}")
        for t in ablations:
            amd += ["", f"## {t.title}", "", ablation_markdown(t, keys[t.key[0]])]
        put("ablation.md", "\n".join(amd) + "\n")
        put("ablation.csv", ablation_csv(ablations, keys))
        if latex:
            put(
                "ablation.tex",
                tex.tables_document([tex.ablation_latex(t, keys[t.key[0]]) for t in ablations]),
            )

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
            selection,
            published is not None,
            latex,
        ),
    )
    return written


def selection_text(records: list[RunRecord]) -> str:
    """How the runs chose the model they tested (``eval.select``), as one sentence."""
    counts: dict[str, int] = defaultdict(int)
    for r in records:
        if r.trained:
            counts[r.selection] += 1
    names = {
        "last": "the last epoch (as CoOp and the noisy-label papers report)",
        "best-val": "the epoch best on the validation split with its noisy labels",
    }
    if not counts:
        return "Model selection: none (no run trained)."
    if len(counts) == 1:
        (sel,) = counts
        return f"Model selection: {names.get(sel, sel)}, in every trained run."
    parts = ", ".join(f"{names.get(s, s)} in {n} runs" for s, n in sorted(counts.items()))
    return f"Model selection: {parts} (labelled select=... in the columns)."


def _fmt(value: object, digits: int = 2) -> str:
    return "" if value is None or value == "" else f"{value:.{digits}f}"


def _csv_row(row: list) -> list:
    *place, n, mean, std, low, high, pub, diff, inside = row
    return [*place, n, *(_fmt(v, 6) for v in (mean, std, low, high, pub, diff)), inside]


def _comparison_cells(row: list) -> list[str]:
    *_, dataset, noise, rate, method, n, mean, std, low, high, pub, diff, inside = row
    ours = f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}")
    ci = "" if low is None else f"[{low:.1f}, {high:.1f}]"
    return [
        dataset,
        noise,
        f"{rate * 100:g}%",
        method,
        ours,
        ci,
        str(n),
        f"{pub:.2f}",
        f"{diff:+.2f}",
        {"": "-", 1: "yes", 0: "no"}[inside],
    ]


_COMPARISON_HEAD = ["Dataset", "Noise", "Rate", "Method", "Ours", "95% CI", "n", "Published",
                    "Diff", "In CI"]  # fmt: skip


def _comparison_markdown(rows: list[list]) -> str:
    lines = [
        "| " + " | ".join(_COMPARISON_HEAD) + " |",
        "|" + "|".join(["---"] * 4 + ["---:"] * 5 + ["---"]) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(md_escape(c) for c in _comparison_cells(row)) + " |")
    return "\n".join(lines)


def _comparison_latex(rows: list[list]) -> str:
    body = [[tex.escape(c).replace("±", r"$\pm$") for c in _comparison_cells(row)] for row in rows]
    caption = tex.escape(
        "Our test accuracy (%) next to the published numbers; diff = ours - published; in CI: "
        "the published number lies inside our 95% Student t interval over seeds."
    )
    return tex.table_env(
        caption, "llrl" + "r" * 5 + "l", [tex.escape(h) for h in _COMPARISON_HEAD], body
    )


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
    selection: str = "",
    compared: bool = False,
    latex: bool = False,
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
        f"- {selection}",
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
    if compared:
        lines.append(
            "- [published.md](published.md) - ours next to the published numbers "
            "([published.csv](published.csv))"
        )
    if ablations:
        lines.append("- [ablation.md](ablation.md) - ablations ([ablation.csv](ablation.csv))")
    if latex:
        names = sorted(p.name for p in folder.glob("*.tex"))
        lines.append("- LaTeX (booktabs): " + ", ".join(f"[{n}]({n})" for n in names))
    if purify_plots:
        lines.append("- [purification.csv](purification.csv) - clean-split precision/recall")
    for title, path in plots + purify_plots:
        rel = path.relative_to(folder).as_posix()
        lines.append(f"- [{rel}]({rel}) - {title}")
    lines += ["", BEST_LEGEND]
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
