"""Run tracking: TensorBoard event files and MLflow, read back with their own readers."""

from __future__ import annotations

import sys

import pytest
from vp_testing import run_overrides

from visprompt.cli import main
from visprompt.config import load_run_config
from visprompt.engine.run import train_run
from visprompt.engine.run_folder import read_metrics
from visprompt.engine.tracking import scalar_tag

QUIET = {"progress": False, "log": lambda message: None}


class Stop(Exception):
    pass


def stop_after(epoch: int):
    def on_epoch(metrics: dict) -> None:
        if metrics["epoch"] == epoch:
            raise Stop

    return on_epoch


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files under ``folder``, by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tags_group_metrics_by_kind():
    assert scalar_tag("train_loss") == "train/loss"
    assert scalar_tag("test_accuracy") == "test/accuracy"
    assert scalar_tag("purify_precision") == "purify/precision"
    assert scalar_tag("lr") == "lr"
    assert scalar_tag("ce") == "loss/ce"


def test_tensorboard_holds_each_epoch_once_after_a_kill_and_resume(colour_dataset, tmp_path):
    over = run_overrides(
        colour_dataset,
        "nlprompt",
        **{"optim.epochs": 3, "noise.type": "sym", "noise.rate": 0.5, "eval.every": 1},
    )
    out = tmp_path / "run"
    with pytest.raises(Stop):
        train_run(load_run_config(None, over), out, on_epoch=stop_after(2), **QUIET)
    train_run(load_run_config(None, over), out, resume=True, **QUIET)
    scalars = read_scalars(out / "tensorboard")
    metrics = read_metrics(out)
    for key, tag in (
        ("train_loss", "train/loss"),
        ("lr", "lr"),
        ("test_accuracy", "test/accuracy"),
        ("purify_clean_fraction", "purify/clean_fraction"),
        ("purify_precision", "purify/precision"),
        ("purify_recall", "purify/recall"),
    ):
        assert [s for s, _ in scalars[tag]] == [1, 2, 3], tag
        want = [m[key] for m in metrics]
        got = [v for _, v in scalars[tag]]
        # event files store float32
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-6 * max(
            abs(w) for w in want
        ), tag
    assert scalars["final/accuracy"] == [(3, pytest.approx(metrics[-1]["test_accuracy"]))]


def test_tensorboard_can_be_switched_off(colour_dataset, tmp_path):
    over = run_overrides(colour_dataset, "coop", **{"tracking.tensorboard": False})
    train_run(load_run_config(None, over), tmp_path / "run", **QUIET)
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_mlflow_logs_params_epochs_and_the_run_folder_across_a_resume(
    colour_dataset, tmp_path, monkeypatch
):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # the sqlite store puts artifacts under ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    over = run_overrides(colour_dataset, "coop", **{"optim.epochs": 3, "tracking.mlflow": uri})
    cfg = load_run_config(None, over)
    out = tmp_path / "run"
    with pytest.raises(Stop):
        train_run(cfg, out, on_epoch=stop_after(2), **QUIET)
    client = mlflow.MlflowClient(tracking_uri=uri)
    (first,) = client.search_runs([client.get_experiment_by_name("visprompt").experiment_id])
    assert first.info.status == "FAILED"
    train_run(load_run_config(None, over), out, resume=True, **QUIET)

    (run,) = client.search_runs([client.get_experiment_by_name("visprompt").experiment_id])
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    assert run.data.params["method.name"] == "coop"
    assert run.data.params["optim.epochs"] == "3"
    assert run.data.tags["visprompt.run_id"] == cfg.run_id()
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3]  # epoch 2 not logged twice
    by_step = {m.step: m.value for m in history}
    assert [by_step[m["epoch"]] for m in read_metrics(out)] == [
        m["train_loss"] for m in read_metrics(out)
    ]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.jsonl", "result.json", "tensorboard"} <= artifacts
    assert "state.pt" not in artifacts


def test_mlflow_missing_is_one_line_before_anything_is_written(
    colour_dataset, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    over = run_overrides(colour_dataset, "coop")
    sets = [a for kv in over for a in ("--set", kv)]
    code = main(["train", *sets, "--out", str(tmp_path / "run"), "--mlflow", "sqlite:///x.db"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        "error: tracking.mlflow is set but MLflow is not installed; run "
        "pip install 'visprompt[mlflow]' or leave out --mlflow"
    ]
    assert not (tmp_path / "run").exists()


def test_sweep_with_mlflow_missing_fails_before_any_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    db = tmp_path / "results.sqlite"
    code = main(["sweep", "-c", "configs/sweeps/tiny.yaml", "--db", str(db), "--mlflow", "x"])
    assert code == 2
    assert "pip install 'visprompt[mlflow]'" in capsys.readouterr().err
    assert not db.exists()
