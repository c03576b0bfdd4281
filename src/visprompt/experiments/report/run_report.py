"""The report of one run folder: per-class test accuracy (``visprompt report --run DIR``).

:func:`per_class_accuracy` scores the run's saved weights on a split (test by
default) exactly as ``visprompt eval`` does - the same images, the same
unreadable-image rule, the same logits - and counts, per class, the images
and the correct predictions. Its overall and macro accuracy therefore equal
``visprompt eval``'s (and, on the test split of a finished run, the run's
``test_accuracy``).

:func:`write_run_report` writes into one folder: ``per_class.csv`` (class,
images, correct, accuracy, in class order), ``per_class.png`` (a bar per class,
sorted by accuracy, the overall accuracy as a line) and ``index.md``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from visprompt.experiments.report.tables import csv_text, md_escape
from visprompt.experiments.report.writing import ReportFiles, prepare_out, swap_into_place


@dataclass
class PerClass:
    """Per-class counts of one run on one split."""

    run: Path
    split: str
    classnames: list[str]
    images: list[int]
    correct: list[int]
    status: str
    method: str
    selection: str

    def accuracy(self, k: int) -> float | None:
        """Accuracy (%) of class ``k``; None for a class without images in the split."""
        return None if self.images[k] == 0 else 100.0 * self.correct[k] / self.images[k]

    @property
    def overall(self) -> float:
        return 100.0 * sum(self.correct) / max(sum(self.images), 1)

    @property
    def macro(self) -> float:
        present = [a for k in range(len(self.classnames)) if (a := self.accuracy(k)) is not None]
        return sum(present) / max(len(present), 1)


def per_class_accuracy(
    run_dir: str | Path,
    split: str = "test",
    progress: bool = True,
    allow_unfinished: bool = False,
    root: str | Path | None = None,
) -> PerClass:
    """Per-class images and correct predictions of a run's weights on ``split`` (module doc).

    Raises:
        VispromptError: as ``visprompt eval``: no run folder, an unfinished run
            (without ``allow_unfinished``), a moved or changed dataset, a bad split.
    """
    import torch

    from visprompt.engine.reload import split_logits

    run, logits, labels = split_logits(run_dir, split, progress, allow_unfinished, root)
    hit = logits.argmax(dim=-1) == labels
    k = len(run.classnames)
    images = torch.bincount(labels, minlength=k)
    correct = torch.bincount(labels[hit], minlength=k)
    return PerClass(
        run=Path(run_dir),
        split=split,
        classnames=list(run.classnames),
        images=images.tolist(),
        correct=correct.tolist(),
        status=run.status,
        method=run.cfg.method.name,
        selection=run.cfg.eval.select,
    )


def per_class_csv(pc: PerClass) -> str:
    rows = []
    for k, name in enumerate(pc.classnames):
        acc = pc.accuracy(k)
        rows.append([k, name, pc.images[k], pc.correct[k], "" if acc is None else f"{acc:.6f}"])
    return csv_text(["class_index", "class", "images", "correct", "accuracy"], rows)


def per_class_plot(pc: PerClass, path: Path) -> Path:
    """Horizontal bars, one per class with images, lowest accuracy at the bottom."""
    from matplotlib.figure import Figure

    shown = [(pc.accuracy(k), name) for k, name in enumerate(pc.classnames)]
    shown = sorted(((a, n) for a, n in shown if a is not None), key=lambda p: p[0])
    fig = Figure(figsize=(6.4, max(2.5, 0.22 * len(shown) + 1.2)), dpi=110)
    ax = fig.subplots()
    ax.barh(range(len(shown)), [a for a, _ in shown], color="tab:blue")
    ax.set_yticks(range(len(shown)), [n for _, n in shown], fontsize=7)
    ax.axvline(pc.overall, color="tab:red", linestyle="--", label=f"overall {pc.overall:.1f}%")
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"{pc.split} accuracy (%)")
    ax.set_title(f"{pc.method}: per-class {pc.split} accuracy", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_run_report(
    run_dir: str | Path,
    out: str | Path,
    split: str = "test",
    progress: bool = True,
    allow_unfinished: bool = False,
    root: str | Path | None = None,
) -> ReportFiles:
    """Write ``per_class.csv``, ``per_class.png`` and ``index.md`` of one run into ``out``.

    Like :func:`~visprompt.experiments.report.writing.write_report`, the folder
    is written aside and swapped into place; a bad run or output folder writes
    nothing.
    """
    out = Path(out).expanduser()
    pc = per_class_accuracy(run_dir, split, progress, allow_unfinished, root)
    tmp = prepare_out(out)
    try:
        (tmp / "per_class.csv").write_text(per_class_csv(pc))
        per_class_plot(pc, tmp / "per_class.png")
        worst = sorted(
            (a, n) for k, n in enumerate(pc.classnames) if (a := pc.accuracy(k)) is not None
        )[:5]
        lines = [
            f"# Per-class {split} accuracy of `{pc.run}`",
            "",
            f"- method: {pc.method}; model selection: {pc.selection}"
            + (f"; {pc.status}" if pc.status else ""),
            f"- {sum(pc.images)} images, accuracy {pc.overall:.2f}%, macro accuracy "
            f"{pc.macro:.2f}%",
            "- lowest: " + ", ".join(f"{md_escape(n)} {a:.1f}%" for a, n in worst),
            "",
            "[per_class.csv](per_class.csv)",
            "",
            f"![per-class {split} accuracy](per_class.png)",
        ]
        (tmp / "index.md").write_text("\n".join(lines) + "\n")
        swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    names = ["per_class.csv", "per_class.png", "index.md"]
    return ReportFiles(folder=out, files=[out / n for n in names], runs=1)
