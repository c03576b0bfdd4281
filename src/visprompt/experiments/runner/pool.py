"""Running a planned sweep: N worker processes, fed in cache-aware order, into the database.

:func:`run_sweep` runs a plan's new runs in ``jobs`` worker processes
(:mod:`visprompt.experiments.worker`) with an overall progress bar. Each run
is claimed in the database (atomically) just before it is handed to a worker,
so two sweeps over the same database never run the same run at once. The
order comes from :class:`~visprompt.experiments.runner.schedule.CacheScheduler`.

With ``gpus`` each worker is bound to one GPU slot (see
:mod:`~visprompt.experiments.runner.devices`): its ``CUDA_VISIBLE_DEVICES`` is
the slot's GPU id, a worker that dies is replaced on the same slot, and a slot
takes its next run as soon as its run ends.

Workers are the only way runs execute here, one run at a time each; with
``jobs=1`` a worker uses as many torch threads as this process would (see
:func:`default_threads`), so a run gives the same numbers in a sweep as with
``visprompt train`` on the same machine.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from visprompt.errors import VispromptError
from visprompt.experiments.runner.devices import gpu_slots, slot_order
from visprompt.experiments.runner.jobs import job_alive
from visprompt.experiments.runner.plan import SweepPlan
from visprompt.experiments.runner.progress import SweepProgress
from visprompt.experiments.runner.schedule import CacheScheduler
from visprompt.experiments.store import DEFAULT_TIMEOUT, ResultsStore, read_tail
from visprompt.experiments.sweep import SweepRun

#: Seconds the parent waits for workers to finish their current step after Ctrl-C.
INTERRUPT_GRACE = 20.0
WORKER_LOG = "workers.log"


def default_threads(jobs: int) -> int:
    """Torch threads per worker when ``--threads`` is not given: this process's share.

    ``torch.get_num_threads()`` here is what a run in this process (``visprompt
    train``) uses: torch's default (physical cores in this process's affinity
    mask) or what ``OMP_NUM_THREADS`` says. Each of ``jobs`` workers gets an equal
    part of it, so with one job a worker runs its run with exactly the thread
    count of an in-process run; a different count changes the last bits of float
    sums, and so the printed numbers.
    """
    import torch

    return max(1, torch.get_num_threads() // jobs)


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

    def __init__(
        self,
        ctx: Any,
        index: int,
        db: Path,
        timeout: float,
        threads: int,
        log: Path,
        slot: int | None = None,
        visible_gpus: str | None = None,
    ):
        from visprompt.experiments.worker import worker_main

        self.index = index
        #: the GPU slot this worker holds (None without --gpus)
        self.slot = slot
        environ = dict(os.environ)
        if visible_gpus is not None:
            # read by CUDA when the worker first touches it; the forkserver never does
            environ["CUDA_VISIBLE_DEVICES"] = visible_gpus
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
                environ,
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
    #: runs whose submitit job ended before they finished (resubmitted by the next sweep)
    lost: list[str] = field(default_factory=list)
    interrupted: bool = False
    cache_misses: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{len(self.finished)} finished, {len(self.failed)} failed"
            + (f", {len(self.lost)} interrupted (job ended early)" if self.lost else "")
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
    on_done: Callable[[SweepRun, dict], None] | None = None,
    gpus: Sequence[int] | None = None,
    runs_per_gpu: int = 1,
) -> SweepOutcome:
    """Run the plan's new runs, ``jobs`` at a time in worker processes.

    Args:
        plan: from :func:`plan_sweep`.
        jobs: worker processes (ignored with ``gpus``: one per slot).
        gpus: GPU ids (checked by the caller, see
            :func:`~visprompt.experiments.runner.devices.check_gpus`); each of
            the ``len(gpus) * runs_per_gpu`` workers sees one through
            ``CUDA_VISIBLE_DEVICES``.
        runs_per_gpu: runs at a time on each GPU.
        threads: torch threads per worker (default: :func:`default_threads`).
        timeout: database busy timeout (seconds).
        progress: show the overall progress bar.
        echo: where one-line notes go (failures; default stderr, above the bar).
        on_done: called in this process as each run finishes, with the run and
            the worker's summary (``test_accuracy``, ``cache_misses``); what it
            prints to stdout appears above the progress bar.

    Returns:
        A :class:`SweepOutcome`; ``interrupted`` is True after Ctrl-C (the runs
        in flight are left ``interrupted`` and resume on the next sweep).

    Raises:
        VispromptError: ``jobs`` < 1 or the database cannot be written.
    """
    slots = gpu_slots(gpus, runs_per_gpu) if gpus else None
    if slots:
        jobs = len(slots)
    if jobs < 1:
        raise VispromptError(f"--jobs must be at least 1, got {jobs}")
    threads = threads or default_threads(jobs)
    started = time.perf_counter()
    outcome = SweepOutcome()
    store = ResultsStore(plan.db, timeout=timeout)
    bar = SweepProgress(plan.sweep.name, len(plan.new), enabled=progress, parallel=jobs)
    say = echo or bar.write
    try:
        store.add_pending(
            (r.run_id, r.config.to_dict(), plan.sweep.name, str(plan.run_dir(r))) for r in plan.new
        )
        plan.runs_dir.mkdir(parents=True, exist_ok=True)
        runner = _Runner(plan, store, jobs, threads, timeout, outcome, bar, say, on_done, slots)
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
        on_done: Callable[[SweepRun, dict], None] | None = None,
        slots: list[str] | None = None,
    ) -> None:
        self.plan, self.store, self.outcome, self.bar, self.say = plan, store, outcome, bar, say
        self.slots = slots
        self.on_done = on_done
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
        slot = None
        if self.slots:
            taken = {w.slot for w in self.workers}
            slot = next(i for i in slot_order(self.slots) if i not in taken)
        w = _Worker(
            self.ctx,
            self.started_workers,
            self.plan.db,
            self.timeout,
            self.threads,
            self.log,
            slot=slot,
            visible_gpus=None if slot is None else self.slots[slot],
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
                run.run_id,
                config,
                self.plan.sweep.name,
                str(self.plan.run_dir(run)),
                os.getpid(),
                job_alive=job_alive,
            )
            if state != "claimed":  # finished or taken by another sweep meanwhile
                self.outcome.skipped.append(run.run_id)
                self.scheduler.progressed(run.run_id)
                self.bar.end(run.run_id, ok=True, skipped=True)
                continue
            task = {
                "run_id": run.run_id,
                "config": config,
                "run_dir": str(self.plan.run_dir(run)),
                "fresh": run.run_id in self.plan.fresh,
            }
            worker.run = run
            self.bar.start(run.run_id)
            if not worker.send(task):
                self._worker_died(worker)

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
            if self.on_done is not None:
                with tqdm.external_write_mode():
                    self.on_done(run, message[2])
        elif kind == "failed":
            self.scheduler.failed(run_id)
            self._report_failure(run, message[2])
        elif kind == "interrupted":
            self.scheduler.failed(run_id)
            self.outcome.interrupted = True
            self.bar.stop(run_id)
            return
        self.bar.end(run_id, ok=kind == "done")

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
        from visprompt.experiments.worker import RUN_LOG

        self.store.fail(run.run_id, error, log_tail=read_tail(self.plan.run_dir(run) / RUN_LOG))
        self.scheduler.failed(run.run_id)
        self._report_failure(run, error)
        self.bar.end(run.run_id, ok=False)

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
