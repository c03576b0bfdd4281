"""A sweep through submitit: submit runs as jobs, watch their folders, ingest them into the store.

:func:`submit_sweep` is the submitting process (``--executor slurm|local``):
it submits the plan's new runs in cache-aware order
(:class:`~visprompt.experiments.runner.schedule.CacheScheduler`: each feature
set is computed by one job, and the jobs that read it are submitted once that
job finished an epoch), records each job id in the store, and polls the run
folders. Jobs never write the database; this process ingests every finished
folder in one transaction per run (:func:`settle`). Ctrl-C or a crash of this
process leaves the jobs running; rerunning the command (or ``--collect``)
ingests what finished meanwhile and submits only what is neither finished
nor running.

:func:`collect_sweep` (``visprompt sweep ... --collect``) only ingests: every
run of the sweep whose folder holds a finished result and whose row is not
``done`` yet, and the state of jobs that ended (failed / interrupted). A
``done`` row is never written again, so collecting twice changes nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visprompt.experiments.runner.jobs import (
    JOB_ERROR,
    ClusterOptions,
    RunJob,
    job_alive,
    job_stderr,
    make_executor,
)
from visprompt.experiments.runner.plan import SweepPlan
from visprompt.experiments.runner.pool import SweepOutcome
from visprompt.experiments.runner.progress import SweepProgress
from visprompt.experiments.runner.schedule import CacheScheduler
from visprompt.experiments.store import DEFAULT_TIMEOUT, ResultsStore, read_tail
from visprompt.experiments.sweep import SweepRun

#: What :func:`settle` found: the run's new status, or ``running`` / ``queued``.
SETTLED = ("done", "failed", "interrupted", "running", "queued")


def finished_result(run_dir: Path, config: dict) -> dict | None:
    """The folder's result.json when it holds this config's finished run, else None."""
    from visprompt.engine.run_folder import RESULT_FILE
    from visprompt.experiments.worker import start_mode

    if start_mode(run_dir, config, fresh=False) != "import":
        return None
    try:
        return json.loads((run_dir / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None


def ingest(store: ResultsStore, run_id: str, run_dir: Path, result: dict) -> None:
    """Record a finished run folder (one transaction; idempotent)."""
    from visprompt.engine.run_folder import read_metrics
    from visprompt.experiments.worker import _counts

    store.finish(run_id, result, read_metrics(run_dir), *_counts(result))


def settle(
    store: ResultsStore, row: dict, run: SweepRun, run_dir: Path, alive: bool | None = None
) -> str:
    """Bring one non-done run's row up to date with its folder and its job.

    ``alive``: whether its job still runs (None: ask :func:`job_alive`).
    Returns one of :data:`SETTLED`.
    """
    result = finished_result(run_dir, run.config.to_dict())
    if result is not None:
        ingest(store, run.run_id, run_dir, result)
        return "done"
    if row.get("status") != "running" or not row.get("job_id"):
        return "queued"
    if alive is None:
        alive = job_alive(row)
    if alive:
        return "running"
    stderr = read_tail(job_stderr(run_dir.parent, row["job_id"]))
    error_file = run_dir / JOB_ERROR
    if error_file.is_file():
        try:
            error = json.loads(error_file.read_text())["error"]
        except (OSError, ValueError, KeyError, TypeError):
            error = f"job {row['job_id']} failed; see its stderr"
        store.fail(run.run_id, error, status="failed", log_tail=stderr)
        return "failed"
    store.fail(
        run.run_id,
        f"{row['executor']} job {row['job_id']} ended before the run finished (killed, "
        "pre-empted or out of time); the next sweep resubmits it from its last checkpoint",
        status="interrupted",
        log_tail=stderr,
    )
    return "interrupted"


@dataclass
class Collected:
    """What :func:`collect_sweep` found, run ids per outcome."""

    counts: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in SETTLED})
    already: int = 0

    def summary(self) -> str:
        c = self.counts
        return (
            f"collected {len(c['done'])} finished runs ({self.already} were already in the "
            f"database); {len(c['running'])} running, {len(c['failed'])} failed, "
            f"{len(c['interrupted'])} interrupted, {len(c['queued'])} not started"
        )


def collect_sweep(plan: SweepPlan, timeout: float = DEFAULT_TIMEOUT) -> Collected:
    """Ingest the sweep's finished run folders and the outcome of its ended jobs.

    Rows that are ``done`` are left untouched; every write waits for the
    database's lock (another sweep collecting at the same time) up to
    ``timeout`` seconds per transaction.
    """
    out = Collected()
    with ResultsStore(plan.db, timeout=timeout) as store:
        store.add_pending(
            (r.run_id, r.config.to_dict(), plan.sweep.name, str(plan.run_dir(r)))
            for r in plan.sweep.runs
        )
        rows = store.statuses(r.run_id for r in plan.sweep.runs)
        for run in plan.sweep.runs:
            row = rows[run.run_id]
            if row["status"] == "done":
                out.already += 1
                continue
            state = settle(store, row, run, plan.run_dir(run))
            if state == "queued" and row["status"] in ("failed", "interrupted"):
                state = row["status"]  # ended before this look; nothing new in its folder
            out.counts[state].append(run.run_id)
    return out


# ---------------------------------------------------------------- submitting


def submit_sweep(
    plan: SweepPlan,
    options: ClusterOptions,
    threads: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> SweepOutcome:
    """Submit the plan's new runs as submitit jobs and watch them until all have ended.

    Call :func:`collect_sweep` and plan again first (``visprompt sweep`` does),
    so that runs finished or running elsewhere are not in ``plan.new``.

    Returns:
        A :class:`SweepOutcome`; ``interrupted`` after Ctrl-C (the jobs keep
        running; rerun the command or ``--collect`` later); ``lost`` lists the
        runs whose job died before they finished (rerunning resubmits them).
    """
    started = time.perf_counter()
    outcome = SweepOutcome()
    executor = make_executor(options, plan.runs_dir, plan.sweep.name)
    limit = options.array_parallelism
    scheduler = CacheScheduler(plan.new)
    by_id = {r.run_id: r for r in [*plan.new, *plan.busy]}
    # run id -> submitit job of a run in flight (None: a job an earlier sweep submitted)
    jobs: dict[str, Any] = {}
    try:
        with ResultsStore(plan.db, timeout=timeout) as store:
            store.add_pending(
                (r.run_id, r.config.to_dict(), plan.sweep.name, str(plan.run_dir(r)))
                for r in plan.new
            )
            # jobs still running from an earlier sweep are watched (and ingested) too
            busy = store.statuses(r.run_id for r in plan.busy)
            jobs.update({i: None for i, row in busy.items() if row.get("job_id")})
            bar = SweepProgress(
                plan.sweep.name, len(plan.new) + len(jobs), enabled=progress, parallel=limit
            )
            for run_id in jobs:
                bar.start(run_id)
            say = echo or bar.write
            try:
                while len(scheduler) or jobs:
                    batch = _next_batch(scheduler, jobs, options, limit)
                    if batch:
                        submitted = _submit(executor, batch, plan, threads)
                        store.mark_submitted(
                            [(run_id, job.job_id) for run_id, job in submitted.items()],
                            options.executor,
                            os.getpid(),
                            resumed=[r.run_id for r in batch if r.run_id in plan.resumable],
                        )
                        jobs.update(submitted)
                        for run_id in submitted:
                            bar.start(run_id)
                    _poll(store, plan, jobs, by_id, scheduler, outcome, bar, say, options)
                    if jobs or len(scheduler):
                        time.sleep(options.poll_seconds)
            except KeyboardInterrupt:
                outcome.interrupted = True
                say(
                    f"stopped watching; {len(jobs)} submitted jobs keep running - rerun the "
                    "command (or add --collect) to ingest them"
                )
    finally:
        if "bar" in locals():
            bar.close()
        outcome.seconds = time.perf_counter() - started
    return outcome


def _next_batch(
    scheduler: CacheScheduler, jobs: dict, options: ClusterOptions, limit: int
) -> list[SweepRun]:
    """Runs that may be submitted now: the cache order allows them and, for the local
    executor, fewer than ``limit`` jobs run (SLURM keeps an array to its %N itself)."""
    batch: list[SweepRun] = []
    while len(scheduler):
        if options.executor == "local" and len(jobs) + len(batch) >= limit:
            break
        run = scheduler.next_run(force=not jobs and not batch)
        if run is None:
            break
        batch.append(run)
    return batch


def _submit(executor: Any, batch: list[SweepRun], plan: SweepPlan, threads: int | None) -> dict:
    """Submit one batch (one SLURM job array); returns ``run id -> job``."""
    tasks = []
    for run in batch:
        run_dir = plan.run_dir(run)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / JOB_ERROR).unlink(missing_ok=True)  # an earlier attempt's error
        tasks.append(
            {
                "run_id": run.run_id,
                "config": run.config.to_dict(),
                "run_dir": str(run_dir),
                "fresh": run.run_id in plan.fresh,
                "cwd": os.getcwd(),
                "threads": threads,
            }
        )
    job = RunJob()
    with executor.batch():
        submitted = [executor.submit(job, task) for task in tasks]
    return {run.run_id: j for run, j in zip(batch, submitted, strict=True)}


def _poll(
    store: ResultsStore,
    plan: SweepPlan,
    jobs: dict[str, Any],
    by_id: dict[str, SweepRun],
    scheduler: CacheScheduler,
    outcome: SweepOutcome,
    bar: SweepProgress,
    say: Callable[[str], None],
    options: ClusterOptions,
) -> None:
    from visprompt.engine.run_folder import METRICS_FILE

    if not jobs:
        return
    rows = store.statuses(jobs)
    alive = _alive(jobs, rows, options)
    for run_id in list(jobs):
        run, run_dir = by_id[run_id], plan.run_dir(by_id[run_id])
        state = settle(store, rows[run_id], run, run_dir, alive=alive[run_id])
        if state == "running":
            if (run_dir / METRICS_FILE).is_file():  # an epoch ended: its features are cached
                scheduler.progressed(run_id)
            continue
        del jobs[run_id]
        if state == "done":
            scheduler.progressed(run_id)
            outcome.finished.append(run_id)
            bar.end(run_id, ok=True)
            continue
        scheduler.failed(run_id)
        error = store.get_run(run_id)["error"] or state
        if state == "interrupted":
            outcome.lost.append(run_id)
            bar.stop(run_id)
            say(f"interrupted {run_id} ({run.describe()}): {error}")
        else:
            outcome.failed[run_id] = error
            bar.end(run_id, ok=False)
            say(f"failed {run_id} ({run.describe()}): {error}")


def _alive(jobs: dict[str, Any], rows: dict[str, dict], options: ClusterOptions) -> dict:
    """Whether each job in flight still runs (one ``sacct`` call for all SLURM jobs).

    A job of this process is asked through its submitit handle; one an earlier
    sweep submitted (``None``) through :func:`job_alive` and its row.
    """
    from visprompt.experiments.runner.jobs import SLURM_ALIVE, slurm_states

    alive = {i: job_alive(rows[i]) for i, job in jobs.items() if job is None}
    ours = {i: job for i, job in jobs.items() if job is not None}
    if options.executor == "local":
        alive.update(
            {i: j._process is not None and j._process.poll() is None for i, j in ours.items()}
        )
    elif ours:
        states = slurm_states([job.job_id for job in ours.values()])
        alive.update({i: states.get(j.job_id, "UNKNOWN") in SLURM_ALIVE for i, j in ours.items()})
    return alive
