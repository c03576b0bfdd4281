"""Run tracking: a run's epochs also go to TensorBoard and, when asked, to MLflow.

``metrics.jsonl`` stays the run's record; the trackers are views of it for the
tools researchers already use, and nothing in visprompt reads them back.

- TensorBoard (``tracking.tensorboard``, on by default): event files in the run
  folder's ``tensorboard/`` (Dassl's convention), one scalar per epoch metric,
  grouped by :func:`scalar_tag` (``train/loss``, ``test/accuracy``,
  ``purify/precision``, ``lr``, ...). The folder is rewritten from the
  checkpoint's history whenever a run starts or resumes, so after any kill and
  ``--resume`` it holds each epoch exactly once, as ``metrics.jsonl`` does.
- MLflow (``tracking.mlflow: URI``, optional extra ``visprompt[mlflow]``): the
  run's config as params, every epoch's metrics with ``step = epoch``, the run
  folder as artifacts when it finishes (all but ``state.pt``, the optimiser
  state for resuming, which can be far larger than the weights and is no use
  outside visprompt). The MLflow run id is kept in ``mlflow.json``, so a resumed
  run continues the same MLflow run and logs only the epochs it has not logged.

A tracker that fails while the run trains (a tracking server going away) is
dropped with one warning; the run itself never fails because of its logs.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from visprompt.engine import checkpoint as ckpt
from visprompt.engine.run_folder import MLFLOW_FILE, TENSORBOARD_DIR, Log
from visprompt.errors import VispromptError
from visprompt.robust.quality import PURIFY_PREFIX

#: metric-name prefix -> scalar group (TensorBoard shows one panel per group)
_GROUPS = (("train_", "train/"), ("test_", "test/"), ("val_", "val/"), (PURIFY_PREFIX, "purify/"))
#: keys that are bookkeeping, not curves
_SKIPPED = frozenset({"epoch"})
#: run-folder files MLflow does not receive (see the module docstring)
_NOT_ARTIFACTS = frozenset({ckpt.STATE_FILE, MLFLOW_FILE})


def scalar_tag(key: str) -> str:
    """The tracker's name of an epoch metric: ``train_loss`` -> ``train/loss``.

    ``lr`` stays ``lr``, ``seconds`` becomes ``time/epoch_seconds``, and a loss
    part or plan statistic without a known prefix (``ce``, ``kg``) goes to
    ``loss/<key>``.
    """
    if key == "lr":
        return key
    if key == "seconds":
        return "time/epoch_seconds"
    for prefix, group in _GROUPS:
        if key.startswith(prefix):
            return group + key[len(prefix) :]
    return "loss/" + key


def epoch_scalars(metrics: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """``(tag, value)`` of each finite numeric metric of one epoch.

    NaN (a purification side that is empty this epoch) is left out: a gap in
    the curve, not a point at zero.
    """
    for key, value in metrics.items():
        if key in _SKIPPED or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            yield scalar_tag(key), float(value)


class Tracker(Protocol):
    def epoch(self, metrics: dict[str, Any]) -> None: ...

    def finish(self, result: dict[str, Any] | None, status: str) -> None: ...


class TensorBoardTracker:
    """Event files under ``out/tensorboard``, rebuilt from ``history`` at start."""

    def __init__(self, out: Path, history: list[dict]) -> None:
        # imported here: torch.utils.tensorboard loads tensorboard (about a second),
        # which runs that track nothing never pay
        from torch.utils.tensorboard import SummaryWriter

        folder = out / TENSORBOARD_DIR
        shutil.rmtree(folder, ignore_errors=True)
        self.writer = SummaryWriter(log_dir=str(folder))
        for metrics in history:
            self.epoch(metrics)

    def epoch(self, metrics: dict[str, Any]) -> None:
        step = int(metrics["epoch"])
        for tag, value in epoch_scalars(metrics):
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def finish(self, result: dict[str, Any] | None, status: str) -> None:  # noqa: ARG002
        if result is not None:
            step = int(result.get("epochs") or 0)
            for key in ("test_accuracy", "test_macro_accuracy"):
                if isinstance(result.get(key), int | float):
                    self.writer.add_scalar("final/" + key[len("test_") :], result[key], step)
        self.writer.close()


def import_mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise VispromptError(
            "tracking.mlflow is set but MLflow is not installed; run "
            "pip install 'visprompt[mlflow]' or leave out --mlflow"
        ) from None
    return mlflow


def check_tracking(cfg: Any) -> None:
    """Fail before a run starts when its config asks for a tracker that cannot work."""
    if cfg.tracking.mlflow:
        import_mlflow()


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys of a nested config, values as strings (MLflow params are strings)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return out


class MLflowTracker:
    """One MLflow run per visprompt run, through MLflow's client API.

    The client API (not ``mlflow.start_run``) keeps no process-global active
    run, so two runs trained in one process cannot log into each other.
    """

    def __init__(
        self, uri: str, experiment: str, out: Path, config: dict, run_id: str, history: list[dict]
    ) -> None:
        mlflow = import_mlflow()
        from mlflow.entities import Metric, Param

        self._metric = Metric
        self.out = out
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        saved = _read_mlflow_file(out)
        if saved is not None and saved.get("uri") == uri:
            self.run_id = saved["run_id"]
            self.logged = int(saved.get("logged_epochs", 0))
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            found = self.client.get_experiment_by_name(experiment)
            exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
            run = self.client.create_run(exp_id, run_name=run_id, tags={"visprompt.run_id": run_id})
            self.run_id, self.logged = run.info.run_id, 0
            params = [Param(k, v) for k, v in flatten(config).items()]
            for start in range(0, len(params), 100):  # MLflow's batch limit is 100 params
                self.client.log_batch(self.run_id, params=params[start : start + 100])
            self._save()
        for metrics in history:
            self.epoch(metrics)

    def _save(self) -> None:
        record = {"uri": self.client.tracking_uri, "run_id": self.run_id}
        record["logged_epochs"] = self.logged
        ckpt.atomic_write_text(self.out / MLFLOW_FILE, json.dumps(record))

    def epoch(self, metrics: dict[str, Any]) -> None:
        step = int(metrics["epoch"])
        if step <= self.logged:  # logged before an interruption
            return
        now = int(time.time() * 1000)
        batch = [self._metric(tag, v, now, step) for tag, v in epoch_scalars(metrics)]
        self.client.log_batch(self.run_id, metrics=batch)
        self.logged = step
        self._save()

    def finish(self, result: dict[str, Any] | None, status: str) -> None:
        if result is not None:
            now, step = int(time.time() * 1000), int(result.get("epochs") or 0)
            final = [
                self._metric("final/" + key[len("test_") :], float(result[key]), now, step)
                for key in ("test_accuracy", "test_macro_accuracy")
                if isinstance(result.get(key), int | float)
            ]
            self.client.log_batch(self.run_id, metrics=final)
            for path in sorted(self.out.iterdir()):
                if path.name in _NOT_ARTIFACTS:
                    continue
                if path.is_dir():
                    self.client.log_artifacts(self.run_id, str(path), path.name)
                else:
                    self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status=status)


def _read_mlflow_file(out: Path) -> dict | None:
    try:
        return json.loads((out / MLFLOW_FILE).read_text())
    except (OSError, ValueError):
        return None


class RunTrackers:
    """The trackers a run's config asks for, called by :func:`~visprompt.engine.run.train_run`.

    Built after the run folder holds its config (so a bad ``tracking.mlflow``
    fails before any epoch trains, with nothing lost) and given the history
    resumed from the checkpoint.
    """

    def __init__(self, cfg: Any, out: Path, history: list[dict], log: Log) -> None:
        self.log = log
        self.trackers: list[Tracker] = []
        tracking = cfg.tracking
        if tracking.tensorboard:
            self.trackers.append(TensorBoardTracker(out, history))
        if tracking.mlflow:
            self.trackers.append(
                MLflowTracker(
                    tracking.mlflow,
                    tracking.mlflow_experiment,
                    out,
                    cfg.to_dict(),
                    cfg.run_id(),
                    history,
                )
            )

    def _each(self, call: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, call)(*args)
            except Exception as exc:  # a log server going away must not end the run
                self.trackers.remove(tracker)
                self.log(f"warning: {type(tracker).__name__} stopped logging: {exc}")

    def epoch(self, metrics: dict[str, Any]) -> None:
        self._each("epoch", metrics)

    def finish(self, result: dict[str, Any] | None, status: str = "FINISHED") -> None:
        """Close every tracker; ``status`` is MLflow's (FINISHED, FAILED, KILLED)."""
        self._each("finish", result, status)
        self.trackers.clear()
