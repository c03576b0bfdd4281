"""Reports from a results database: paper-style tables, plots, ablations, an index page.

One module per job, in the order the data flows:

* :mod:`~visprompt.experiments.report.records` - the finished runs of a
  database as :class:`RunRecord` s, with the labels that keep runs of
  different settings apart (from the keys that differ between runs);
* :mod:`~visprompt.experiments.report.tables` - the cells of the paper-style,
  ablation and methods x noise tables, as Markdown and CSV;
* :mod:`~visprompt.experiments.report.plots` - accuracy vs noise rate and
  purification curves;
* :mod:`~visprompt.experiments.report.writing` - :func:`write_report`: every
  table and plot into one folder with an ``index.md``, swapped into place.

``visprompt report`` calls :func:`write_report`; ``visprompt demo`` calls it too
and prints :func:`method_tables`.
"""

from visprompt.experiments.report.plots import accuracy_overview, accuracy_plots
from visprompt.experiments.report.records import RunRecord, assign_labels, load_records
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
    "ReportFiles",
    "RunRecord",
    "Table",
    "accuracy_overview",
    "accuracy_plots",
    "assign_labels",
    "load_records",
    "method_table_markdown",
    "method_tables",
    "paper_tables",
    "write_report",
]
