"""GCE, NLPrompt and VisPrompt end to end: training under noise, resume, OT logging, label issues."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from vp_testing import (
    rel_err,
    run_overrides,
)

from visprompt.config import load_run_config
from visprompt.engine import run as run_mod
from visprompt.engine.reload import evaluate_run
from visprompt.engine.run import train_run
from visprompt.engine.run_folder import read_metrics as metrics
from visprompt.experiments.label_issues import export_label_issues
from visprompt.methods.base import EpochContext
from visprompt.methods.nlprompt import NLPromptConfig
from visprompt.methods.ot_training import CLEAN, NOISY, ot_epoch_plan, ot_loss

QUIET = {"progress": False, "log": lambda message: None}
NOISE = {"noise.type": "sym", "noise.rate": 0.5}


def write_yaml(path: Path, overrides: list[str]) -> Path:
    tree: dict = {}
    for item in overrides:
        key, value = item.split("=", 1)
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.parametrize("method", ["gce", "nlprompt", "visprompt"])
def test_method_trains_under_half_symmetric_noise_from_one_yaml(colour_dataset, tmp_path, method):
    extra = {**NOISE, "optim.epochs": 3}
    if method == "visprompt":
        extra.update(
            {"method.hidden_dim": 32, "method.heads": 4, "method.pool_size": 4, "optim.lr": 0.01}
        )
    config = write_yaml(tmp_path / "run.yaml", run_overrides(colour_dataset, method, **extra))
    result = train_run(load_run_config(config), tmp_path / "run", **QUIET)
    assert result["method"] == method and result["num_noisy"] == 16
    rows = metrics(tmp_path / "run")
    assert len(rows) == 3 and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)
    if method != "gce":
        for r in rows:
            assert {"purify_precision", "purify_recall", "purify_clean_fraction"} <= set(r)
    assert evaluate_run(tmp_path / "run", progress=False)["accuracy"] == pytest.approx(
        result["test_accuracy"]
    )


def test_sequential_schedule_trains_clean_then_noisy_with_ce_and_mae():
    n, k = 40, 4
    labels = torch.arange(n) % k
    probs = torch.full((n, k), 0.05)
    probs[torch.arange(n), labels] = 0.85  # confident in the given label ...
    wrong = torch.arange(n) < 12
    probs[wrong] = 0.05
    probs[wrong, (labels[wrong] + 1) % k] = 0.85  # ... except for 12 samples
    ctx = EpochContext(0, 5, 8, labels, None, torch.Generator().manual_seed(0), lambda: probs)
    plan = ot_epoch_plan(NLPromptConfig(), ctx)
    assert plan.group[wrong].eq(NOISY).all() and plan.group[~wrong].eq(CLEAN).all()
    order = torch.cat(plan.batches)
    assert sorted(order.tolist()) == list(range(n))
    groups = plan.group[order]
    first_noisy = int(groups.eq(NOISY).nonzero()[0])
    assert groups[:first_noisy].eq(CLEAN).all() and groups[first_noisy:].eq(NOISY).all()
    logits = torch.randn(4, k)
    y, g = torch.tensor([0, 1, 2, 3]), torch.tensor([CLEAN, NOISY, CLEAN, NOISY])
    p = logits.softmax(-1)[torch.arange(4), y]
    expected = torch.stack([-p[0].log(), 1 - p[1], -p[2].log(), 1 - p[3]]).mean()
    assert rel_err(ot_loss(logits, y, g), expected) < 1e-6
    mixed = ot_epoch_plan(NLPromptConfig(schedule="mixed"), ctx)
    assert torch.equal(mixed.group, plan.group)


def _interrupt_after(monkeypatch, epochs: int) -> None:
    real = run_mod.ckpt.save_weights
    calls = {"n": 0}

    def save_then_stop(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == epochs:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_mod.ckpt, "save_weights", save_then_stop)


@pytest.mark.parametrize("method", ["gce", "nlprompt"])
def test_interrupted_run_resumes_to_the_same_result(colour_dataset, tmp_path, method, monkeypatch):
    over = run_overrides(colour_dataset, method, **NOISE, **{"optim.epochs": 4})
    full = train_run(load_run_config(None, over), tmp_path / "full", **QUIET)
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            train_run(load_run_config(None, over), tmp_path / "cut", **QUIET)
    # stopped right after epoch 2's checkpoint: the checkpoint is written before the
    # metrics log, so the log still ends at epoch 1 and the resume rewrites it whole
    assert len(metrics(tmp_path / "cut")) == 1
    assert torch.load(tmp_path / "cut" / "state.pt", weights_only=False)["epoch"] == 1
    resumed = train_run(load_run_config(None, over), tmp_path / "cut", resume=True, **QUIET)
    assert resumed["test_accuracy"] == full["test_accuracy"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(metrics(tmp_path / "cut")) == strip(metrics(tmp_path / "full"))


@pytest.mark.parametrize("method", ["nlprompt", "coop"])
def test_label_issue_export(colour_dataset, tmp_path, method, capsys):
    over = run_overrides(colour_dataset, method, **NOISE, **{"optim.epochs": 6})
    train_run(load_run_config(None, over), tmp_path / "run", **QUIET)
    issues, path = export_label_issues(tmp_path / "run", tmp_path / "issues.csv")
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 32 and [int(r["rank"]) for r in rows] == list(range(1, 33))
    verdicts = [r["verdict"] for r in rows]
    assert verdicts == sorted(verdicts, key=lambda v: v != "noisy")  # noisy first
    noisy_scores = [float(r["rank_score"]) for r in rows if r["verdict"] == "noisy"]
    assert noisy_scores == sorted(noisy_scores, reverse=True)
    for r in rows:
        assert float(r["rank_score"]) == pytest.approx(1 - float(r["prob_given"]), rel=1e-5)
        assert r["true_label"] in ("blue", "green", "red", "yellow")
    s = issues.summary
    truly_noisy = [r for r in rows if r["true_label"] != r["given_label"]]
    flagged = [r for r in truly_noisy if r["verdict"] == "noisy"]
    assert s["num_truly_noisy"] == len(truly_noisy) == 16
    assert s["noisy_recall"] == pytest.approx(len(flagged) / len(truly_noisy))
    if method == "coop":  # no purifier: the cross-fitted (out-of-sample) prediction judges
        assert issues.detector == "crossfit" and "-fold cross-fit" in issues.verdict_source
        assert {r["scoring"] for r in rows} == {issues.evidence.describe("out-of-sample")}
        assert all(
            (r["verdict"] == "noisy") == (r["predicted_label"] != r["given_label"]) for r in rows
        )
    else:  # the run's own purifier, rebuilt from its options
        assert issues.verdict_source.startswith("ot purifier on the final model")
    from visprompt.cli import main

    assert main(["label-issues", "--run", str(tmp_path / "run"), "--quiet", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "noisy-verdict precision" in out and (tmp_path / "run" / "label_issues.csv").is_file()
