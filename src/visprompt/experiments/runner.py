"""Running a sweep: plan against the database, then N worker processes, cache-aware order.

:func:`plan_sweep` sorts a sweep's runs by what the database says:

* ``done`` - skipped;
* ``failed`` - skipped, unless ``retry_failed`` (then started over);
* ``running`` and claimed by a sweep process that is still alive on this
  machine - skipped (another sweep is running it);
* anything else (not in the database, ``pending``, ``interrupted``, or
  ``running`` but claimed by a process that is gone, e.g. a sweep killed with
  SIGKILL) - new; a run whose folder holds a checkpoint resumes from it.

:func:`run_sweep` runs the new runs in ``jobs`` worker processes
(:mod:`visprompt.experiments.worker`) with an overall progress bar. Each run
is claimed in the database (atomically) just before it is handed to a worker,
so two sweeps over the same database never run the same run at once.

Feature-cache-aware order: runs that share a backbone, dataset, data root,
shots and data seed read the same cached training features, and runs that
share a backbone and dataset the same test features. The first run of each
such group (its *leader*; trainable methods are preferred, since only they
cache the augmented views) runs before the others of its group, which start
once the leader has finished its first epoch (its features are then on disk)
or has ended. So the image encoder runs once per (dataset, seed), not once per
run, and never twice at the same time for the same images.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from visprompt.config import RunConfig
from visprompt.engine.checkpoint import check_writable
from visprompt.engine.run import CACHE_OPTION, cache_folder
from visprompt.errors import VispromptError
from visprompt.experiments.store import DEFAULT_TIMEOUT, ResultsStore, owner_is_live
from visprompt.experiments.sweep import Sweep, SweepRun

#: Seconds the parent waits for workers to finish their current step after Ctrl-C.
INTERRUPT_GRACE = 20.0
WORKER_LOG = "workers.log"


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
        elif status == "running" and owner_is_live(row, own_pid=own):
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
    from visprompt.engine.run import RESULT_FILE

    return (run_dir / ckpt.STATE_FILE).is_file() or (run_dir / RESULT_FILE).is_file()


# ---------------------------------------------------------------- cache groups


def feature_keys(cfg: RunConfig) -> tuple[str, ...]:
    """Keys of the feature-cache entries a run reads: its training set's and its test set's.

    Runs with equal keys read the same cached features (the keys mirror what
    the cache entries depend on: backbone weights and precision, dataset and
    root, few-shot draw, views, patch tokens). Runs without the cache share
    nothing.
    """
    if not cfg.use_cache:
        return ()
    backbone = cfg.backbone.model_dump(mode="json", exclude={"device"})
    common = {
        "backbone": backbone,
        "precision": cfg.precision,
        "dataset": cfg.data.dataset,
        "root": cfg.data.root,
        "cache_dir": cfg.data.cache_dir,
        "allow_duplicates": cfg.data.allow_duplicates,
        "patches": cfg.method.requirements().patch_tokens,
    }
    train = {
        **common,
        "shots": cfg.data.shots,
        "seed": cfg.data.seed,
        "allow_fewer": cfg.data.allow_fewer,
        "num_views": cfg.data.num_views,
        "protocol": cfg.noise.protocol,
    }
    if cfg.noise.protocol == "balanced":  # the noisy images themselves depend on the noise
        train.update(
            noise_type=cfg.noise.type, noise_rate=cfg.noise.rate, pool_draw=cfg.noise.pool_draw
        )
    return (
        json.dumps(["train", train], sort_keys=True),
        json.dumps(["test", common], sort_keys=True),
    )


def _trainable(cfg: RunConfig) -> bool:
    from visprompt.methods import METHOD_REGISTRY

    return bool(getattr(METHOD_REGISTRY.get(cfg.method.name).cls, "trainable", True))


class CacheScheduler:
    """Orders runs so that each feature-cache entry is computed by one run, before its readers.

    A key is *free* (no run has started with it), *led* (its leader is running
    and may still be computing the features) or *warm* (the leader finished
    an epoch or ended, so the features are on disk). A run may start when none
    of its keys is led by another run.
    """

    def __init__(self, runs: list[SweepRun]) -> None:
        # trainable runs first: only they compute (and so cache) the augmented views
        order = sorted(range(len(runs)), key=lambda i: (not _trainable(runs[i].config), i))
        self.queue: deque[SweepRun] = deque(runs[i] for i in order)
        self.keys = {r.run_id: feature_keys(r.config) for r in runs}
        self.leader: dict[str, str] = {}  # key -> run id of its leader
        self.warm: set[str] = set()

    def __len__(self) -> int:
        return len(self.queue)

    def _blocked(self, run: SweepRun) -> bool:
        return any(k in self.leader and k not in self.warm for k in self.keys[run.run_id])

    def next_run(self, force: bool = False) -> SweepRun | None:
        """The first queued run that may start now (or the first at all with ``force``)."""
        for i, run in enumerate(self.queue):
            if force or not self._blocked(run):
                del self.queue[i]
                for key in self.keys[run.run_id]:
                    self.leader.setdefault(key, run.run_id)
                return run
        return None

    def progressed(self, run_id: str) -> None:
        """The run finished an epoch or ended well: the keys it leads are warm."""
        for key in self.keys.get(run_id, ()):
            if self.leader.get(key) == run_id:
                self.warm.add(key)

    def failed(self, run_id: str) -> None:
        """The run ended badly: keys it led and did not warm are free for a new leader."""
        for key in self.keys.get(run_id, ()):
            if self.leader.get(key) == run_id and key not in self.warm:
                del self.leader[key]


# ---------------------------------------------------------------- workers


def available_cpus() -> int:
    """CPU cores this process may use (respects affinity masks and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def worker_context() -> Any:
    """The multiprocessing context of workers: forkserver with visprompt preloaded, or spawn.

    The forkserver imports torch and visprompt once (per sweep process); each
    worker is then forked from that clean, single-threaded state.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["visprompt.experiments.worker", "visprompt.engine.run"])
    return ctx


class _Worker:
    """One worker process and the pipe to it."""

    def __init__(self, ctx: Any, index: int, db: Path, timeout: float, threads: int, log: Path):
        from visprompt.experiments.worker import worker_main

        self.index = index
        parent_end, child_end = ctx.Pipe()
        self.process = ctx.Process(
            target=worker_main,
            args=(
                child_end,
                str(db),
                timeout,
                threads,
                str(log),
                os.getpid(),
                dict(os.environ),
                os.getcwd(),
            ),
            name=f"visprompt-sweep-worker-{index}",
            daemon=True,
        )
        self.process.start()
        child_end.close()
        self.conn = parent_end
        self.run: SweepRun | None = None
        #: the worker has imported everything and waits for tasks
        self.ready = False

    def send(self, task: dict | None) -> bool:
        try:
            self.conn.send(task)
            return True
        except (BrokenPipeError, OSError):
            return False

    def stop(self, timeout: float = 1.0) -> None:
        """Ask an idle worker to exit; terminate it if it takes longer than ``timeout``.

        Terminating is safe here: an idle worker holds no run and no open transaction.
        """
        if self.process.is_alive():
            self.send(None)
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5.0)
        self.conn.close()


@dataclass
class SweepOutcome:
    """What one :func:`run_sweep` call did."""

    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    interrupted: bool = False
    cache_misses: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{len(self.finished)} finished, {len(self.failed)} failed"
            + (f", {len(self.skipped)} skipped (done or running elsewhere)" if self.skipped else "")
            + f" in {self.seconds:.1f} s"
        )


def run_sweep(
    plan: SweepPlan,
    jobs: int = 1,
    threads: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> SweepOutcome:
    """Run the plan's new runs, ``jobs`` at a time in worker processes.

    Args:
        plan: from :func:`plan_sweep`.
        jobs: worker processes.
        threads: torch threads per worker (default: CPU cores / jobs).
        timeout: database busy timeout (seconds).
        progress: show the overall progress bar.
        echo: where one-line notes go (failures; default stderr, above the bar).

    Returns:
        A :class:`SweepOutcome`; ``interrupted`` is True after Ctrl-C (the runs
        in flight are left ``interrupted`` and resume on the next sweep).

    Raises:
        VispromptError: ``jobs`` < 1 or the database cannot be written.
    """
    if jobs < 1:
        raise VispromptError(f"--jobs must be at least 1, got {jobs}")
    threads = threads or max(1, available_cpus() // jobs)
    started = time.perf_counter()
    outcome = SweepOutcome()
    store = ResultsStore(plan.db, timeout=timeout)
    bar = tqdm(
        total=len(plan.new), desc=plan.sweep.name, unit="run", disable=not progress, leave=True
    )
    say = echo or (lambda text: bar.write(text, file=sys.stderr))
    try:
        store.add_pending(
            (r.run_id, r.config.to_dict(), plan.sweep.name, str(plan.run_dir(r))) for r in plan.new
        )
        plan.runs_dir.mkdir(parents=True, exist_ok=True)
        runner = _Runner(plan, store, jobs, threads, timeout, outcome, bar, say)
        try:
            runner.loop()
        except KeyboardInterrupt:
            outcome.interrupted = True
            runner.interrupt()
        finally:
            runner.shutdown()
            runner.summarise_errors()
    finally:
        bar.close()
        store.close()
        outcome.seconds = time.perf_counter() - started
    return outcome


class _Runner:
    """The parent's event loop: hand runs to idle workers, collect their messages."""

    def __init__(
        self,
        plan: SweepPlan,
        store: ResultsStore,
        jobs: int,
        threads: int,
        timeout: float,
        outcome: SweepOutcome,
        bar: Any,
        say: Callable[[str], None],
    ) -> None:
        self.plan, self.store, self.outcome, self.bar, self.say = plan, store, outcome, bar, say
        self.jobs, self.threads, self.timeout = jobs, threads, timeout
        self.scheduler = CacheScheduler(plan.new)
        self.ctx = worker_context()
        self.workers: list[_Worker] = []
        self.log = plan.runs_dir / WORKER_LOG
        self.started_workers = 0
        #: distinct error -> how many later runs failed with it (not printed again)
        self.errors_shown: dict[str, int] = {}

    # -- dispatch

    def _idle_worker(self) -> _Worker | None:
        for w in [w for w in self.workers if w.run is None and not w.process.is_alive()]:
            self._worker_died(w)  # exited while idle: replaced below
        for w in self.workers:
            if w.ready and w.run is None and w.process.is_alive():
                return w
        if len(self.workers) < self.jobs:
            self._spawn()
        return None

    def _spawn(self) -> _Worker:
        w = _Worker(
            self.ctx, self.started_workers, self.plan.db, self.timeout, self.threads, self.log
        )
        self.started_workers += 1
        self.workers.append(w)
        return w

    def _busy(self) -> list[_Worker]:
        return [w for w in self.workers if w.run is not None]

    def _dispatch(self) -> None:
        while len(self.scheduler):
            worker = self._idle_worker()
            if worker is None:
                return
            run = self.scheduler.next_run(force=not self._busy())
            if run is None:
                return
            config = run.config.to_dict()
            state = self.store.claim(
                run.run_id, config, self.plan.sweep.name, str(self.plan.run_dir(run)), os.getpid()
            )
            if state != "claimed":  # finished or taken by another sweep meanwhile
                self.outcome.skipped.append(run.run_id)
                self.scheduler.progressed(run.run_id)
                self.bar.update(1)
                continue
            task = {
                "run_id": run.run_id,
                "config": config,
                "run_dir": str(self.plan.run_dir(run)),
                "fresh": run.run_id in self.plan.fresh,
            }
            worker.run = run
            if not worker.send(task):
                self._worker_died(worker)
            self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix(running=len(self._busy()), failed=len(self.outcome.failed))

    # -- events

    def loop(self) -> None:
        # start every worker now: their interpreter start-up overlaps the first leader's work
        while len(self.workers) < min(self.jobs, len(self.scheduler)):
            self._spawn()
        while True:
            self._dispatch()
            if not self._busy() and not len(self.scheduler):
                return
            watched = [w for w in self.workers if w.run is not None or not w.ready]
            handles: list[Any] = [w.conn for w in watched] + [w.process.sentinel for w in watched]
            for ready in wait_for(handles, timeout=1.0):
                worker = next(
                    (w for w in watched if ready is w.conn or ready == w.process.sentinel), None
                )
                if worker is None or worker not in self.workers:
                    continue
                if ready is worker.conn:
                    self._receive(worker)
                elif worker.process.exitcode is not None:
                    self._drain(worker)
                    self._worker_died(worker)

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join(2.0)
            self._worker_died(worker)
            return
        self._handle(worker, message)

    def _drain(self, worker: _Worker) -> None:
        try:
            while worker.conn.poll():
                self._handle(worker, worker.conn.recv())
        except (EOFError, OSError):
            pass

    def _handle(self, worker: _Worker, message: tuple) -> None:
        kind, run_id = message[0], message[1]
        if kind == "ready":
            worker.ready = True
            return
        run = worker.run
        if run is None or run.run_id != run_id:
            return
        if kind == "epoch":
            self.scheduler.progressed(run_id)
            return
        worker.run = None
        if kind == "done":
            self.scheduler.progressed(run_id)
            self.outcome.finished.append(run_id)
            self.outcome.cache_misses += int(message[2].get("cache_misses") or 0)
        elif kind == "failed":
            self.scheduler.failed(run_id)
            self._report_failure(run, message[2])
        elif kind == "interrupted":
            self.scheduler.failed(run_id)
            self.outcome.interrupted = True
            return
        self.bar.update(1)
        self._postfix()

    def _worker_died(self, worker: _Worker) -> None:
        """A worker exited (killed, out of memory, crashed), perhaps while running a run."""
        run = worker.run
        worker.run = None
        worker.process.join(1.0)
        code = worker.process.exitcode
        worker.stop(timeout=0.0)
        if worker in self.workers:
            self.workers.remove(worker)
        if not worker.ready and run is None:
            # died before it could take any work: give up rather than respawn forever
            raise VispromptError(
                f"a sweep worker process failed to start (exit code {code}); see {self.log}"
            )
        if run is None:
            return
        error = (
            f"worker process died (exit code {code}) while running this run; see {self.log} "
            "for its output"
        )
        self.store.fail(run.run_id, error)
        self.scheduler.failed(run.run_id)
        self._report_failure(run, error)
        self.bar.update(1)
        self._postfix()

    def _report_failure(self, run: SweepRun, error: str) -> None:
        """Record a failure; print each distinct error once (a missing file fails every run)."""
        self.outcome.failed[run.run_id] = error
        if error in self.errors_shown:
            self.errors_shown[error] += 1
            return
        self.errors_shown[error] = 0
        self.say(f"failed {run.run_id} ({run.describe()}): {error}")

    # -- stopping

    def interrupt(self) -> None:
        """Ctrl-C: let workers record their run as interrupted, then stop them."""
        start = time.monotonic()
        signalled = False
        while self._busy() and time.monotonic() - start < INTERRUPT_GRACE:
            busy = self._busy()
            if not signalled and time.monotonic() - start > 2.0:
                for w in busy:  # in case the Ctrl-C did not reach them (another process group)
                    if w.process.is_alive() and w.process.pid:
                        os.kill(w.process.pid, signal.SIGINT)
                signalled = True
            try:
                ready = wait_for([w.conn for w in busy], timeout=0.5)
            except KeyboardInterrupt:
                return
            for w in busy:
                if w.conn in ready:
                    try:
                        self._handle(w, w.conn.recv())
                    except (EOFError, OSError):
                        w.run = None
                elif not w.process.is_alive():
                    w.run = None

    def summarise_errors(self) -> None:
        repeated = sum(self.errors_shown.values())
        if repeated:
            self.say(f"{repeated} more runs failed with an error shown above")

    def shutdown(self) -> None:
        for w in self.workers:  # ask all first, so they exit in parallel
            if w.process.is_alive():
                w.send(None)
        for w in self.workers:
            w.stop()
        self.workers.clear()
