"""``visprompt demo``: the project's main job on the shipped synthetic world, offline.

It generates the ``synthetic-shapes`` task, then trains zero-shot CLIP, CoOp,
NLPrompt and VisPrompt on 16 shots per class with clean labels and with 50%
symmetric label noise, using the small ``demo-tiny`` CLIP that ships with the
package. It prints a table of test accuracy and of the clean-split
precision/recall of the purified training set, and writes into one folder: the
table (Markdown and CSV), a plot of accuracy against noise rate per method, the
label-issue CSV of the noisy VisPrompt run, the full report, the results
database and every run folder. Whatever ordering of methods comes out is what
it prints: nothing is tuned to favour a method.

Modes: default (one seed), ``quick`` (fewer epochs), ``smoke`` (a few seconds,
for CI), ``full`` (symmetric and pair-flip noise at 25/50/75% and 3 seeds).
Runs already finished in the output folder are reused, interrupted ones resume.

The demo is a sweep: each mode is a sweep file shipped in this package
(``demo.yaml``, the default, and the overlays ``quick.yaml``, ``smoke.yaml``,
``full.yaml`` merged over it), run by the same sweep runner, results store
and report writer as ``visprompt sweep`` and ``visprompt report``. The output
folder holds::

    results.md, results.csv     the table printed at the end
    accuracy_vs_noise.png       accuracy vs noise rate per method
    label_issues.csv            the noisy VisPrompt run's labels, most suspect first
    report/                     `visprompt report` of these runs (index.md, tables, plots)
    results.sqlite              the results database (`visprompt runs list --db ...`)
    runs/<run id>/              one folder per run (config, metrics, checkpoint, result)
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from visprompt.errors import VispromptError

#: Modes of ``visprompt demo``; each but the default is an overlay file ``<mode>.yaml``.
MODES = ("default", "quick", "smoke", "full")
#: The default mode's sweep file, which the overlays are merged over.
SWEEP_FILE = "demo.yaml"
#: The method whose first noisy run's labels are exported as label issues.
LABEL_ISSUES_METHOD = "visprompt"
DB_NAME = "results.sqlite"
RUNS_DIR = "runs"
REPORT_DIR = "report"
#: Digits after the point in the demo's table (the report's own tables show two).
DIGITS = 1


def sweep_files(mode: str = "default") -> list[Path]:
    """The shipped sweep files of a mode: ``demo.yaml``, then its overlay (if any)."""
    if mode not in MODES:
        raise VispromptError(f"unknown demo mode {mode!r}; choose one of {', '.join(MODES)}")
    folder = resources.files(__name__)
    names = [SWEEP_FILE] + ([] if mode == "default" else [f"{mode}.yaml"])
    return [Path(str(folder.joinpath(name))) for name in names]


def load_demo_sweep(mode: str = "default", overrides: list[str] | None = None) -> Any:
    """The demo's sweep for ``mode`` with ``--set`` overrides, expanded and validated.

    The overlay is merged over ``demo.yaml`` as OmegaConf merges (mappings key
    by key, lists such as ``grids:`` replaced whole), then expanded by
    :func:`visprompt.experiments.sweep.parse_sweep` exactly as ``visprompt
    sweep`` expands a file.

    Raises:
        VispromptError: an unknown mode, or an override that is malformed,
            clashes with a key the grids vary, or makes a run invalid.
    """
    from omegaconf import OmegaConf

    from visprompt.config import load_yaml_node
    from visprompt.experiments.sweep import parse_sweep

    files = sweep_files(mode)
    nodes = [load_yaml_node(f, "demo sweep file", "a sweep YAML file") for f in files]
    data = OmegaConf.to_container(OmegaConf.merge(*nodes), resolve=False)
    return parse_sweep(
        data,
        source=" over ".join(str(f) for f in reversed(files)),
        base_dir=files[0].parent,
        default_name=f"demo-{mode}",
        overrides=list(overrides or []),
    )


def _run_line(db: Path, run: Any, index: int, total: int, reused: bool) -> str:
    """``[3/7] coop synthetic-shapes sym 0.5 seed 1: test accuracy 26.0% (2 s)`` from the store."""
    from visprompt.experiments.store import ResultsStore

    with ResultsStore(db, create=False) as store:
        row = store.get_run(run.run_id)
        purification = store.purification(run.run_id)
    ot = ""
    final = next(
        (p for p in reversed(purification) if None not in (p.get("precision"), p.get("recall"))),
        None,
    )
    if final is not None:
        ot = (
            f", clean-split precision {100 * final['precision']:.1f}% "
            f"recall {100 * final['recall']:.1f}%"
        )
    when = "reused" if reused else f"{row['wall_seconds'] or 0:.0f} s"
    return (
        f"[{index}/{total}] {run.describe()}: test accuracy {row['test_accuracy']:.1f}%{ot} "
        f"({when})"
    )


def run_demo(
    out_dir: str | Path = "demo-output",
    mode: str = "default",
    overrides: list[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo sweep into ``out_dir``; returns the table, its records and the paths written.

    Raises:
        VispromptError: bad mode, overrides or output folder (before anything is
            written), or a run that failed (the others are kept; rerunning
            retries it and reuses the rest).
        KeyboardInterrupt: Ctrl-C; the runs in flight resume on the next call.
    """
    from visprompt.experiments.report import (
        accuracy_overview,
        load_records,
        method_table_markdown,
        method_tables,
        paper_tables,
        write_report,
    )
    from visprompt.experiments.report.tables import csv_text, method_table_csv
    from visprompt.experiments.runner import plan_sweep, run_sweep
    from visprompt.experiments.store import ResultsStore
    from visprompt.fileio import atomic_write_text

    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise VispromptError(f"demo output {out} is a file; give a folder with --out")
    sweep = load_demo_sweep(mode, overrides)  # every run validated before anything is written
    started = time.perf_counter()
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        plan = plan_sweep(sweep, out / DB_NAME, out / RUNS_DIR, retry_failed=True)
    except BaseException:
        if created:
            out.rmdir()
        raise
    total = len(sweep.runs)
    log(f"visprompt demo ({mode}): {total} runs on the synthetic-shapes world -> {out}")
    log(plan.summary())
    if plan.busy:
        raise VispromptError(
            f"{len(plan.busy)} demo runs are running in another process on {plan.db}; wait for "
            "it to finish or give another --out"
        )
    counter = iter(range(1, total + 1))
    for run in plan.done:
        log(_run_line(plan.db, run, next(counter), total, reused=True))
    if plan.new:
        outcome = run_sweep(
            plan,
            jobs=1,  # one worker, this process's thread count: the numbers of `visprompt train`
            progress=progress,
            on_done=lambda run, info: log(_run_line(plan.db, run, next(counter), total, False)),
        )
        if outcome.interrupted:
            raise KeyboardInterrupt
        failed = outcome.failed
    else:
        failed = {}
    if failed:
        first = next(iter(failed.values()))
        raise VispromptError(
            f"{len(failed)} of {total} demo runs failed (first: {first}); see "
            f"`visprompt runs list --db {plan.db} --status failed`, fix the cause and rerun "
            "the same command (finished runs are reused)"
        )

    ids = [r.run_id for r in sweep.runs]
    with ResultsStore(plan.db, create=False) as store:
        records = load_records(store, run_ids=ids)
    tables = method_tables(records)
    md = "\n\n".join(
        (f"## {t.title}\n\n" if len(tables) > 1 else "") + method_table_markdown(t, DIGITS)
        for t in tables
    )
    csv = (
        csv_text(tables[0].header(), tables[0].rows(DIGITS))
        if len(tables) == 1
        else method_table_csv(tables, DIGITS)
    )
    atomic_write_text(out / "results.md", f"# visprompt demo results\n\n{md}\n")
    atomic_write_text(out / "results.csv", csv)
    written = [out / "results.md", out / "results.csv"]
    plot = out / "accuracy_vs_noise.png"
    first_table = paper_tables(records)[0]
    tmp = accuracy_overview(first_table, tables[0].key[-1], out / ".accuracy_vs_noise.tmp.png")
    if tmp is not None:
        os.replace(tmp, plot)
        written.append(plot)

    noisy = [
        r
        for r in sweep.runs
        if r.config.method.name == LABEL_ISSUES_METHOD and r.config.noise.type != "none"
    ]
    if noisy:
        from visprompt.experiments.label_issues import export_label_issues

        target = noisy[0]
        issues, path = export_label_issues(plan.run_dir(target), out / "label_issues.csv")
        written.append(path)
        s = issues.summary
        if "noisy_precision" in s:
            log(
                f"label issues ({target.describe()}): {s['num_flagged_noisy']} flagged, "
                f"precision {100 * s['noisy_precision']:.1f}% recall "
                f"{100 * s['noisy_recall']:.1f}% against the injected noise"
            )
    report = write_report(plan.db, out / REPORT_DIR, run_ids=ids)
    written.append(report.folder / "index.md")
    log("")
    log(md + "\n")
    log(f"wrote {', '.join(str(p) for p in written)} in {time.perf_counter() - started:.0f} s")
    return {
        "header": tables[0].header(),
        "rows": tables[0].rows(DIGITS),
        "tables": tables,
        "records": records,
        "sweep": sweep,
        "db": plan.db,
        "files": written,
    }


def _cmd(args: argparse.Namespace) -> int:
    import sys

    mode = "default"
    for flag in ("quick", "smoke", "full"):
        if getattr(args, flag):
            if mode != "default":
                raise VispromptError("choose at most one of --quick, --smoke and --full")
            mode = flag
    try:
        run_demo(args.out, mode, args.overrides, progress=not args.quiet)
    except KeyboardInterrupt:
        print(
            "interrupted; run the same command again to continue (finished runs are reused, "
            "the interrupted one resumes from its last epoch)",
            file=sys.stderr,
        )
        return 130
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    from visprompt.cli import add_set_argument

    p = sub.add_parser(
        "demo",
        help="train zero-shot, CoOp, NLPrompt and VisPrompt on the shipped synthetic world",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--out", "-o", default="demo-output", help="output folder (demo-output)")
    p.add_argument("--quick", action="store_true", help="fewer epochs (about a minute)")
    p.add_argument("--smoke", action="store_true", help="seconds-long check of the pipeline")
    p.add_argument("--full", action="store_true", help="sym + pair noise, 3 rates, 3 seeds")
    add_set_argument(
        p, "override a key of every demo run, e.g. --set optim.epochs=5 (not a key the grid varies)"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd)
