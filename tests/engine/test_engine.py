"""The training engine end to end: learning, caching, checkpoints, resume, eval, predict."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from vp_testing import run_overrides

from visprompt.cli import main
from visprompt.config import load_run_config
from visprompt.data import features as features_mod
from visprompt.engine.optim import lr_factor
from visprompt.engine.reload import evaluate_run, predict_paths
from visprompt.engine.run import train_run
from visprompt.engine.run_folder import read_metrics
from visprompt.errors import VispromptError

QUIET = {"progress": False, "log": lambda message: None}


def test_coop_learns_and_writes_the_run_folder(colour_dataset, tmp_path):
    cfg = load_run_config(None, run_overrides(colour_dataset, "coop", **{"optim.epochs": 8}))
    result = train_run(cfg, tmp_path / "run", **QUIET)
    metrics = read_metrics(tmp_path / "run")
    assert [m["epoch"] for m in metrics] == list(range(1, 9))
    assert metrics[-1]["train_loss"] < 0.7 * metrics[0]["train_loss"]
    assert metrics[-1]["train_acc"] >= 75.0  # chance is 25% over 4 classes
    assert result["test_accuracy"] >= 60.0
    for name in ("config.yaml", "trainset.json", "state.pt", "prompt.safetensors"):
        assert (tmp_path / "run" / name).is_file()
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    for key in ("test_accuracy", "method", "dataset", "noise_type", "noise_rate", "seed"):
        assert key in saved
    assert saved["method"] == "coop" and saved["num_train"] == 32
    assert metrics[0]["lr"] == pytest.approx(1e-5)  # constant warm-up epoch


def test_zeroshot_runs_without_training(colour_dataset, tmp_path):
    cfg = load_run_config(None, run_overrides(colour_dataset, "zeroshot"))
    result = train_run(cfg, tmp_path / "zs", **QUIET)
    assert result["epochs"] == 0 and result["trainable_params"] == 0
    assert not (tmp_path / "zs" / "state.pt").exists()
    # the run folder alone reproduces the score (the text classifier is rebuilt from it)
    assert evaluate_run(tmp_path / "zs", progress=False)["accuracy"] == result["test_accuracy"]


def test_same_seed_same_numbers_and_noise_metrics(colour_dataset, tmp_path):
    over = run_overrides(colour_dataset, "coop", **{"noise.type": "sym", "noise.rate": 0.5})
    a = train_run(load_run_config(None, over), tmp_path / "a", **QUIET)
    b = train_run(load_run_config(None, over), tmp_path / "b", **QUIET)
    assert read_metrics(tmp_path / "a") == [
        {**m, "seconds": read_metrics(tmp_path / "a")[i]["seconds"]}
        for i, m in enumerate(read_metrics(tmp_path / "b"))
    ]
    assert a["test_accuracy"] == b["test_accuracy"] and a["num_noisy"] == 16
    assert "train_acc_true" in read_metrics(tmp_path / "a")[0]


def test_same_numbers_when_the_dataset_moves(colour_dataset, tmp_path):
    # Augmented views are seeded by image content, not path: a copy of the
    # dataset elsewhere (another root, another cache folder) trains identically.
    moved = tmp_path / "elsewhere" / "data"
    shutil.copytree(colour_dataset, moved)
    results = []
    for root, name in ((colour_dataset, "a"), (moved, "b")):
        over = run_overrides(root, "coop", **{"noise.type": "sym", "noise.rate": 0.5})
        train_run(load_run_config(None, over), tmp_path / name, **QUIET)
        results.append(
            [{k: v for k, v in m.items() if k != "seconds"} for m in read_metrics(tmp_path / name)]
        )
    assert results[0] == results[1]


@pytest.fixture
def encoded(monkeypatch) -> list[int]:
    """Batch sizes of every image-encoder call made during the test."""
    calls: list[int] = []
    real = features_mod.FeatureExtractor.encode

    def counting(self, images):
        calls.append(images.shape[0])
        return real(self, images)

    monkeypatch.setattr(features_mod.FeatureExtractor, "encode", counting)
    return calls


def test_feature_cache_is_reused_and_keyed_by_checkpoint(colour_dataset, tmp_path, encoded):
    calls = encoded
    over = run_overrides(colour_dataset, "coop", **{"optim.epochs": 2})
    train_run(load_run_config(None, over), tmp_path / "first", **QUIET)
    assert sum(calls) == 32 + 32 * 2 + 24  # clean train + 2 views + test
    calls.clear()
    train_run(load_run_config(None, over + ["optim.lr=0.01"]), tmp_path / "second", **QUIET)
    assert calls == []  # second run: the image encoder never runs
    # a different checkpoint of the same architecture never reuses the features
    from visprompt.backbone import tiny_clip

    ckpt = tmp_path / "other.pt"
    torch.save(tiny_clip("vit", seed=9).state_dict(), ckpt)
    other = [o for o in over if not o.startswith("backbone.name")]
    train_run(
        load_run_config(None, other + [f"backbone.checkpoint={ckpt}"]), tmp_path / "o", **QUIET
    )
    assert sum(calls) == 32 + 64 + 24


def test_no_cache_encodes_fresh_augmentations_every_step(colour_dataset, tmp_path, encoded):
    calls = encoded
    over = run_overrides(colour_dataset, "coop", **{"optim.epochs": 2, "use_cache": "false"})
    result = train_run(load_run_config(None, over), tmp_path / "live", **QUIET)
    assert sum(calls) == 32 + 2 * 32 + 24  # clean train + every step's images + test
    assert not (Path(os.environ["VISPROMPT_CACHE"]) / "features").exists()
    assert evaluate_run(tmp_path / "live", progress=False)["accuracy"] == result["test_accuracy"]


def test_lr_schedule_warmup_then_cosine():
    cfg = load_run_config(
        None,
        ["backbone.name=tiny-vit", "data.dataset=folder", "method.name=coop", "optim.epochs=10"],
    )
    assert lr_factor(0, cfg.optim) * cfg.optim.lr == pytest.approx(1e-5)
    assert lr_factor(1, cfg.optim) == pytest.approx(1.0)  # the cosine starts after the warm-up
    assert lr_factor(6, cfg.optim) == pytest.approx(0.5)
    assert lr_factor(1, cfg.optim) > lr_factor(2, cfg.optim) > lr_factor(9, cfg.optim) > 0


def test_run_folder_errors(colour_dataset, tmp_path):
    over = run_overrides(colour_dataset, "coop", **{"optim.epochs": 2})
    cfg = load_run_config(None, over)
    with pytest.raises(VispromptError, match="holds no checkpoint"):
        train_run(cfg, tmp_path / "r", resume=True, **QUIET)
    train_run(cfg, tmp_path / "r", **QUIET)
    with pytest.raises(VispromptError, match="already holds a finished run; pass --overwrite"):
        train_run(cfg, tmp_path / "r", **QUIET)
    other = load_run_config(None, over + ["optim.lr=0.5", "data.shots=4"])
    (tmp_path / "r" / "result.json").unlink()
    with pytest.raises(VispromptError, match="differs .* in data.shots, optim.lr"):
        train_run(other, tmp_path / "r", resume=True, **QUIET)
    train_run(other, tmp_path / "r", overwrite=True, **QUIET)
    assert "lr: 0.5" in (tmp_path / "r" / "config.yaml").read_text()
    with pytest.raises(VispromptError, match="run folder not found"):
        evaluate_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VispromptError, match="is incomplete"):
        evaluate_run(tmp_path / "empty")
    # nothing is written when the data is wrong
    bad = load_run_config(None, over + [f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(VispromptError):
        train_run(bad, tmp_path / "never", **QUIET)
    assert not (tmp_path / "never").exists()


def test_non_finite_loss_stops_and_keeps_last_checkpoint(colour_dataset, tmp_path, monkeypatch):
    from visprompt.methods.coop import CoOp

    real = CoOp.training_loss
    seen = {"steps": 0}

    def exploding(self, batch):
        out = real(self, batch)
        seen["steps"] += 1
        if seen["steps"] > 6:  # third epoch (4 steps per epoch)
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(CoOp, "training_loss", exploding)
    cfg = load_run_config(None, run_overrides(colour_dataset, "coop", **{"optim.epochs": 4}))
    with pytest.raises(VispromptError, match=r"loss became nan at epoch 2, batch 3"):
        train_run(cfg, tmp_path / "nan", **QUIET)
    state = torch.load(tmp_path / "nan" / "state.pt", weights_only=True)
    assert state["epoch"] == 0 and not (tmp_path / "nan" / "result.json").exists()


def test_non_finite_parameters_are_never_checkpointed(colour_dataset, tmp_path, monkeypatch):
    # The last step of epoch 2 overflows the parameters while every loss stayed finite
    # (an fp16 overflow or a huge step does this); its checkpoint must not be written.
    real, steps = torch.optim.SGD.step, {"n": 0}

    def overflowing(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        steps["n"] += 1
        if steps["n"] == 8:  # 4 steps per epoch
            for group in self.param_groups:
                for p in group["params"]:
                    p.data.fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", overflowing)
    cfg = load_run_config(None, run_overrides(colour_dataset, "coop", **{"optim.epochs": 3}))
    with pytest.raises(VispromptError, match=r"parameters prompt.ctx became non-finite in epoch 2"):
        train_run(cfg, tmp_path / "inf", **QUIET)
    state = torch.load(tmp_path / "inf" / "state.pt", weights_only=True)
    assert state["epoch"] == 0 and not (tmp_path / "inf" / "result.json").exists()


def test_cli_train_eval_predict(colour_dataset, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", "--out", str(out), "--quiet"]
    for o in run_overrides(colour_dataset, "coop", **{"optim.epochs": 6}):
        args += ["--set", o]
    assert main(args) == 0
    assert "test accuracy:" in capsys.readouterr().out
    assert main(["eval", "--run", str(out), "--split", "test", "--quiet"]) == 0
    assert "accuracy" in capsys.readouterr().out
    m = evaluate_run(out, "train", progress=False)
    assert m["num_images"] == 32
    image = next((colour_dataset / "test" / "red").iterdir())
    rows = predict_paths(out, [str(image)], topk=2)
    assert len(rows[0]["top"]) == 2 and rows[0]["top"][0]["prob"] >= rows[0]["top"][1]["prob"]
    csv_path = tmp_path / "pred.csv"
    assert (
        main(
            [
                "predict",
                "--run",
                str(out),
                "--folder",
                str(colour_dataset / "test"),
                "--csv",
                str(csv_path),
                "--topk",
                "1",
            ]
        )
        == 0
    )
    assert len(csv_path.read_text().splitlines()) == 1 + 24
    assert main(["eval", "--run", str(tmp_path / "nope")]) == 2
    assert "error: run folder not found" in capsys.readouterr().err
