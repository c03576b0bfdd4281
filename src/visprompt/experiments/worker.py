"""A sweep worker process: runs the runs its parent sends, one at a time, into the database.

The parent (:mod:`visprompt.experiments.runner`) starts N workers with the
multiprocessing ``forkserver`` method (``spawn`` where there is none): a clean
server process imports torch and visprompt once and forks each worker from
that state, so workers start in milliseconds and never inherit the parent's
threads. The parent talks to each worker over a pipe:

* parent -> worker: a task dict (``run_id``, ``config``, ``run_dir``,
  ``fresh``) or ``None`` to stop;
* worker -> parent: ``("ready", pid)`` once its imports are done (tasks are
  only sent to ready workers); then per run ``("epoch", run_id, epoch)``
  after every epoch, then
  ``("done", run_id, info)``, ``("failed", run_id, error)`` or
  ``("interrupted", run_id, message)``.

Each run is trained with :func:`~visprompt.engine.run.train_run` into its own
folder. How it starts depends on that folder:

* ``result.json`` present (the run finished but its process died before the
  database heard of it): the result is imported, nothing is trained;
* ``state.pt`` present (an interrupted run): it resumes from that checkpoint,
  which gives exactly the result an uninterrupted run gives;
* otherwise it starts over (also a retried failure, as ``--retry-failed``
  asks, even when a checkpoint is there).

Every finished epoch is written to the database at once; when the run ends its
epoch rows are replaced by the run folder's ``metrics.jsonl`` and its status,
final metrics and feature-cache counts are written in one transaction.

The worker's stdout and stderr go to a log file; each run's messages (and the
traceback of an unexpected error) also go to ``train.log`` in its folder. A
watchdog thread ends the worker when its parent disappears (e.g. killed with
SIGKILL; the forkserver then exits too), so no orphan keeps computing.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from visprompt.experiments.store import read_tail

#: Exit status of a worker that noticed its parent is gone.
EXIT_ORPHANED = 70
RUN_LOG = "train.log"


def worker_main(
    conn: Any,
    db_path: str,
    db_timeout: float,
    threads: int,
    log_path: str,
    sweep_pid: int,
    environ: dict[str, str],
    cwd: str,
) -> None:
    """Entry point of a worker process (target of ``multiprocessing.Process``).

    ``environ`` and ``cwd`` are the sweep process's: a forkserver child would
    otherwise see those of the moment the forkserver started.
    """
    _redirect_output(log_path)
    threading.Thread(target=_watch_parent, args=(os.getppid(), sweep_pid), daemon=True).start()
    # tqdm guards its bars with a multiprocessing lock, a named semaphore that the
    # sweep's resource tracker records; a worker killed by SIGKILL never unregisters
    # it, and the sweep then ends with a "leaked semaphore" warning although nothing
    # leaked that matters. A worker runs one run at a time into its own log file, so
    # a thread lock is all its bars need, and it leaves nothing behind.
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environ)
    import torch

    torch.set_num_threads(threads)
    from visprompt.experiments.store import ResultsStore

    store = None
    try:
        store = ResultsStore(db_path, timeout=db_timeout)
        import visprompt.engine.run  # noqa: F401 - pay the import before saying ready

        conn.send(("ready", os.getpid()))
        while True:
            try:
                task = conn.recv()
            except (EOFError, OSError):
                return
            if task is None:
                return
            message = execute(task, store, conn)
            _send(conn, message)
            if message[0] == "interrupted":
                return
    except KeyboardInterrupt:
        return
    finally:
        if store is not None:
            store.close()


def _redirect_output(log_path: str) -> None:
    """Point fds 1 and 2 at the log file (so library prints never reach the terminal)."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _send(conn: Any, message: tuple) -> None:
    """Send to the parent; if it is gone, exit at once.

    The run stays ``running`` in the database with its last checkpoint, so the
    next sweep resumes it; recording it as failed would be wrong.
    """
    try:
        conn.send(message)
    except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
        os._exit(EXIT_ORPHANED)


def _watch_parent(parent_pid: int, sweep_pid: int) -> None:
    """Exit at once when the parent (the sweep, or the forkserver it started) is gone."""
    from visprompt.experiments.store import pid_alive

    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid or not pid_alive(sweep_pid):
            os._exit(EXIT_ORPHANED)


def start_mode(run_dir: Path, config: dict, fresh: bool) -> str:
    """``"import"``, ``"resume"`` or ``"fresh"``: how a run starts from what its folder holds.

    ``fresh`` (a retried failure) never resumes from a checkpoint, but a folder
    whose run finished (result.json) is imported all the same: only recording
    that result can have failed.
    """
    from visprompt.config import diff_configs, identity_dict
    from visprompt.engine import checkpoint as ckpt
    from visprompt.engine.run_folder import CONFIG_FILE, RESULT_FILE

    if not (run_dir / CONFIG_FILE).is_file():
        return "fresh"
    import yaml

    try:
        saved = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return "fresh"
    if not isinstance(saved, dict) or diff_configs(identity_dict(saved), identity_dict(config)):
        return "fresh"
    if (run_dir / RESULT_FILE).is_file():
        return "import"
    if not fresh and (run_dir / ckpt.STATE_FILE).is_file():
        return "resume"
    return "fresh"


def execute(task: dict, store: Any, conn: Any = None) -> tuple[str, str, Any]:
    """Run one task to completion; returns the message for the parent."""
    from visprompt.config import validate_run_config
    from visprompt.engine.run import train_run
    from visprompt.engine.run_folder import RESULT_FILE, read_metrics
    from visprompt.errors import VispromptError

    run_id = task["run_id"]
    run_dir = Path(task["run_dir"])
    log_file = None
    try:
        mode = start_mode(run_dir, task["config"], bool(task.get("fresh")))
        run_dir.mkdir(parents=True, exist_ok=True)
        log_file = (run_dir / RUN_LOG).open("w" if mode == "fresh" else "a")

        def log(message: str) -> None:
            log_file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
            log_file.flush()

        log(f"worker {os.getpid()}: run {run_id} ({mode})")
        cfg = validate_run_config(task["config"])
        if cfg.run_id() != run_id:
            raise RuntimeError(f"config of run {run_id} resolves to id {cfg.run_id()}")
        if mode == "import":
            result = json.loads((run_dir / RESULT_FILE).read_text())
            store.mark_started(run_id, os.getpid(), resumed=True, epochs=read_metrics(run_dir))
            store.finish(run_id, result, read_metrics(run_dir), *_counts(result))
            return "done", run_id, _info(result, None)
        resume = mode == "resume"
        store.mark_started(
            run_id, os.getpid(), resumed=resume, epochs=read_metrics(run_dir) if resume else ()
        )

        def on_epoch(metrics: dict) -> None:
            store.record_epoch(run_id, metrics)
            if conn is not None:
                _send(conn, ("epoch", run_id, int(metrics["epoch"])))

        result = train_run(
            cfg,
            run_dir,
            resume=resume,
            overwrite=not resume,
            progress=False,
            log=log,
            on_epoch=on_epoch,
        )
        counts = result["feature_cache"]  # this process's cache misses and hits
        store.finish(run_id, result, read_metrics(run_dir), counts["misses"], counts["hits"])
        log(f"recorded in {store.path}")
        return "done", run_id, _info(result, counts)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
        message = "interrupted (Ctrl-C); the next sweep resumes it from its last checkpoint"
        _record_failure(store, run_id, message, "interrupted")
        return "interrupted", run_id, message
    except VispromptError as exc:
        error = str(exc)
    except Exception as exc:  # any failure of one run is recorded; the sweep goes on
        error = error_line(exc)
        if log_file is not None:
            log_file.write(traceback.format_exc())
        traceback.print_exc()  # into the worker log
    finally:
        if log_file is not None:
            log_file.close()
    _record_failure(store, run_id, error, "failed", read_tail(run_dir / RUN_LOG))
    return "failed", run_id, error


def error_line(exc: BaseException) -> str:
    """One line for a run's failure: a VispromptError's message, else ``Type: first line``."""
    from visprompt.errors import VispromptError

    if isinstance(exc, VispromptError):
        return str(exc)
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _record_failure(
    store: Any, run_id: str, error: str, status: str, log_tail: str | None = None
) -> None:
    try:
        store.fail(run_id, error, status=status, log_tail=log_tail)
    except Exception:  # the database itself may be the problem; the parent records it then
        traceback.print_exc()


def _counts(result: dict) -> tuple[int | None, int | None]:
    """``(misses, hits)`` of the feature cache, as result.json recorded them."""
    counts = result.get("feature_cache") or {}
    return counts.get("misses"), counts.get("hits")


def _info(result: dict, counts: dict | None) -> dict:
    return {
        "test_accuracy": result.get("test_accuracy"),
        "cache_misses": None if counts is None else counts["misses"],
    }
