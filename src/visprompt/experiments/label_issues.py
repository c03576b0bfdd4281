"""Label issues: which training labels of a run are probably wrong, most likely first.

For every training sample of a finished run: its file, the given label, the
label predicted by the probabilities the detector judged, the probability of
the given label, a verdict (clean/noisy), a rank score (higher = more likely
wrong) and, when the noise was synthetic, the true label - classes by name.
Rows are sorted with noisy verdicts first, then by decreasing score.

The verdict is a detector's (:data:`~visprompt.robust.detector.DETECTORS`:
``ot``, ``gmm``, ``crossfit``, ``zeroshot``, ``cleanlab``) on the evidence
gathered by :class:`~visprompt.experiments.label_evidence.RunEvidence`. The
default is the purifier the run trained with (``ot`` for NLPrompt/VisPrompt,
``gmm`` for JoAPR: the split the next epoch would have made, in-sample, as in
training), and for every other method ``crossfit``: each sample is scored by a
model of the run's method cross-fitted on the other folds, so a label the final
model memorised does not vouch for itself. In-sample scoring stays available
(``scoring="in-sample"``, ``--in-sample``); every row's ``scoring`` column says
which probabilities it came from.

With known truth the summary has the precision, recall and F1 of the noisy
verdict, the score's AUROC and precision at the top of the ranking;
:func:`compare_detectors` puts every detector side by side on the same run.
:func:`export_pred_probs` writes ``pred_probs.npy``, ``labels.npy`` and
``classes.json`` as cleanlab reads them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visprompt.cli import add_allow_unfinished_argument, add_root_argument, warn_unfinished
from visprompt.engine.checkpoint import atomic_write_bytes, atomic_write_text, check_writable
from visprompt.engine.run_folder import log_to_stderr
from visprompt.errors import VispromptError
from visprompt.experiments.cross_fit import FoldHook
from visprompt.experiments.label_evidence import RunEvidence, run_purifier
from visprompt.robust.detector import (
    DETECTORS,
    TOP_PERCENTS,
    Detection,
    Scoring,
    detection_quality,
)

CSV_COLUMNS = (
    "rank",
    "index",
    "path",
    "given_label",
    "predicted_label",
    "prob_given",
    "prob_predicted",
    "verdict",
    "rank_score",
    "true_label",
    "detector",
    "scoring",
)
#: Files of :func:`export_pred_probs` (cleanlab's inputs, and the class of each column).
EXPORT_FILES = ("pred_probs.npy", "labels.npy", "classes.json")


@dataclass
class LabelIssues:
    """Rows (one per training sample, most likely wrong first) and a summary."""

    rows: list[dict]
    summary: dict
    verdict_source: str
    #: "" for a finished run, else "unfinished: epoch N of M" (see ``load_run``)
    status: str = ""
    detector: str = ""
    detection: Detection | None = None
    evidence: RunEvidence | None = None


def default_detector(evidence: RunEvidence) -> str:
    """The run's own purifier (``ot``/``gmm``) when it judges labels, else ``crossfit``."""
    judged = run_purifier(evidence.run)
    return judged[0].name if judged is not None and judged[0].name in DETECTORS else "crossfit"


def check_detector(name: str) -> None:
    """Unknown names and missing optional packages, as one-line errors, before any work."""
    DETECTORS.get(name).check_available()


def label_issues(
    evidence: RunEvidence, detector: str | None = None, scoring: Scoring | None = None
) -> LabelIssues:
    """Judge every training label of ``evidence``'s run with ``detector`` (default: see above)."""
    name = detector or default_detector(evidence)
    found = evidence.detect(name, scoring)
    run, given, truth = evidence.run, evidence.given, evidence.truth
    probs = found.probs
    predicted = probs.argmax(dim=1)
    prob_given = probs.gather(1, given[:, None]).squeeze(1)
    rows = []
    for rank, i in enumerate(found.order(), start=1):
        rows.append(
            {
                "rank": rank,
                "index": i,
                "path": evidence.samples[i].path,
                "given_label": run.classnames[int(given[i])],
                "predicted_label": run.classnames[int(predicted[i])],
                "prob_given": float(prob_given[i]),
                "prob_predicted": float(probs[i, predicted[i]]),
                "verdict": "noisy" if bool(found.flagged[i]) else "clean",
                "rank_score": float(found.score[i]),
                "true_label": run.classnames[int(truth[i])] if truth is not None else "",
                "detector": name,
                "scoring": evidence.describe(found.scoring),
            }
        )
    return LabelIssues(
        rows=rows,
        summary=_summary(rows, found, given, truth),
        verdict_source=found.source,
        status=run.status,
        detector=name,
        detection=found,
        evidence=evidence,
    )


def find_label_issues(
    run_dir: str | Path,
    progress: bool = False,
    allow_unfinished: bool = False,
    root: str | Path | None = None,
    detector: str | None = None,
    scoring: Scoring | None = None,
    folds: int | None = None,
    on_fold: FoldHook | None = None,
) -> LabelIssues:
    """Score every training label of a finished run (see the module docstring).

    Args:
        detector: a :data:`DETECTORS` name; None: the run's purifier, else ``crossfit``.
        scoring: ``in-sample`` or ``out-of-sample`` probabilities for the model
            detectors; None: the detector's default.
        folds: cross-fit fold count (implies out-of-sample); None: 5, or the
            smallest class's count when lower.
        allow_unfinished: score an interrupted run's last checkpoint; ``status`` says so.
    """
    if detector is not None:
        check_detector(detector)
    evidence = RunEvidence.of_run(
        run_dir,
        folds=folds,
        progress=progress,
        log=log_to_stderr if progress else None,
        allow_unfinished=allow_unfinished,
        root=root,
        on_fold=on_fold,
    )
    return label_issues(evidence, detector, _scoring(scoring, folds))


def _scoring(scoring: Scoring | None, folds: int | None) -> Scoring | None:
    if folds is not None and scoring == "in-sample":
        raise VispromptError("--cross-fit and --in-sample contradict each other; give one of them")
    return "out-of-sample" if folds is not None else scoring


def _summary(rows: list[dict], found: Detection, given, truth) -> dict:
    flagged = int(found.flagged.sum())
    summary: dict = {"num_samples": len(rows), "num_flagged_noisy": flagged}
    if truth is None:
        return summary
    quality = detection_quality(found, given, truth)
    n_wrong = quality["num_wrong"]
    summary.update(
        num_truly_noisy=n_wrong,
        noisy_precision=quality["precision"],
        noisy_recall=quality["recall"],
        noisy_f1=quality["f1"],
        auroc=quality["auroc"],
    )
    wrong = given != truth
    ranked_wrong = [bool(wrong[r["index"]]) for r in rows]
    for k in sorted({10, 50, n_wrong} - {0}):
        if k <= len(rows):
            summary[f"precision_at_{k}"] = sum(ranked_wrong[:k]) / k
    return summary


# ---------------------------------------------------------------- detectors side by side


def check_known_truth(evidence: RunEvidence) -> None:
    """``--compare`` needs the true labels: a one-line error for a run that has none."""
    if evidence.truth is None:
        raise VispromptError(
            f"--compare needs the true labels, and run {evidence.run.out} does not know them "
            "(its noise is real or was not synthetic); compare on a run with synthetic noise"
        )


def compare_detectors(
    evidence: RunEvidence, scorings: tuple[Scoring, ...] = ("in-sample", "out-of-sample")
) -> list[dict]:
    """Every detector on the same run, against the true labels: one row per (detector, scoring).

    Model detectors run once per scoring of ``scorings`` (the probabilities are
    computed once and shared), ``zeroshot`` once. A detector whose optional
    package is missing gets a row with its ``error`` instead of numbers. Each
    row: ``detector``, ``scoring`` and :func:`~visprompt.robust.detector.detection_quality`.
    """
    check_known_truth(evidence)
    rows = []
    # the trained model's detectors first, zero-shot CLIP (the baseline) last
    for name in sorted(DETECTORS.names(), key=lambda n: (DETECTORS.get(n).evidence, n)):
        cls = DETECTORS.get(name)
        for scoring in ("zero-shot",) if cls.evidence == "zero-shot" else scorings:
            row: dict = {"detector": name, "scoring": scoring}
            try:
                cls.check_available()
            except VispromptError as exc:
                rows.append({**row, "error": str(exc)})
                continue
            found = evidence.detect(name, None if scoring == "zero-shot" else scoring)
            row["scoring"] = evidence.describe(found.scoring)
            row.update(detection_quality(found, evidence.given, evidence.truth))
            rows.append(row)
    return rows


#: Columns of the comparison table: (header, row key).
COMPARE_COLUMNS = (
    ("detector", "detector"),
    ("scores", "scoring"),
    ("flagged", "num_flagged"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("F1", "f1"),
    ("AUROC", "auroc"),
    *((f"P@{p}%", f"precision_at_{p}pct") for p in TOP_PERCENTS),
)


def compare_table(rows: list[dict]) -> str:
    """The comparison as a Markdown table (ratios in %, AUROC as a fraction; '-' undefined)."""

    def cell(row: dict, key: str) -> str:
        value = row.get(key, "")
        if key in ("detector", "scoring"):
            return str(value)
        if "error" in row:
            return "not installed" if key == "num_flagged" else ""
        if isinstance(value, int):
            return str(value)
        if not isinstance(value, float) or not math.isfinite(value):
            return "-"
        return f"{value:.3f}" if key == "auroc" else f"{100 * value:.1f}"

    head = [h for h, _ in COMPARE_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row, key) for _, key in COMPARE_COLUMNS) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- files


def label_issues_csv(rows: list[dict], status: str = "") -> str:
    """The CSV text; an unfinished run's CSV starts with a ``# run <status>`` comment line."""
    buf = io.StringIO()
    if status:
        buf.write(f"# run {status}: scores of its last checkpoint, not of a finished model\n")
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                **row,
                "prob_given": f"{row['prob_given']:.6f}",
                "prob_predicted": f"{row['prob_predicted']:.6f}",
                "rank_score": f"{row['rank_score']:.6f}",
            }
        )
    return buf.getvalue()


def export_pred_probs(evidence: RunEvidence, folder: str | Path, scoring: Scoring) -> Path:
    """Write cleanlab's inputs into ``folder``; return it.

    ``pred_probs.npy``: (N, K) float32, row i = sample i's class probabilities
    (columns in class order, rows summing to 1) under ``scoring``;
    ``labels.npy``: (N,) int64 given labels in 0..K-1; ``classes.json``: the K
    class names, position = column = label value. Rows follow the run's
    ``trainset.json`` (the CSV's ``index`` column), so that
    ``cleanlab.filter.find_label_issues(np.load(".../labels.npy"),
    np.load(".../pred_probs.npy"))`` works as it is.
    """
    out = Path(folder)
    probs = evidence.probs(scoring).float().cpu().numpy().astype(np.float32)
    labels = evidence.given.cpu().numpy().astype(np.int64)
    for name, array in (("pred_probs.npy", probs), ("labels.npy", labels)):
        atomic_write_bytes(out / name, lambda tmp, a=array: _save_npy(tmp, a))
    atomic_write_text(out / "classes.json", json.dumps(list(evidence.run.classnames)) + "\n")
    return out


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def export_label_issues(
    run_dir: str | Path,
    csv_path: str | Path | None = None,
    progress: bool = False,
    allow_unfinished: bool = False,
    root: str | Path | None = None,
    detector: str | None = None,
    scoring: Scoring | None = None,
    folds: int | None = None,
) -> tuple[LabelIssues, Path]:
    """Write the label-issue CSV (default ``<run>/label_issues.csv``); return it and its path."""
    path = Path(csv_path) if csv_path is not None else Path(run_dir) / "label_issues.csv"
    if Path(run_dir).is_dir():  # a missing run folder gets load_run's message
        check_writable(path, "--csv")
    issues = find_label_issues(
        run_dir,
        progress=progress,
        allow_unfinished=allow_unfinished,
        root=root,
        detector=detector,
        scoring=scoring,
        folds=folds,
    )
    atomic_write_text(path, label_issues_csv(issues.rows, issues.status))
    return issues, path


# ---------------------------------------------------------------- CLI


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%" if math.isfinite(value) else "-"


def _cmd(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    path = Path(args.csv) if args.csv else run_dir / "label_issues.csv"
    scoring = _scoring("in-sample" if args.in_sample else None, args.cross_fit)
    if run_dir.is_dir():  # a missing run folder gets load_run's message
        check_writable(path, "--csv")
        if args.export:
            check_writable(Path(args.export), "--export", "folder")
    if args.detector is not None:
        check_detector(args.detector)
    evidence = RunEvidence.of_run(
        args.run,
        folds=args.cross_fit,
        progress=not args.quiet,
        log=None if args.quiet else log_to_stderr,
        allow_unfinished=args.allow_unfinished,
        root=args.root,
    )
    if args.compare:
        check_known_truth(evidence)
    issues = label_issues(evidence, args.detector, scoring)
    atomic_write_text(path, label_issues_csv(issues.rows, issues.status))
    warn_unfinished(args.run, issues.status)
    s = issues.summary
    print(f"detector {issues.detector}: {issues.verdict_source}")
    print(
        f"{s['num_flagged_noisy']} of {s['num_samples']} training labels flagged as probably "
        f"wrong; all rows in {path}"
    )
    if "noisy_precision" in s:
        tops = "  ".join(
            f"precision@{k.split('_')[-1]} {_pct(v)}"
            for k, v in s.items()
            if k.startswith("precision_at_")
        )
        print(
            f"against the true labels ({s['num_truly_noisy']} wrong): noisy-verdict precision "
            f"{_pct(s['noisy_precision'])}, recall {_pct(s['noisy_recall'])}, "
            f"F1 {_pct(s['noisy_f1'])}, AUROC {s['auroc']:.3f}  {tops}"
        )
    for row in issues.rows[: args.top]:
        print(
            f"{row['rank']:4d}  {row['verdict']:5s}  given {row['given_label']!r} "
            f"(p={row['prob_given']:.2f}) -> predicted {row['predicted_label']!r}  {row['path']}"
        )
    if args.export:
        export_scoring = scoring or "out-of-sample"
        folder = export_pred_probs(evidence, args.export, export_scoring)
        print(
            f"wrote {', '.join(EXPORT_FILES)} ({evidence.describe(export_scoring)} pred_probs) "
            f"to {folder}"
        )
    if args.compare:
        scorings = (scoring,) if scoring else ("in-sample", "out-of-sample")
        print()
        print(compare_table(compare_detectors(evidence, scorings)))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "label-issues", help="list the training labels that are probably wrong (CSV)"
    )
    p.add_argument("--run", required=True, help="run folder of a finished run")
    p.add_argument("--csv", help="CSV to write (default: <run>/label_issues.csv)")
    p.add_argument("--top", type=int, default=10, help="rows to print (default 10)")
    p.add_argument(
        "--detector",
        help="ot, gmm, crossfit, zeroshot or cleanlab (default: the run's purifier, else crossfit)",
    )
    scores = p.add_mutually_exclusive_group()
    scores.add_argument(
        "--cross-fit",
        type=int,
        metavar="K",
        help="score out of sample: train the run's method on K-1 of K folds, K times "
        "(default for crossfit and cleanlab: 5, fewer if a class has fewer labels)",
    )
    scores.add_argument(
        "--in-sample",
        action="store_true",
        help="score with the final model, which was trained on the labels it judges",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="with known true labels: every detector's precision, recall, F1, AUROC and "
        "precision at the top 1/5/10%% on this run",
    )
    p.add_argument(
        "--export",
        metavar="DIR",
        help="write pred_probs.npy, labels.npy, classes.json for cleanlab (out-of-sample "
        "unless --in-sample)",
    )
    add_allow_unfinished_argument(p)
    add_root_argument(p)
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=_cmd)
