"""Planning a sweep: what the results database says about each of its runs.

:func:`plan_sweep` sorts a sweep's runs by their row in the database:

* ``done`` - skipped;
* ``failed`` - skipped, unless ``retry_failed`` (then started over);
* ``running`` and claimed by a sweep process that is still alive on this
  machine, or by a submitit job that is still alive (queued or running on the
  cluster) - skipped (another sweep is running it);
* anything else (not in the database, ``pending``, ``interrupted``, or
  ``running`` but claimed by a process that is gone, e.g. a sweep killed with
  SIGKILL) - new; a run whose folder holds a checkpoint resumes from it.

Nothing is written: the plan is what a ``--dry-run`` prints and what
:func:`~visprompt.experiments.runner.pool.run_sweep` executes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from visprompt.errors import VispromptError
from visprompt.experiments.runner.jobs import job_alive
from visprompt.experiments.store import DEFAULT_TIMEOUT, ResultsStore, owner_is_live
from visprompt.experiments.sweep import Sweep, SweepRun


def default_runs_dir(db_path: str | Path) -> Path:
    """``<db folder>/<db stem>-runs``: where run folders go unless ``--runs-dir`` says."""
    db = Path(db_path).expanduser()
    return db.parent / f"{db.stem}-runs"


@dataclass
class SweepPlan:
    """What a sweep will do against one database.

    Attributes:
        new: runs to run now (not in the database, pending, interrupted,
            stale, or failed with ``retry_failed``).
        done: runs already complete.
        failed: failed runs that are skipped (without ``retry_failed``).
        busy: runs another live sweep is running.
        fresh: ids of new runs that must start over (retried failures).
        resumable: ids of new runs whose folder holds a checkpoint or result.
    """

    sweep: Sweep
    db: Path
    runs_dir: Path
    new: list[SweepRun] = field(default_factory=list)
    done: list[SweepRun] = field(default_factory=list)
    failed: list[SweepRun] = field(default_factory=list)
    busy: list[SweepRun] = field(default_factory=list)
    fresh: set[str] = field(default_factory=set)
    resumable: set[str] = field(default_factory=set)

    def run_dir(self, run: SweepRun) -> Path:
        return self.runs_dir / run.run_id

    def summary(self) -> str:
        n = len(self.sweep.runs)
        text = (
            f"sweep {self.sweep.name}: {n} run{'s' if n != 1 else ''} - {len(self.new)} new, "
            f"{len(self.done)} done, {len(self.failed)} failed"
        )
        notes = []
        if self.resumable:
            notes.append(f"{len(self.resumable)} of the new continue from their run folder")
        if self.fresh:
            notes.append(f"{len(self.fresh)} failed to retry")
        if self.failed:
            notes.append("failed runs are skipped; --retry-failed reruns them")
        if self.busy:
            notes.append(f"{len(self.busy)} running in another sweep, skipped")
        if self.sweep.duplicates:
            notes.append(f"{self.sweep.duplicates} duplicate grid points counted once")
        return text + (f" ({'; '.join(notes)})" if notes else "")


def plan_sweep(
    sweep: Sweep,
    db_path: str | Path,
    runs_dir: str | Path | None = None,
    retry_failed: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> SweepPlan:
    """Classify a sweep's runs against the database (which need not exist yet; nothing is written).

    Raises:
        VispromptError: the database's folder is missing or the database is unusable.
    """
    # the engine (torch, open_clip) is imported here: importing the runner stays cheap
    from visprompt.engine.checkpoint import check_writable
    from visprompt.engine.run_folder import CACHE_OPTION, cache_folder

    db = Path(db_path).expanduser().absolute()  # workers and run rows get absolute paths
    if not db.parent.is_dir():
        raise VispromptError(
            f"folder {db.parent} of the results database does not exist; create it or give "
            "another --db"
        )
    plan = SweepPlan(
        sweep=sweep,
        db=db,
        runs_dir=Path(runs_dir).expanduser().absolute() if runs_dir else default_runs_dir(db),
    )
    # Every place the sweep will write, checked before any row or folder is written.
    check_writable(db, "--db")
    check_writable(plan.runs_dir, "--runs-dir", "folder")
    for cache in sorted({cache_folder(r.config) for r in sweep.runs if r.config.use_cache}):
        check_writable(cache, CACHE_OPTION, "folder")
    rows: dict[str, dict] = {}
    if db.is_file() and db.stat().st_size > 0:
        with ResultsStore(db, timeout=timeout, create=False) as store:
            rows = store.statuses(r.run_id for r in sweep.runs)
    own = os.getpid()
    for run in sweep.runs:
        row = rows.get(run.run_id)
        status = row["status"] if row else None
        if status == "done":
            plan.done.append(run)
        elif status == "failed" and not retry_failed:
            plan.failed.append(run)
        elif status == "running" and owner_is_live(row, own_pid=own, job_alive=job_alive):
            plan.busy.append(run)
        else:
            plan.new.append(run)
            if status == "failed":
                plan.fresh.add(run.run_id)
            elif _has_progress(plan.run_dir(run)):
                plan.resumable.add(run.run_id)
    return plan


def _has_progress(run_dir: Path) -> bool:
    from visprompt.engine import checkpoint as ckpt
    from visprompt.engine.run_folder import RESULT_FILE

    return (run_dir / ckpt.STATE_FILE).is_file() or (run_dir / RESULT_FILE).is_file()
