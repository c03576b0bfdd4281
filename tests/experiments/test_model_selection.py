"""Model selection (``eval.select``): best-val chooses on the noisy val split, the test split
chooses nothing, and an interrupted best-val run resumes to the same choice.

The test labels of every run here are a guarded tensor from the moment assembly
(``prepare_run``) hands them over: any torch operation on them before the engine's
final test evaluation fails the run. Inside assembly they are only built; a fitted
method's choice made there (Tip-Adapter's search at construction) gets a ``FitData``
of training features and the val split, which holds no test data; every val read,
there or later, is logged in order. ``eval.every`` (test
evaluations for the log) is 0 in the guarded runs - it reads test labels on purpose,
for logging only; a separate test shows that such reads change no choice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from vp_testing import run_overrides

import visprompt.engine.run as engine_run
from visprompt.cli import main
from visprompt.config import load_run_config
from visprompt.data.validation_split import ValidationSplit
from visprompt.engine.checkpoint import WEIGHTS_FILE, load_weights
from visprompt.engine.reload import evaluate_run
from visprompt.engine.run import train_run


class GuardedLabels(torch.Tensor):
    """Test labels whose every use raises until the final evaluation opens them."""

    opened = False

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if not GuardedLabels.opened:
            raise AssertionError(f"test labels read before the final evaluation ({func})")
        return super().__torch_function__(func, types, args, kwargs)


@pytest.fixture
def guarded(monkeypatch):
    """Guards the test labels of the next runs; returns the ordered log of label reads."""
    events: list[str] = []
    real_prepare, real_evaluate = engine_run.prepare_run, engine_run.evaluate_test

    def prepare(cfg, *args, **kwargs):
        GuardedLabels.opened = False
        prep = real_prepare(cfg, *args, **kwargs)
        prep.test_labels = prep.test_labels.as_subclass(GuardedLabels)
        return prep

    real_labels = ValidationSplit.labels

    def labels(self, clean: bool = False):
        events.append("val-true" if clean else "val")
        return real_labels(self, clean)

    def evaluate(prep):
        events.append("test")
        GuardedLabels.opened = True  # the final evaluation: from here on, reading is fine
        return real_evaluate(prep)

    monkeypatch.setattr(engine_run, "prepare_run", prepare)
    monkeypatch.setattr(engine_run, "evaluate_test", evaluate)
    monkeypatch.setattr(ValidationSplit, "labels", labels)  # a fitted method's search included
    yield events
    GuardedLabels.opened = True


def config(root: Path, method: str = "coop", **extra):
    values = {"noise.type": "sym", "noise.rate": 0.25, "optim.epochs": 4, **extra}
    return load_run_config(None, run_overrides(root, method, **values))


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_best_val_tests_the_epoch_best_on_noisy_val_once(colour_dataset, tmp_path, guarded):
    out = tmp_path / "best"
    result = train_run(config(colour_dataset, **{"eval.select": "best-val"}), out, progress=False)
    epochs = history(out)
    # val evaluated (noisy labels) after each of the 4 epochs, test read once, at the end
    assert guarded == ["val"] * 4 + ["test"]
    val_acc = [e["val_accuracy"] for e in epochs]
    best = max(val_acc)
    assert result["selection"] == "best-val"
    assert result["selected_epoch"] == val_acc.index(best) + 1  # the earliest of ties
    assert result["selected_val_accuracy"] == best
    assert result["selection_val_labels"] == "noisy" and result["selection_val_num_noisy"] > 0
    assert not any("test_accuracy" in e for e in epochs)  # no epoch line holds a test number
    # the weights saved are the ones tested
    assert evaluate_run(out, progress=False)["accuracy"] == pytest.approx(
        result["test_accuracy"], rel=1e-9
    )

    # the same training with eval.select: last and a test evaluation every epoch (the log
    # only): choosing on val changed no step of training, and the best-val run's test
    # accuracy is that logged run's at the selected epoch
    guarded.clear()
    GuardedLabels.opened = True
    logged = tmp_path / "logged"
    last = train_run(config(colour_dataset, **{"eval.every": 1}), logged, progress=False)
    logged_epochs = history(logged)
    assert last["selection"] == "last"
    at_selected = logged_epochs[result["selected_epoch"] - 1]["test_accuracy"]
    assert result["test_accuracy"] == pytest.approx(at_selected, rel=1e-9)
    assert last["test_accuracy"] == logged_epochs[-1]["test_accuracy"]
    # this run's val peaks before the last epoch, so best-val and last differ here
    assert result["selected_epoch"] < 4 and result["test_accuracy"] != last["test_accuracy"]

    # test reads for the log (eval.every) change nothing a best-val run chooses
    both = train_run(
        config(colour_dataset, **{"eval.select": "best-val", "eval.every": 1}),
        tmp_path / "both",
        progress=False,
    )
    for key in ("selected_epoch", "selected_val_accuracy", "test_accuracy"):
        assert both[key] == result[key], key


@pytest.mark.parametrize("method", ["linear-probe", "tip-adapter", "tip-adapter-f"])
def test_methods_that_choose_on_val_read_test_labels_only_at_the_end(
    colour_dataset, tmp_path, guarded, method
):
    result = train_run(
        config(colour_dataset, method, **{"optim.epochs": 2}), tmp_path / "r", progress=False
    )
    assert guarded[-1] == "test" and guarded.count("test") == 1
    assert "val" in guarded  # it did choose on val, before the test read
    assert 0 <= result["test_accuracy"] <= 100


def test_best_val_resumes_to_the_same_choice(colour_dataset, tmp_path):
    cfg = config(colour_dataset, **{"eval.select": "best-val"})
    straight = train_run(cfg, tmp_path / "straight", progress=False)

    class Stop(Exception):
        pass

    def stop_after_two(metrics):
        if metrics["epoch"] == 2:
            raise Stop

    out = tmp_path / "cut"
    with pytest.raises(Stop):
        train_run(cfg, out, progress=False, on_epoch=stop_after_two)
    resumed = train_run(cfg, out, resume=True, progress=False)
    for key in ("selected_epoch", "selected_val_accuracy", "test_accuracy"):
        assert resumed[key] == straight[key], key
    (mine, meta), (theirs, their_meta) = (
        load_weights(folder / WEIGHTS_FILE) for folder in (out, tmp_path / "straight")
    )
    assert meta == their_meta and mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)  # the same selected weights


def test_best_val_without_val_images_is_one_line(colour_dataset, tmp_path, capsys):
    argv = ["train", "--quiet", "--out", str(tmp_path / "run")]
    over = {"eval.select": "best-val", "noise.protocol": "balanced", "data.val_shots": 0}
    sets = run_overrides(colour_dataset, "coop", **over)
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "error: eval.select: best-val needs the validation split, but data.val_shots is 0; set "
        "data.val_shots to at least 1 or leave it unset (data.shots gives min(shots, 4) "
        "validation images per class)"
    )
    assert not (tmp_path / "run").exists()
