"""Sweep runs as submitit jobs (SLURM, or submitit's local executor): submit, watch, settle.

One job trains one run into its run folder on a shared filesystem and never
opens the results database (SQLite over NFS is not safe); what it leaves in
the folder says how it ended:

* ``result.json`` (written last by :func:`~visprompt.engine.run.train_run`) -
  finished: the folder is ingested into the database;
* :data:`JOB_ERROR` - the run itself failed (bad data, a bug): the run is
  ``failed`` with that one-line error (rerun with ``--retry-failed``);
* neither, and the job is no longer alive - it was killed, pre-empted for
  good, cancelled or ran out of time: the run is ``interrupted`` and the next
  sweep resubmits it, resuming from its last checkpoint.

Both failures keep the tail of the job's stderr (``submitit/<job id>/``) in the
database. :data:`JOB_INFO` records where the job ran (job id, host, pid,
``CUDA_VISIBLE_DEVICES``) as soon as it starts.

SLURM pre-emption and time-outs: submitit catches the signal SLURM sends
before it kills a job and requeues the job (:class:`RunJob` is
checkpointable); the requeued job starts the same run again, which resumes
from the ``state.pt`` of its last finished epoch, so at most one epoch is
lost. The job keeps its id, so the database still sees it running.

A job's state is known without the process that submitted it: local jobs by
their controller's pid on this host, SLURM jobs through ``sacct`` (submitit's
watcher). :func:`job_alive` is what the planner and the claims use.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visprompt.errors import VispromptError

EXECUTORS = ("local", "slurm")
#: Folder of submitit's pickles and job logs, inside the runs folder.
SUBMITIT_DIR = "submitit"
#: Written into the run folder by a job whose run raised: ``{"error": one line}``.
JOB_ERROR = "job-error.json"
#: Written into the run folder when a job starts: where and as which job it runs.
JOB_INFO = "job.json"
#: SLURM states of a job that has not ended (``sacct``; submitit's UNKNOWN counts as alive).
SLURM_ALIVE = (
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "CONFIGURING",
    "COMPLETING",
    "STAGE_OUT",
    "SIGNALING",
    "UNKNOWN",
)


@dataclass
class ClusterOptions:
    """How runs are submitted: ``executor`` and the SLURM resources of one run.

    Attributes:
        executor: ``slurm`` (``sbatch`` job arrays) or ``local`` (submitit's
            local executor: subprocesses on this machine; tests, smoke runs).
        partition: SLURM partition (None: the cluster's default).
        gpus_per_run: GPUs of one job (``--gpus-per-node``).
        time_min: wall-clock limit of one job, minutes; a job that reaches it
            is requeued and resumes (at most ``max_timeouts`` times).
        array_parallelism: jobs running at once (SLURM's ``%N``; the local
            executor keeps to it itself).
        cpus_per_run: CPUs of one job (also its torch threads).
        extra: more ``sbatch`` options (e.g. ``{"account": "abc"}``).
        poll_seconds: how often the submitting process looks at its jobs.
    """

    executor: str = "slurm"
    partition: str | None = None
    gpus_per_run: int = 1
    time_min: int = 120
    array_parallelism: int = 32
    cpus_per_run: int | None = None
    extra: dict[str, str] = field(default_factory=dict)
    poll_seconds: float = 15.0
    max_timeouts: int = 3


def check_options(options: ClusterOptions) -> None:
    """One-line errors for options that cannot work, before anything is submitted."""
    if options.executor not in EXECUTORS:
        raise VispromptError(
            f"unknown --executor {options.executor!r}; choose one of: {', '.join(EXECUTORS)}"
        )
    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
    if options.executor == "slurm" and missing:
        raise VispromptError(
            f"--executor slurm needs SLURM's {missing[0]}, which is not on PATH; run on a "
            "SLURM login node (or load its module), or use --executor local / --jobs N here"
        )
    for name, value, least in (
        ("--slurm-gpus-per-run", options.gpus_per_run, 0),
        ("--slurm-time", options.time_min, 1),
        ("--slurm-array-parallelism", options.array_parallelism, 1),
    ):
        if value < least:
            raise VispromptError(f"{name} must be at least {least}, got {value}")


def job_folder(runs_dir: Path) -> Path:
    """submitit's folder pattern: one subfolder per job id under the runs folder."""
    return Path(runs_dir) / SUBMITIT_DIR / "%j"


def make_executor(options: ClusterOptions, runs_dir: Path, name: str) -> Any:
    """A submitit executor whose jobs log into ``<runs_dir>/submitit/<job id>/``."""
    import submitit

    folder = job_folder(runs_dir)
    if options.executor == "local":
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=options.max_timeouts)
        executor.update_parameters(timeout_min=options.time_min, gpus_per_node=options.gpus_per_run)
        return executor
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=options.max_timeouts)
    params: dict[str, Any] = {
        "job_name": f"visprompt-{name}",
        "time": options.time_min,
        "gpus_per_node": options.gpus_per_run,
        "array_parallelism": options.array_parallelism,
        "signal_delay_s": 120,  # time to finish the epoch's checkpoint before the kill
    }
    if options.partition:
        params["partition"] = options.partition
    if options.cpus_per_run:
        params["cpus_per_task"] = options.cpus_per_run
    if options.extra:
        params["additional_parameters"] = dict(options.extra)
    executor.update_parameters(**params)
    return executor


# ---------------------------------------------------------------- in the job


def _checkpointable() -> type:
    try:
        from submitit.helpers import Checkpointable
    except ImportError:  # pragma: no cover - submitit is a dependency
        return object
    return Checkpointable


class RunJob(_checkpointable()):  # type: ignore[misc]
    """The callable a job runs: train one run into its folder (see :func:`run_job`).

    Checkpointable: on pre-emption or time-out submitit calls its default
    ``checkpoint`` (the same call again) and requeues the job, which resumes
    from the run folder's checkpoint.
    """

    def __call__(self, task: dict) -> dict:
        return run_job(task)


def run_job(task: dict) -> dict:
    """Train one task (``run_id``, ``config``, ``run_dir``, ``fresh``, ``cwd``, ``threads``).

    Returns the run's summary (``test_accuracy``, ...). A run that raises
    leaves :data:`JOB_ERROR` in its folder and re-raises (the job fails).
    """
    from visprompt.experiments.worker import RUN_LOG, error_line, start_mode

    with contextlib.suppress(OSError):  # relative paths as on the submitting host, if shared
        os.chdir(task["cwd"])
    run_dir = Path(task["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "job_id": os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID"),
        "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "started_at": time.time(),
    }
    from visprompt.fileio import atomic_write_text

    atomic_write_text(run_dir / JOB_INFO, json.dumps(info, sort_keys=True))
    mode = start_mode(run_dir, task["config"], bool(task.get("fresh")))
    with (run_dir / RUN_LOG).open("w" if mode == "fresh" else "a") as log_file:

        def log(message: str) -> None:
            line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
            log_file.write(line + "\n")
            log_file.flush()
            print(line, flush=True)  # the job's stdout log too

        log(f"job {info['job_id']} on {info['host']}: run {task['run_id']} ({mode})")
        try:
            result = _train(task, run_dir, mode, log)
        except Exception as exc:
            error = error_line(exc)
            log_file.write(traceback.format_exc())
            atomic_write_text(run_dir / JOB_ERROR, json.dumps({"error": error}))
            raise
    return {"run_id": task["run_id"], "test_accuracy": result.get("test_accuracy")}


def _train(task: dict, run_dir: Path, mode: str, log: Any) -> dict:
    from visprompt.config import validate_run_config
    from visprompt.engine.run import train_run
    from visprompt.engine.run_folder import RESULT_FILE

    if mode == "import":
        return json.loads((run_dir / RESULT_FILE).read_text())
    if task.get("threads"):
        import torch

        torch.set_num_threads(int(task["threads"]))
    cfg = validate_run_config(task["config"])
    if cfg.run_id() != task["run_id"]:
        raise RuntimeError(f"config of run {task['run_id']} resolves to id {cfg.run_id()}")
    resume = mode == "resume"
    return train_run(cfg, run_dir, resume=resume, overwrite=not resume, progress=False, log=log)


# ---------------------------------------------------------------- job states


def _local_alive(row: Any) -> bool:
    """A local job runs while its controller process (pid = job id) lives, on its host."""
    from visprompt.experiments.store import hostname, pid_alive

    if row["host"] != hostname():
        return False
    try:
        pid = int(row["job_id"])
    except (TypeError, ValueError):
        return False
    if not pid_alive(pid):
        return False
    try:  # an exited child not yet reaped by its parent is a zombie, not alive
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """``job id -> sacct state`` in one ``sacct`` call (submitit's shared watcher)."""
    from submitit.slurm.slurm import SlurmJob

    watcher = SlurmJob.watcher
    for job_id in job_ids:
        watcher.register_job(str(job_id))
    watcher.update()
    return {j: str(watcher.get_state(str(j), mode="cache")).split()[0] for j in job_ids}


def job_alive(row: Any) -> bool:
    """Whether the submitit job of a ``running`` row (``executor``, ``job_id``, ``host``) lives."""
    executor = row["executor"]
    if executor == "local":
        return _local_alive(row)
    if executor == "slurm":
        if shutil.which("sacct") is None:
            return True  # cannot tell from here: never run a run twice
        return slurm_states([row["job_id"]]).get(row["job_id"], "UNKNOWN") in SLURM_ALIVE
    return False


def job_stderr(runs_dir: Path, job_id: str) -> Path:
    """The stderr log submitit keeps for a job (task 0)."""
    from submitit.core.utils import JobPaths

    return JobPaths(job_folder(runs_dir), job_id=str(job_id), task_id=0).stderr
