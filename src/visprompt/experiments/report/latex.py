"""LaTeX (booktabs) versions of a report's tables, ready to ``\\input`` into a paper.

Each function returns one ``table`` environment per table with ``\\toprule``,
``\\midrule`` and ``\\bottomrule`` (``\\usepackage{booktabs}`` in the preamble)
and the same cells as the Markdown: ``mean $\\pm$ std`` with the 95% interval
in small type, ``\\textbf`` on a cell that is clearly best (the rule of
:mod:`~visprompt.experiments.report.tables`), the legend in the caption.
Text is escaped for LaTeX (``oxford_pets`` -> ``oxford\\_pets``).
"""

from __future__ import annotations

from collections.abc import Sequence

from visprompt.experiments.report.records import AVERAGE, fmt_rate, short_names
from visprompt.experiments.report.tables import BEST_LEGEND, Cell, MethodTable, Table

_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped."""
    return "".join(_ESCAPES.get(ch, ch) for ch in str(text))


def _legend() -> str:
    return escape(BEST_LEGEND.replace("**Bold**", "Bold")).replace("±", r"$\pm$")


def cell_tex(cell: Cell | None, expected_n: int, digits: int = 2) -> str:
    """One cell: ``71.00 $\\pm$ 1.41 {\\scriptsize [58.3, 83.7]}``, bold when best."""
    if cell is None:
        return "--"
    main = f"{cell.mean:.{digits}f}"
    if cell.std is not None:
        main += rf" $\pm$ {cell.std:.{digits}f}"
    if cell.best:
        main = rf"\textbf{{{main}}}"
    ci = cell.ci_text(max(digits - 1, 0))
    if ci:
        main += rf" {{\scriptsize {ci}}}"
    if cell.n < expected_n:
        main += rf" {{\scriptsize (n={cell.n})}}"
    return main


def table_env(
    caption: str,
    align: str,
    head: Sequence[str],
    body: Sequence[Sequence[str]],
    group_head: str = "",
    rule_before: Sequence[int] = (),
) -> str:
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{caption}}}",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
    ]
    if group_head:
        lines.append(group_head)
    lines.append(" & ".join(head) + r" \\")
    lines.append(r"\midrule")
    for i, row in enumerate(body):
        if i in rule_before:
            lines.append(r"\midrule")
        lines.append(" & ".join(row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def paper_table_latex(table: Table) -> str:
    """The paper-style table: a column group per noise rate, a rule above the Average rows."""
    rates: list[float] = []
    for rate, _ in table.columns:
        if rate not in rates:
            rates.append(rate)
    groups, rules = [], []
    col = 3
    for rate in rates:
        width = sum(1 for r, _ in table.columns if r == rate)
        groups.append(rf"\multicolumn{{{width}}}{{c}}{{{escape(fmt_rate(rate))}}}")
        rules.append(rf"\cmidrule(lr){{{col}-{col + width - 1}}}")
        col += width
    group_head = " & ".join(["", "", *groups]) + r" \\" + "\n" + " ".join(rules)
    head = ["Dataset", "Noise", *(escape(label) for _, label in table.columns)]
    body = [
        [escape(row[0]), escape(row[1])]
        + [cell_tex(table.cells.get((row, c)), table.expected_n) for c in table.columns]
        for row in table.rows
    ]
    first_avg = next((i for i, row in enumerate(table.rows) if row[0] == AVERAGE), None)
    caption = escape(f"Test accuracy (%), {table.title}. ") + _legend()
    return table_env(
        caption,
        "ll" + "r" * len(table.columns),
        head,
        body,
        group_head=group_head,
        rule_before=() if first_avg in (None, 0) else (first_avg,),
    )


def ablation_latex(table: Table, setting_keys: list[str]) -> str:
    short = short_names(setting_keys)
    head = ["Dataset", *(escape(short[k]) for k in setting_keys)]
    head += [escape(f"{noise} {fmt_rate(rate)}") for noise, rate in table.columns]
    body = [
        [escape(dataset), *(escape(v) for v in setting)]
        + [
            cell_tex(table.cells.get(((dataset, setting), c)), table.expected_n)
            for c in table.columns
        ]
        for dataset, setting in table.rows
    ]
    caption = escape(f"{table.title}: test accuracy (%). ") + _legend()
    return table_env(caption, "l" * (1 + len(setting_keys)) + "r" * len(table.columns), head, body)


def method_table_latex(table: MethodTable, digits: int = 2) -> str:
    """Methods x noise settings: accuracy cells, then clean-split precision / recall."""
    head = [escape(h) for h in table.header()]
    n = table.expected_n
    body = []
    for label in table.labels:
        row = [escape(label)]
        row += [cell_tex(table.accuracy.get((label, s)), n, digits) for s in table.settings]
        for s in table.purified:
            at = (label, s)
            if at in table.precision and at in table.recall:
                p, r = table.precision[at], table.recall[at]
                row.append(f"{p.mean:.{digits}f} / {r.mean:.{digits}f}")
            else:
                row.append("--")
        body.append(row)
    caption = escape(
        f"{table.title}: test accuracy (%) per noise setting (mean ± std over seeds, 95% "
        "interval), then the last epoch's clean-split precision / recall (%, mean over seeds)."
    ).replace("±", r"$\pm$")
    return table_env(caption, "l" + "r" * (len(head) - 1), head, body)


def tables_document(parts: Sequence[str]) -> str:
    """Tables separated by blank lines, with a comment naming the packages they need."""
    return "% needs \\usepackage{booktabs}\n\n" + "\n\n".join(parts) + "\n"
