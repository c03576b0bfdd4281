"""Plots of a report (matplotlib, no display needed): accuracy vs noise rate, purification curves.

* :func:`accuracy_plots` - one figure per (table, dataset or ``Average``,
  noise type with rates): one line per method label (the mean over seeds), its
  band the 95% Student t interval of the mean (none for a point of one run);
  the clean runs (noise type ``none``) of the same dataset, if any, are drawn
  at rate 0, and a label whose runs trained nothing (zero-shot) at every rate.
* :func:`accuracy_overview` - the same lines for every noise type of one
  dataset side by side in one figure (``visprompt demo``'s plot).
* :func:`purification_plots` - precision and recall of the clean split vs
  epoch per (dataset, noise type, method label), one line per noise rate.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from visprompt.experiments.report.records import fmt_rate, method_rank, noise_rank, table_title
from visprompt.experiments.report.tables import Cell, Table

#: Noise types drawn on a rate axis (the others have no rate).
RATELESS = ("none", "real")


def _slug(*parts: Any) -> str:
    text = "_".join(str(p) for p in parts if p is not None and str(p) != "")
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-").lower()


def _figure(width: float = 6.4, height: float = 4.2, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _noises(table: Table, dataset: str) -> list[str]:
    """The noise types of a dataset's rows that have rates, in row order."""
    return sorted(
        {row[1] for row in table.rows if row[0] == dataset and row[1] not in RATELESS},
        key=noise_rank,
    )


def _draw_accuracy(ax: Any, table: Table, dataset: str, noise: str) -> None:
    """One line per label: its clean runs at 0 and its ``noise`` runs at their rates."""
    points: dict[str, list[tuple[float, Cell]]] = {}
    for (row, column), cell in table.cells.items():
        if row == (dataset, noise) or row == (dataset, "none"):
            points.setdefault(column[1], []).append((column[0], cell))
    noisy = {c[1] for (row, c) in table.cells if row == (dataset, noise)}
    rates = sorted({rate for pts in points.values() for rate, _ in pts})
    for label in table.untrained - noisy:  # labels never reached it: the same at every rate
        own = [
            cell for (row, c), cell in table.cells.items() if row[0] == dataset and c[1] == label
        ]
        if own:
            cell = max(own, key=lambda c: c.n)
            points[label] = [(rate, cell) for rate in rates]
    for label in sorted(points, key=method_rank):
        if label not in noisy and label not in table.untrained:
            continue  # clean runs only: nothing to draw against the rate
        pts = sorted(points[label], key=lambda p: p[0])
        xs = [100 * rate for rate, _ in pts]
        (line,) = ax.plot(xs, [cell.mean for _, cell in pts], marker="o", label=label)
        banded = [(x, cell) for x, (_, cell) in zip(xs, pts, strict=True) if cell.ci]
        if banded:
            color = line.get_color()
            ax.fill_between(
                [x for x, _ in banded],
                [c.ci[0] for _, c in banded],
                [c.ci[1] for _, c in banded],
                color=color,
                alpha=0.18,
                linewidth=0,
            )
            # the same intervals as caps: visible at a rate drawn alone, where a band is not
            ax.errorbar(
                [x for x, _ in banded],
                [c.mean for _, c in banded],
                yerr=[[c.mean - c.ci[0] for _, c in banded], [c.ci[1] - c.mean for _, c in banded]],
                fmt="none",
                ecolor=color,
                capsize=3,
                alpha=0.7,
            )
    ax.set_xlabel(f"{noise} label noise rate (%)")
    ax.set_ylabel("test accuracy (%), band: 95% CI")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def accuracy_plots(tables: list[Table], folder: Path, multi: bool) -> list[tuple[str, Path]]:
    """Accuracy vs noise rate per (table, dataset, noise type with rates); returns (title, path)."""
    out = []
    for t in tables:
        for dataset in sorted({row[0] for row in t.rows}):
            for noise in _noises(t, dataset):
                fig, (ax,) = _figure()
                _draw_accuracy(ax, t, dataset, noise)
                title = f"{dataset} - {noise} noise" + (f" ({t.title})" if multi else "")
                ax.set_title(title, fontsize=10)
                fig.tight_layout()
                name = _slug("accuracy", dataset, noise, _slug(*t.key) if multi else None)
                out.append((title, _save(fig, folder / "plots" / f"{name}.png")))
    return out


def accuracy_overview(table: Table, dataset: str, path: Path) -> Path | None:
    """Every noise type of ``dataset`` side by side in one figure; None when it has no rates."""
    noises = _noises(table, dataset)
    if not noises:
        return None
    fig, axes = _figure(width=5.0 * len(noises), height=4.0, ncols=len(noises))
    for ax, noise in zip(axes, noises, strict=True):
        _draw_accuracy(ax, table, dataset, noise)
        ax.set_title(f"{dataset}, {table.key[0]}, {noise} noise", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


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
                    ax.plot(xs, ys, marker=".", label=f"{fmt_rate(rate)}")
        for ax, metric in zip(axes, ("precision", "recall"), strict=True):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"clean-split {metric}")
            ax.grid(alpha=0.3)
            ax.legend(title="noise rate", fontsize=8)
        title = f"{dataset} - {noise} noise - {label}"
        if multi:
            title += f" ({table_title(table_key)})"
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        name = _slug("purification", dataset, noise, label, _slug(*table_key) if multi else None)
        out.append((title, _save(fig, folder / "plots" / f"{name}.png")))
    return out
