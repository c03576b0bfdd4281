"""Running a sweep: plan it against the database, order it by feature cache, run it in workers.

One module per job:

* :mod:`~visprompt.experiments.runner.plan` - :func:`plan_sweep`: which runs
  are done, failed, busy in another sweep, or new (and which of those resume);
* :mod:`~visprompt.experiments.runner.schedule` - :class:`CacheScheduler`: the
  order in which each feature-cache entry is computed once, before its readers;
* :mod:`~visprompt.experiments.runner.pool` - :func:`run_sweep`: N worker
  processes (:mod:`visprompt.experiments.worker`), the database claims, the
  progress line, Ctrl-C and dead workers;
* :mod:`~visprompt.experiments.runner.devices` - ``--gpus``: one worker per
  GPU slot, each with its own ``CUDA_VISIBLE_DEVICES``;
* :mod:`~visprompt.experiments.runner.jobs` - what a submitit job runs and how
  a job's state is known (``--executor slurm|local``);
* :mod:`~visprompt.experiments.runner.cluster` - :func:`submit_sweep` and
  :func:`collect_sweep`: jobs train into run folders, this process ingests
  them into the database;
* :mod:`~visprompt.experiments.runner.progress` - the one live progress line.

``visprompt sweep`` and ``visprompt demo`` both go through :func:`plan_sweep`
and :func:`run_sweep` (or :func:`submit_sweep`).
"""

from visprompt.experiments.runner.cluster import Collected, collect_sweep, submit_sweep
from visprompt.experiments.runner.devices import check_gpus, gpu_slots, parse_gpus
from visprompt.experiments.runner.jobs import ClusterOptions, check_options
from visprompt.experiments.runner.plan import SweepPlan, default_runs_dir, plan_sweep
from visprompt.experiments.runner.pool import (
    INTERRUPT_GRACE,
    WORKER_LOG,
    SweepOutcome,
    default_threads,
    run_sweep,
    worker_context,
)
from visprompt.experiments.runner.schedule import CacheScheduler, feature_keys

__all__ = [
    "INTERRUPT_GRACE",
    "WORKER_LOG",
    "CacheScheduler",
    "ClusterOptions",
    "Collected",
    "SweepOutcome",
    "SweepPlan",
    "check_gpus",
    "check_options",
    "collect_sweep",
    "default_runs_dir",
    "default_threads",
    "feature_keys",
    "gpu_slots",
    "parse_gpus",
    "plan_sweep",
    "run_sweep",
    "submit_sweep",
    "worker_context",
]
