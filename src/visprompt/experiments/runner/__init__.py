"""Running a sweep: plan it against the database, order it by feature cache, run it in workers.

One module per job:

* :mod:`~visprompt.experiments.runner.plan` - :func:`plan_sweep`: which runs
  are done, failed, busy in another sweep, or new (and which of those resume);
* :mod:`~visprompt.experiments.runner.schedule` - :class:`CacheScheduler`: the
  order in which each feature-cache entry is computed once, before its readers;
* :mod:`~visprompt.experiments.runner.pool` - :func:`run_sweep`: N worker
  processes (:mod:`visprompt.experiments.worker`), the database claims, the
  progress bar, Ctrl-C and dead workers.

``visprompt sweep`` and ``visprompt demo`` both go through :func:`plan_sweep`
and :func:`run_sweep`.
"""

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
    "SweepOutcome",
    "SweepPlan",
    "default_runs_dir",
    "default_threads",
    "feature_keys",
    "plan_sweep",
    "run_sweep",
    "worker_context",
]
