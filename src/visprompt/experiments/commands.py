"""CLI commands of the experiments package: ``sweep``, ``runs list``, ``runs show``, ``report``.

``visprompt.cli`` imports this module (it is listed in ``COMMAND_MODULES``)
and calls :func:`add_commands`; every handler returns an exit status and
raises :class:`VispromptError` for bad input (printed by the CLI as one line).

Examples::

    visprompt sweep --config configs/sweeps/paper-rn50.yaml --db results.sqlite --jobs 4 \\
        --set data.root=/data --set backbone.checkpoint=/ckpt/RN50.pt
    visprompt sweep --config configs/sweeps/paper-rn50.yaml --db results.sqlite --dry-run \\
        --set data.root=/data --set backbone.checkpoint=/ckpt/RN50.pt
    visprompt sweep --config configs/sweeps/paper-rn50.yaml --db results.sqlite --gpus 0,1,2,3
    visprompt sweep --config configs/sweeps/paper-rn50.yaml --db /shared/results.sqlite \
        --executor slurm --slurm-partition gpu --runs-dir /shared/runs --cache-dir /shared/cache
    visprompt runs list --db results.sqlite --status failed
    visprompt runs show 3fa9c2 --db results.sqlite
    visprompt report --db results.sqlite --out report/ --dataset caltech101
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from visprompt.cli import add_mlflow_argument, add_set_argument
from visprompt.errors import VispromptError
from visprompt.robust.quality import PURIFY_PREFIX

DEFAULT_DB = "results.sqlite"


def add_commands(subparsers: Any) -> None:
    """Add ``sweep``, ``runs`` (``list``, ``show``) and ``report`` to the ``visprompt`` parser."""
    p = subparsers.add_parser(
        "sweep",
        help="run a grid of runs into a results database (resumable)",
        description="Expand a sweep file into runs and run the ones not yet done, N at a time. "
        "Re-running the same command continues where it stopped.",
    )
    p.add_argument("--config", "-c", required=True, help="sweep YAML file (see configs/sweeps/)")
    _add_db_args(p)
    p.add_argument("--jobs", "-j", type=int, default=1, help="runs at a time (worker processes)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per worker (default: this process's torch threads / jobs, so "
        "--jobs 1 runs with the thread count of `visprompt train`)",
    )
    p.add_argument(
        "--runs-dir", help="folder of the run folders (default: <db folder>/<db name>-runs)"
    )
    add_set_argument(
        p, "set a key of the sweep's base config, e.g. --set data.root=/data (repeatable)"
    )
    add_mlflow_argument(p)
    p.add_argument("--dry-run", action="store_true", help="validate and count, run nothing")
    p.add_argument("--list", action="store_true", help="with --dry-run: print every run")
    p.add_argument("--retry-failed", action="store_true", help="also rerun failed runs")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    _add_scale_out_args(p)
    p.set_defaults(func=cmd_sweep)

    p = subparsers.add_parser("runs", help="inspect the runs in a results database")
    rsub = p.add_subparsers(dest="runs_command", metavar="ACTION")
    rsub.required = True
    q = rsub.add_parser("list", help="one line per run")
    _add_db_args(q)
    q.add_argument("--status", action="append", help="only runs with this status (repeatable)")
    q.add_argument("--dataset", action="append", help="only this dataset (repeatable)")
    q.add_argument("--method", action="append", help="only this method (repeatable)")
    q.add_argument("--sweep", help="only runs of the sweep with this name")
    q.add_argument("--json", action="store_true", help="print JSON lines")
    q.set_defaults(func=cmd_runs_list)
    q = rsub.add_parser("show", help="everything about one run")
    q.add_argument("id", help="run id (a unique prefix is enough)")
    _add_db_args(q)
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_runs_show)

    p = subparsers.add_parser(
        "report",
        help="paper-style tables and plots from a results database",
        description="Write the paper-style table (mean ± std and 95% CI over seeds, an "
        "Average row), accuracy-vs-noise plots, purification curves and ablation tables "
        "(Markdown, CSV, PNG, optionally LaTeX) with an index.md; or, with --run, the "
        "per-class accuracy of one run.",
    )
    _add_db_args(p)
    p.add_argument("--out", "-o", required=True, help="report folder to write")
    p.add_argument("--dataset", action="append", help="only this dataset (repeatable)")
    p.add_argument("--method", action="append", help="only this method (repeatable)")
    p.add_argument("--backbone", action="append", help="only this backbone (repeatable)")
    p.add_argument("--latex", action="store_true", help="also write booktabs LaTeX tables")
    p.add_argument(
        "--paper",
        metavar="FILE.csv",
        help="published numbers (dataset,noise_type,rate,method,accuracy) to put next to "
        "ours; visprompt ships one: src/visprompt/assets/published/",
    )
    p.add_argument(
        "--run", metavar="DIR", help="report one run folder instead: per-class test accuracy"
    )
    p.add_argument("--root", help="with --run: the run's dataset moved here")
    p.set_defaults(func=cmd_report)


def _add_scale_out_args(p: argparse.ArgumentParser) -> None:
    """``sweep`` options for GPUs, the shared feature cache and submitit executors."""
    p.add_argument(
        "--cache-dir",
        help="feature cache folder of every run (sets data.cache_dir; on a cluster: a "
        "shared filesystem)",
    )
    g = p.add_argument_group("GPUs of this machine")
    g.add_argument(
        "--gpus", help="GPU ids to run on, e.g. 0,1,2,3: one worker per GPU slot (not --jobs)"
    )
    g.add_argument("--runs-per-gpu", type=int, default=1, help="runs at a time per GPU")
    g = p.add_argument_group("cluster (submitit)")
    g.add_argument(
        "--executor",
        choices=["slurm", "local"],
        help="submit each run as a job: slurm (sbatch job arrays) or local (submitit's "
        "local executor); jobs train into --runs-dir, this process fills --db",
    )
    g.add_argument("--collect", action="store_true", help="only ingest finished run folders")
    g.add_argument("--slurm-partition", help="SLURM partition (default: the cluster's)")
    g.add_argument("--slurm-gpus-per-run", type=int, help="GPUs per job (default 1; 0 with local)")
    g.add_argument(
        "--slurm-time", type=int, default=120, help="minutes per job before it is requeued"
    )
    g.add_argument("--slurm-array-parallelism", type=int, default=32, help="jobs running at once")
    g.add_argument(
        "--slurm-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another sbatch option, e.g. account=abc or qos=high (repeatable)",
    )
    g.add_argument(
        "--poll-seconds",
        type=float,
        help="how often to look at the jobs (default 15 with slurm, 1 with local)",
    )


def _add_db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=DEFAULT_DB, help=f"results database (default {DEFAULT_DB})")
    p.add_argument(
        "--db-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for a database another process is writing (default 30)",
    )


# ---------------------------------------------------------------- sweep


def _cluster_options(args: argparse.Namespace) -> Any:
    """``--executor`` and its ``--slurm-*`` options (None without ``--executor``)."""
    from visprompt.experiments.runner import ClusterOptions, check_options

    if args.executor is None:
        given = [
            name
            for name, value in (
                ("--slurm-partition", args.slurm_partition),
                ("--slurm-gpus-per-run", args.slurm_gpus_per_run),
                ("--slurm-option", args.slurm_option),
            )
            if value
        ]
        if given:
            raise VispromptError(f"{given[0]} needs --executor slurm; add it or leave it out")
        return None
    if args.gpus:
        raise VispromptError(
            "--gpus places local workers; with --executor each job gets its GPUs from "
            "--slurm-gpus-per-run; leave --gpus out"
        )
    extra = {}
    for text in args.slurm_option:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise VispromptError(f"--slurm-option {text!r} is not KEY=VALUE; e.g. account=abc")
        extra[key.strip()] = value
    if args.poll_seconds is not None and args.poll_seconds <= 0:
        raise VispromptError(f"--poll-seconds must be positive, got {args.poll_seconds:g}")
    local = args.executor == "local"
    gpus_per_run = args.slurm_gpus_per_run
    options = ClusterOptions(
        executor=args.executor,
        partition=args.slurm_partition,
        gpus_per_run=(0 if local else 1) if gpus_per_run is None else gpus_per_run,
        time_min=args.slurm_time,
        array_parallelism=args.slurm_array_parallelism,
        cpus_per_run=args.threads,
        extra=extra,
        poll_seconds=args.poll_seconds or (1.0 if local else 15.0),
    )
    check_options(options)
    return options


def cmd_sweep(args: argparse.Namespace) -> int:
    from visprompt.engine.checkpoint import check_writable
    from visprompt.experiments.runner import (
        check_gpus,
        collect_sweep,
        parse_gpus,
        plan_sweep,
        run_sweep,
        submit_sweep,
    )
    from visprompt.experiments.sweep import load_sweep

    if args.jobs < 1:
        raise VispromptError(f"--jobs must be at least 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise VispromptError(f"--threads must be at least 1, got {args.threads}")
    if args.runs_per_gpu < 1:
        raise VispromptError(f"--runs-per-gpu must be at least 1, got {args.runs_per_gpu}")
    options = _cluster_options(args)
    gpus = parse_gpus(args.gpus) if args.gpus else None
    if gpus is not None and args.jobs != 1:
        raise VispromptError(
            "--jobs and --gpus both set how many runs go at once; with --gpus use "
            "--runs-per-gpu instead of --jobs"
        )
    if gpus is not None and not (args.dry_run or args.collect):
        check_gpus(gpus)
    overrides = list(args.overrides)
    if args.cache_dir:
        cache = Path(args.cache_dir).expanduser().absolute()
        check_writable(cache, "--cache-dir", "folder")
        overrides.append(f"data.cache_dir={cache}")
    if args.mlflow:
        from visprompt.engine.tracking import import_mlflow

        import_mlflow()  # before any run starts, not once per run in the workers
        overrides.append(f"tracking.mlflow={args.mlflow}")
    sweep = load_sweep(args.config, overrides)
    plan = plan_sweep(
        sweep, args.db, args.runs_dir, retry_failed=args.retry_failed, timeout=args.db_timeout
    )
    if args.collect or (options is not None and not args.dry_run):
        # what jobs finished (or lost) since the last look, before deciding what to submit
        collected = collect_sweep(plan, timeout=args.db_timeout)
        if args.collect or collected.counts["done"] or collected.counts["interrupted"]:
            print(collected.summary(), flush=True)
        if args.collect:
            return 1 if collected.counts["failed"] or collected.counts["interrupted"] else 0
        plan = plan_sweep(
            sweep, args.db, args.runs_dir, retry_failed=args.retry_failed, timeout=args.db_timeout
        )
    print(plan.summary(), flush=True)
    if args.dry_run:
        _print_dry_run(plan, every=args.list)
        return 0
    if not plan.new and not (options is not None and plan.busy):  # busy jobs are watched
        print("nothing to run")
        return 0 if not plan.failed else 1
    if options is not None:
        outcome = submit_sweep(
            plan, options, threads=args.threads, timeout=args.db_timeout, progress=not args.quiet
        )
    else:
        outcome = run_sweep(
            plan,
            jobs=args.jobs,
            threads=args.threads,
            timeout=args.db_timeout,
            progress=not args.quiet,
            gpus=gpus,
            runs_per_gpu=args.runs_per_gpu,
        )
    if outcome.interrupted:
        print(
            f"interrupted: {outcome.summary()}; run the same command again to continue",
            file=sys.stderr,
        )
        return 130
    print(f"sweep {sweep.name}: {outcome.summary()}; results in {plan.db}")
    if outcome.lost:
        print(
            f"{len(outcome.lost)} jobs ended before their run finished; run the same command "
            "again to resubmit them (they resume from their last checkpoint)",
            file=sys.stderr,
        )
    if outcome.failed or plan.failed or outcome.lost:
        print(
            f"some runs failed; see `visprompt runs list --db {plan.db} --status failed`, fix "
            "the cause and rerun with --retry-failed",
            file=sys.stderr,
        )
        return 1
    return 0


def _print_dry_run(plan: Any, every: bool) -> None:
    sweep = plan.sweep
    if len(sweep.grids) > 1:
        print("  grids: " + ", ".join(f"{name} ({n} runs)" for name, n in sweep.grids))
    for key, values in sweep.varied.items():
        print(f"  {key}: {', '.join(str(v) for v in values)}")
    new = {r.run_id for r in plan.new}
    shown = sweep.runs if every else [r for r in sweep.runs if r.run_id in new][:10]
    status = {r.run_id: "new" for r in plan.new}
    status.update({r.run_id: "done" for r in plan.done})
    status.update({r.run_id: "failed" for r in plan.failed})
    status.update({r.run_id: "busy" for r in plan.busy})
    for run in shown:
        print(f"  {run.run_id}  {status[run.run_id]:6s}  {run.describe()}")
    hidden = (len(sweep.runs) if every else len(plan.new)) - len(shown)
    if hidden > 0:
        print(f"  ... {hidden} more new runs (--list prints every run)")
    print("dry run: every run's config is valid; nothing was run")


# ---------------------------------------------------------------- runs


def _fmt_time(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _fmt_num(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def cmd_runs_list(args: argparse.Namespace) -> int:
    from visprompt.experiments.store import STATUSES, ResultsStore

    for status in args.status or []:
        if status not in STATUSES:
            raise VispromptError(f"unknown status {status!r}; choose one of: {', '.join(STATUSES)}")
    with ResultsStore(args.db, timeout=args.db_timeout, create=False) as store:
        runs = store.list_runs(
            status=args.status, dataset=args.dataset, method=args.method, sweep=args.sweep
        )
    if args.json:
        for run in runs:
            print(json.dumps({k: v for k, v in run.items() if k != "config"}, sort_keys=True))
        return 0
    header = (
        f"{'ID':16s}  {'STATUS':11s}  {'METHOD':10s}  {'DATASET':16s}  {'NOISE':10s}  "
        f"{'SEED':>4s}  {'ACC':>6s}  {'SECONDS':>8s}  {'WHERE':18s}  ERROR"
    )
    print(header)
    for r in runs:
        noise = f"{r['noise_type']} {r['noise_rate']:g}" if r["noise_rate"] is not None else "-"
        error = (r["error"] or "")[:80]
        print(
            f"{r['id']:16s}  {r['status']:11s}  {str(r['method'])[:10]:10s}  "
            f"{str(r['dataset'])[:16]:16s}  {noise:10s}  {str(r['seed']):>4s}  "
            f"{_fmt_num(r['test_accuracy']):>6s}  {_fmt_num(r['wall_seconds'], 1):>8s}  "
            f"{_where(r)[:18]:18s}  {error}"
        )
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    shown = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
    print(f"{len(runs)} runs ({shown})")
    return 0


def _where(run: dict) -> str:
    """Where a run ran: its job (``slurm 1234_5``), else its GPU, else its worker pid."""
    if run.get("job_id"):
        return f"{run['executor']} {run['job_id']}"
    if run.get("visible_gpus"):
        return f"gpu {run['visible_gpus']}"
    return f"pid {run['worker_pid']}" if run.get("worker_pid") else "-"


def cmd_runs_show(args: argparse.Namespace) -> int:
    import yaml

    from visprompt.experiments.store import ResultsStore

    with ResultsStore(args.db, timeout=args.db_timeout, create=False) as store:
        run = store.get_run(args.id)
        epochs = store.epochs(run["id"])
    if args.json:
        print(json.dumps({**run, "epochs": epochs}, indent=2, sort_keys=True))
        return 0
    lines = [
        f"run {run['id']}  ({run['status']})",
        f"  sweep:       {run['sweep'] or '-'}",
        f"  method:      {run['method']}   dataset: {run['dataset']}   backbone: "
        f"{run['backbone']}   shots: {run['shots']}",
        f"  noise:       {run['noise_type']} {run['noise_rate']}   seed: {run['seed']}",
        f"  folder:      {run['run_dir']}",
        f"  created:     {_fmt_time(run['created_at'])}   started: "
        f"{_fmt_time(run['started_at'])}   finished: {_fmt_time(run['finished_at'])}",
        f"  wall:        {_fmt_num(run['wall_seconds'], 1)} s   per epoch: "
        f"{_fmt_num(run['seconds_per_epoch'], 2)} s   attempts: {run['attempts']}   "
        f"resumed: {run['resumed']}",
        f"  host:        {run['host'] or '-'}   sweep pid: {run['owner_pid'] or '-'}   worker pid: "
        f"{run['worker_pid'] or '-'}",
        f"  device:      {run['device'] or '-'}   CUDA_VISIBLE_DEVICES: "
        f"{run['visible_gpus'] if run['visible_gpus'] is not None else '-'}   job: "
        f"{_where(run) if run['job_id'] else '-'}",
        f"  accuracy:    {_fmt_num(run['test_accuracy'])}%   macro: "
        f"{_fmt_num(run['test_macro_accuracy'])}%",
        f"  feature cache: {run['cache_misses'] if run['cache_misses'] is not None else '-'} "
        f"computed, {run['cache_hits'] if run['cache_hits'] is not None else '-'} loaded",
    ]
    if run["versions"]:
        lines.append(
            "  versions:    " + ", ".join(f"{k} {v}" for k, v in sorted(run["versions"].items()))
        )
    if run["error"]:
        lines.append(f"  error:       {run['error']}")
    if run["log_tail"]:
        lines.append("  log tail:")
        lines.extend(f"    {line}" for line in run["log_tail"].splitlines()[-20:])
    print("\n".join(lines))
    print("config:")
    print("  " + yaml.safe_dump(run["config"], sort_keys=False).rstrip().replace("\n", "\n  "))
    if epochs:
        keys = ["epoch", "lr", "train_loss", "train_acc", "test_accuracy"]
        keys += sorted({k for m in epochs for k in m if k.startswith(PURIFY_PREFIX)})
        print("epochs:")
        print("  " + "  ".join(f"{k:>12s}" for k in keys))
        for m in epochs:
            cells = []
            for k in keys:
                v = m.get(k)
                cells.append(
                    f"{v:>12.5g}"
                    if isinstance(v, (int, float))
                    else f"{'-' if v is None else v:>12}"
                )
            print("  " + "  ".join(cells))
    return 0


# ---------------------------------------------------------------- report


def cmd_report(args: argparse.Namespace) -> int:
    from visprompt.engine.checkpoint import check_writable
    from visprompt.experiments.report import write_report

    check_writable(args.out, "--out", "folder")
    if args.run is not None:
        return _report_run(args)
    if args.root is not None:
        raise VispromptError("--root only applies with --run DIR; leave it out")
    written = write_report(
        args.db,
        Path(args.out),
        datasets=args.dataset,
        methods=args.method,
        backbones=args.backbone,
        timeout=args.db_timeout,
        latex=args.latex,
        paper=args.paper,
    )
    print(
        f"report of {written.runs} runs written to {written.folder} "
        f"({len(written.files)} files); open {written.folder / 'index.md'}"
    )
    return 0


def _report_run(args: argparse.Namespace) -> int:
    from visprompt.experiments.report.run_report import write_run_report

    given = [f"--{n}" for n in ("dataset", "method", "backbone") if getattr(args, n)]
    given += [f"--{n}" for n in ("latex", "paper") if getattr(args, n)]
    if given:
        raise VispromptError(
            f"{', '.join(given)} apply to a results database, not to --run; leave them out"
        )
    written = write_run_report(args.run, Path(args.out), root=args.root, progress=False)
    print(
        f"per-class report of {args.run} written to {written.folder}; open "
        f"{written.folder / 'index.md'}"
    )
    return 0
