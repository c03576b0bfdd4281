"""Experiments: sweeps over run configs, the SQLite results store, reports, label-issue export.

Modules (imported on demand; this package imports nothing heavy):

* :mod:`~visprompt.experiments.sweep` - sweep files: parsing, grid expansion, validation;
* :mod:`~visprompt.experiments.runner` - planning a sweep against the database and
  running it in worker processes (:mod:`~visprompt.experiments.worker`);
* :mod:`~visprompt.experiments.store` - the results database;
* :mod:`~visprompt.experiments.report` - tables, plots and the index page;
* :mod:`~visprompt.experiments.commands` - the ``sweep``, ``runs`` and ``report`` commands.
"""
