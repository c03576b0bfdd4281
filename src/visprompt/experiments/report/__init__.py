"""Reports from a results database: paper-style tables, plots, ablations, an index page.

One module per job, in the order the data flows:

* :mod:`~visprompt.experiments.report.records` - the finished runs of a
  database as :class:`RunRecord` s, with the labels that keep runs of
  different settings apart (from the keys that differ between runs);
* :mod:`~visprompt.experiments.report.stats` - Student t intervals over seeds
  and the "clearly better" rule behind a bold cell;
* :mod:`~visprompt.experiments.report.tables` - the cells of the paper-style
  (with ``Average`` rows), ablation and methods x noise tables, as Markdown and CSV;
* :mod:`~visprompt.experiments.report.latex` - the same tables as booktabs LaTeX;
* :mod:`~visprompt.experiments.report.published` - a ``--paper`` CSV of
  published numbers, checked, and the ours-vs-published comparison;
* :mod:`~visprompt.experiments.report.plots` - accuracy vs noise rate (95%
  interval bands) and purification curves;
* :mod:`~visprompt.experiments.report.writing` - :func:`write_report`: every
  table and plot into one folder with an ``index.md``, swapped into place;
* :mod:`~visprompt.experiments.report.run_report` - one run folder's per-class
  accuracy (``visprompt report --run DIR``).

``visprompt report`` calls :func:`write_report` (or :func:`write_run_report`);
``visprompt demo`` calls it too and prints :func:`method_tables`.
"""

from visprompt.experiments.report.plots import accuracy_overview, accuracy_plots
from visprompt.experiments.report.published import Published, load_published
from visprompt.experiments.report.records import RunRecord, assign_labels, load_records
from visprompt.experiments.report.run_report import per_class_accuracy, write_run_report
from visprompt.experiments.report.tables import (
    Cell,
    MethodTable,
    Table,
    method_table_markdown,
    method_tables,
    paper_tables,
)
from visprompt.experiments.report.writing import ReportFiles, write_report

__all__ = [
    "Cell",
    "MethodTable",
    "Published",
    "ReportFiles",
    "RunRecord",
    "Table",
    "accuracy_overview",
    "accuracy_plots",
    "assign_labels",
    "load_published",
    "load_records",
    "method_table_markdown",
    "method_tables",
    "paper_tables",
    "per_class_accuracy",
    "write_report",
    "write_run_report",
]
