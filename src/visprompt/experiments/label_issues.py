"""Label-issue export: which training labels are probably wrong, most likely first.

For every training sample of a finished run: its file, the given label, the
label the trained model predicts, the model's probability of the given label,
a verdict (clean/noisy) and a rank score. The verdict of a method that trains
with a purifier (``method.purify``: ``ot`` for nlprompt and visprompt, ``gmm``
for joapr) is that purifier's split of the final model's probabilities, one
code path for all: the purifier is rebuilt from the run's options; a stateful
one (JoAPR's loss history and threshold) is the method's own, restored with the
method's extra state from the run's last checkpoint, so the split is the one
the next epoch would have made; randomness (OT's batch-scope blocks, the
mixture's initialisation) comes from the last epoch's generator, so OT's blocks
are cut as the last epoch cut them. For every other method (and ``purify:
none``) a label is judged noisy when the model's prediction differs from it.
The rank score is
``1 - p(given label)`` (cleanlab's self-confidence, inverted); rows are sorted
with noisy verdicts first, then by decreasing score.

When the true labels are known (synthetic noise) the summary has precision and
recall of the "noisy" verdict and precision among the top-k rows.
"""

from __future__ import annotations

import argparse
import csv
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from visprompt.cli import add_allow_unfinished_argument, add_root_argument, warn_unfinished
from visprompt.engine import checkpoint as ckpt
from visprompt.engine.checkpoint import atomic_write_text, check_writable
from visprompt.engine.evaluate import predict_logits
from visprompt.engine.reload import LoadedRun, load_run, run_features
from visprompt.engine.trainer import epoch_seed
from visprompt.errors import VispromptError
from visprompt.robust.purifier import HasPurifier, Purifier, purifier_for

CSV_COLUMNS = (
    "rank",
    "path",
    "given_label",
    "predicted_label",
    "prob_given",
    "prob_predicted",
    "verdict",
    "rank_score",
    "true_label",
)


@dataclass
class LabelIssues:
    """Rows (one per training sample, most likely wrong first) and a summary."""

    rows: list[dict]
    summary: dict
    verdict_source: str
    #: "" for a finished run, else "unfinished: epoch N of M" (see ``load_run``)
    status: str = ""


def find_label_issues(
    run_dir: str | Path,
    progress: bool = False,
    allow_unfinished: bool = False,
    root: str | Path | None = None,
) -> LabelIssues:
    """Score every training label of a finished run (see module docstring).

    ``allow_unfinished`` scores an interrupted run's last checkpoint; ``status`` says so.
    """
    run = load_run(run_dir, allow_unfinished=allow_unfinished, root=root)
    samples, data = run.train_samples()
    given = torch.tensor(data["given_labels"], dtype=torch.long)
    feats = run_features(run, samples, progress=progress)
    probs = predict_logits(run.method, feats.plain_view(), run.cfg.engine.batch_size).softmax(
        dim=-1
    )
    predicted = probs.argmax(dim=-1)
    prob_given = probs.gather(1, given[:, None]).squeeze(1)
    judged = run_purifier(run)
    if judged is not None:
        purifier, source = judged
        epochs = run.cfg.optim.epochs
        # the last epoch's generator: batch scope cuts the same blocks as training did
        last = torch.Generator().manual_seed(epoch_seed(run.cfg.train_seed, epochs - 1) + 1)
        split = purifier.split(probs, given, epoch=epochs - 1, num_epochs=epochs, generator=last)
        noisy = split.noisy.cpu()
    else:
        noisy = predicted != given
        source = "model prediction differs from the given label"
    noisy &= feats.ok  # unreadable images get no verdict
    score = 1.0 - prob_given
    order = sorted(range(len(samples)), key=lambda i: (not bool(noisy[i]), -float(score[i])))
    truth = data.get("true_labels")
    rows = []
    for rank, i in enumerate(order, start=1):
        rows.append(
            {
                "rank": rank,
                "path": samples[i].path,
                "given_label": run.classnames[int(given[i])],
                "predicted_label": run.classnames[int(predicted[i])],
                "prob_given": float(prob_given[i]),
                "prob_predicted": float(probs[i, predicted[i]]),
                "verdict": "noisy" if bool(noisy[i]) else "clean",
                "rank_score": float(score[i]),
                "true_label": run.classnames[int(truth[i])] if truth is not None else "",
                "_index": i,
            }
        )
    summary = _summary(rows, noisy, given, truth)
    return LabelIssues(rows=rows, summary=summary, verdict_source=source, status=run.status)


def run_purifier(run: LoadedRun) -> tuple[Purifier, str] | None:
    """The purifier that judged ``run``'s labels during training, ready to split again.

    Returns (purifier, verdict source), or None for a method without a purifier
    (or with ``purify: none``, which judges nothing). A method that keeps a
    stateful purifier (:class:`~visprompt.robust.purifier.HasPurifier`) gets its
    extra state back from the run's checkpoint first, which restores the
    purifier's; a stateless one is rebuilt from the run's options.
    """
    method = run.method
    restored = ""
    if isinstance(method, HasPurifier):
        purifier = method.purifier
        try:
            state = ckpt.load_state(run.out)
        except VispromptError:  # no (readable) checkpoint: judge with a fresh state
            restored = ", fresh state (the run's checkpoint is missing)"
        else:
            method.load_extra_state(state.get("method_extra") or {})
            restored = ", state of the run's last epoch"
    else:
        purifier = purifier_for(run.cfg.method)
    if purifier is None or not purifier.judges_labels:
        return None
    source = f"{purifier.name} purifier on the final model ({purifier.description}{restored})"
    return purifier, source


def _summary(rows: list[dict], noisy: torch.Tensor, given: torch.Tensor, truth) -> dict:
    flagged = int(noisy.sum())
    summary: dict = {"num_samples": len(rows), "num_flagged_noisy": flagged}
    if truth is None:
        return summary
    wrong = given != torch.tensor(truth, dtype=torch.long)
    n_wrong = int(wrong.sum())
    hit = int((noisy & wrong).sum())
    summary.update(
        num_truly_noisy=n_wrong,
        noisy_precision=hit / flagged if flagged else float("nan"),
        noisy_recall=hit / n_wrong if n_wrong else float("nan"),
    )
    ranked_wrong = [bool(wrong[r["_index"]]) for r in rows]
    for k in sorted({10, 50, n_wrong} - {0}):
        if k <= len(rows):
            summary[f"precision_at_{k}"] = sum(ranked_wrong[:k]) / k
    return summary


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


def export_label_issues(
    run_dir: str | Path,
    csv_path: str | Path | None = None,
    progress: bool = False,
    allow_unfinished: bool = False,
    root: str | Path | None = None,
) -> tuple[LabelIssues, Path]:
    """Write the label-issue CSV (default ``<run>/label_issues.csv``); return it and its path."""
    path = Path(csv_path) if csv_path is not None else Path(run_dir) / "label_issues.csv"
    if Path(run_dir).is_dir():  # a missing run folder gets load_run's message
        check_writable(path, "--csv")
    issues = find_label_issues(
        run_dir, progress=progress, allow_unfinished=allow_unfinished, root=root
    )
    atomic_write_text(path, label_issues_csv(issues.rows, issues.status))
    return issues, path


# ---------------------------------------------------------------- CLI


def _cmd(args: argparse.Namespace) -> int:
    issues, path = export_label_issues(
        args.run,
        args.csv,
        progress=not args.quiet,
        allow_unfinished=args.allow_unfinished,
        root=args.root,
    )
    warn_unfinished(args.run, issues.status)
    s = issues.summary
    print(f"verdict: {issues.verdict_source}")
    print(
        f"{s['num_flagged_noisy']} of {s['num_samples']} training labels flagged as probably "
        f"wrong; all rows in {path}"
    )
    if "noisy_precision" in s:
        tops = "  ".join(
            f"precision@{k.split('_')[-1]} {100 * v:.1f}%"
            for k, v in s.items()
            if k.startswith("precision_at_")
        )
        print(
            f"against the true labels ({s['num_truly_noisy']} wrong): noisy-verdict precision "
            f"{100 * s['noisy_precision']:.1f}%, recall {100 * s['noisy_recall']:.1f}%  {tops}"
        )
    for row in issues.rows[: args.top]:
        print(
            f"{row['rank']:4d}  {row['verdict']:5s}  given {row['given_label']!r} "
            f"(p={row['prob_given']:.2f}) -> predicted {row['predicted_label']!r}  {row['path']}"
        )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "label-issues", help="list the training labels that are probably wrong (CSV)"
    )
    p.add_argument("--run", required=True, help="run folder of a finished run")
    p.add_argument("--csv", help="CSV to write (default: <run>/label_issues.csv)")
    p.add_argument("--top", type=int, default=10, help="rows to print (default 10)")
    add_allow_unfinished_argument(p)
    add_root_argument(p)
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=_cmd)
