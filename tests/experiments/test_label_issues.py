"""label-issues: out-of-sample scores by cross-fitting, the detectors side by side, cleanlab's files.

One tiny CoOp run under 50% symmetric noise (module fixture) serves every test;
cross-fits use 2 or 3 folds of 3 epochs, so the module stays within seconds.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from vp_testing import run_overrides

from visprompt.cli import main
from visprompt.config import load_run_config
from visprompt.engine.assembly import build_method
from visprompt.engine.evaluate import predict_logits
from visprompt.engine.run import train_run
from visprompt.engine.trainer import TrainData, Trainer
from visprompt.experiments import cross_fit as cf
from visprompt.experiments.label_evidence import RunEvidence
from visprompt.experiments.label_issues import (
    CSV_COLUMNS,
    compare_detectors,
    export_pred_probs,
    find_label_issues,
    label_issues,
)
from visprompt.robust.detector import DETECTORS, Detection, detection_quality

QUIET = {"progress": False, "log": lambda message: None}
COLOURS = ("blue", "green", "red", "yellow")  # the folder dataset's classes, sorted


@pytest.fixture(scope="module")
def coop_run(tmp_path_factory, colour_dataset):
    out = tmp_path_factory.mktemp("label_issues") / "coop"
    over = run_overrides(colour_dataset, "coop", **{"noise.type": "sym", "noise.rate": 0.5})
    train_run(load_run_config(None, over), out, **QUIET)
    return out


def _captured_folds(run, k, **kwargs):
    """A RunEvidence whose cross-fit records each fold's model weights and indices."""
    seen = {}

    def on_fold(fold, method, train_idx, held_idx):
        weights = {n: t.detach().clone() for n, t in method.state_dict().items()}
        seen[fold] = (weights, train_idx.clone(), held_idx.clone())

    evidence = RunEvidence.of_run(run, folds=k, on_fold=on_fold, **kwargs)
    evidence.out_of_sample_probs()
    return evidence, seen


def test_each_sample_is_scored_by_the_fold_model_that_never_saw_it(coop_run):
    evidence, seen = _captured_folds(coop_run, 3)
    n, given = len(evidence.samples), evidence.given
    fit = evidence.crossfit
    assert fit.k == 3 and sorted(seen) == [0, 1, 2]
    held_sets = [set(seen[f][2].tolist()) for f in range(3)]
    assert sorted(i for s in held_sets for i in s) == list(range(n))  # a partition
    for f in range(3):
        weights, train_idx, held_idx = seen[f]
        assert set(train_idx.tolist()) == set(range(n)) - held_sets[f]  # never saw its fold
        assert torch.equal(fit.folds[held_idx], torch.full_like(held_idx, f))
        # the stored probabilities are this fold model's, recomputed here from its weights
        run = evidence.run
        model = build_method(run.cfg, run.backbone, run.classnames, run.templates)
        model.load_state_dict(weights)
        feats = cf.prepare_training_set(
            evidence.run.cfg, [s.path for s in evidence.samples], given, False, lambda m: None
        ).train_features
        probs = predict_logits(model, feats.subset(fit.folds == f).plain_view()).softmax(-1)
        assert torch.equal(fit.probs[held_idx], probs)
    for c in range(4):  # stratified by the given label: fold sizes of a class differ by <= 1
        sizes = torch.bincount(fit.folds[given == c], minlength=3)
        assert int(sizes.max() - sizes.min()) <= 1


def test_a_held_out_label_cannot_change_its_own_score(coop_run):
    evidence = RunEvidence.of_run(coop_run, folds=2)
    prep = cf.prepare_training_set(
        evidence.run.cfg, [s.path for s in evidence.samples], evidence.given, False, QUIET["log"]
    )
    folds = cf.stratified_folds(evidence.given, 2, evidence.run.cfg.train_seed)
    base = cf.cross_fit(prep, evidence.given, 2, folds=folds).probs
    flipped = evidence.given.clone()
    i = int((folds == 0).nonzero()[0])
    flipped[i] = (flipped[i] + 1) % 4
    moved = cf.cross_fit(prep, flipped, 2, folds=folds).probs
    fold0 = folds == 0
    assert torch.equal(moved[fold0], base[fold0])  # fold 0's model never saw label i
    assert not torch.equal(moved[~fold0], base[~fold0])  # fold 1's model did: it moved


def test_a_fold_model_is_the_engine_trained_on_the_other_folds(coop_run):
    evidence, seen = _captured_folds(coop_run, 2)
    cfg, given = evidence.run.cfg, evidence.given
    prep = cf.prepare_training_set(
        cfg, [s.path for s in evidence.samples], given, False, QUIET["log"]
    )
    keep = evidence.crossfit.folds != 1
    method = build_method(cfg, prep.backbone, prep.splits.classnames, prep.spec.templates)
    data = TrainData(prep.train_features.subset(keep), given[keep])
    Trainer(method, data, cfg.optim, seed=cfg.train_seed, progress=False).fit()
    for name, value in method.state_dict().items():
        assert torch.equal(value, seen[1][0][name]), name


def test_cross_fit_is_deterministic(coop_run):
    a = RunEvidence.of_run(coop_run, folds=2).out_of_sample_probs()
    b = RunEvidence.of_run(coop_run, folds=2).out_of_sample_probs()
    assert torch.equal(a, b)


def test_cleanlab_gets_exactly_the_out_of_sample_probs_and_the_given_labels(coop_run, monkeypatch):
    import cleanlab.filter

    calls = []
    real = cleanlab.filter.find_label_issues

    def spy(labels, pred_probs, **kwargs):
        calls.append((np.array(labels), np.array(pred_probs), kwargs))
        return real(labels, pred_probs, **kwargs)

    monkeypatch.setattr(cleanlab.filter, "find_label_issues", spy)
    evidence = RunEvidence.of_run(coop_run, folds=2)
    found = evidence.detect("cleanlab")
    ((labels, pred_probs, kwargs),) = calls
    assert found.scoring == "out-of-sample" and kwargs == {"n_jobs": 1}
    assert np.array_equal(labels, evidence.given.numpy())
    assert np.array_equal(pred_probs, evidence.crossfit.probs.double().numpy())
    assert np.array_equal(found.flagged.numpy(), real(labels, pred_probs))


def test_default_detector_cross_fits_a_method_without_a_purifier(coop_run, tmp_path, capsys):
    csv_path = tmp_path / "issues.csv"
    args = ["label-issues", "--run", str(coop_run), "--csv", str(csv_path), "--quiet"]
    assert main([*args, "--cross-fit", "2", "--top", "0"]) == 0
    assert "detector crossfit" in capsys.readouterr().out
    rows = list(csv.DictReader(csv_path.open()))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 32
    assert {r["scoring"] for r in rows} == {"out-of-sample (2-fold cross-fit)"}
    # classes by name, never indices; the verdict is the cross-fitted model's disagreement
    for r in rows:
        assert {r["given_label"], r["predicted_label"], r["true_label"]} <= set(COLOURS)
        assert (r["verdict"] == "noisy") == (r["predicted_label"] != r["given_label"])
    assert main([*args, "--in-sample", "--top", "0"]) == 0
    inside = list(csv.DictReader(csv_path.open()))
    assert {r["scoring"] for r in inside} == {"in-sample (final model)"}


def test_export_is_what_cleanlab_reads(coop_run, tmp_path):
    import cleanlab.filter

    evidence = RunEvidence.of_run(coop_run, folds=2)
    issues = label_issues(evidence, "cleanlab")
    folder = export_pred_probs(evidence, tmp_path / "export", "out-of-sample")
    pred_probs = np.load(folder / "pred_probs.npy")
    labels = np.load(folder / "labels.npy")
    classes = json.loads((folder / "classes.json").read_text())
    assert pred_probs.shape == (32, 4) and pred_probs.dtype == np.float32
    assert labels.shape == (32,) and labels.dtype == np.int64
    assert classes == list(COLOURS)
    assert np.abs(pred_probs.sum(axis=1) - 1).max() < 1e-5
    # a practitioner's cleanlab call on the files gives our cleanlab verdicts
    flagged = cleanlab.filter.find_label_issues(labels, pred_probs.astype(np.float64))
    by_index = {r["index"]: r for r in issues.rows}
    for i in range(32):
        row = by_index[i]
        assert classes[labels[i]] == row["given_label"]
        assert (row["verdict"] == "noisy") == bool(flagged[i])
        assert math.isclose(row["prob_given"], float(pred_probs[i, labels[i]]), rel_tol=1e-6)


def test_compare_puts_every_detector_on_the_same_run(coop_run, capsys):
    evidence = RunEvidence.of_run(coop_run, folds=2)
    rows = compare_detectors(evidence)
    pairs = [(r["detector"], r["scoring"].split(" ")[0]) for r in rows]
    model = sorted(n for n in DETECTORS.names() if DETECTORS.get(n).evidence == "model")
    assert pairs == [(n, s) for n in model for s in ("in-sample", "out-of-sample")] + [
        ("zeroshot", "zero-shot")
    ]
    truth, given = evidence.truth, evidence.given
    for row in rows:  # each row is detection_quality of that detector's own detection
        scoring = row["scoring"].split(" ")[0]
        found = evidence.detect(row["detector"], None if scoring == "zero-shot" else scoring)
        assert row["num_flagged"] == int(found.flagged.sum())
        wrong = given != truth
        hit = int((found.flagged & wrong).sum())
        assert row["recall"] == hit / int(wrong.sum())
    main(["label-issues", "--run", str(coop_run), "--cross-fit", "2", "--compare", "-q"])
    out = capsys.readouterr().out
    assert "| detector | scores | flagged | precision | recall | F1 | AUROC | P@1% |" in out


def test_detection_quality_against_a_direct_count():
    given = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    true = torch.tensor([0, 1, 2, 1, 2, 0, 0, 1, 2, 0])  # samples 3, 4, 5 are wrong
    flagged = torch.tensor([0, 0, 0, 1, 1, 0, 1, 0, 0, 0], dtype=torch.bool)
    score = torch.tensor([0.1, 0.2, 0.3, 0.9, 0.5, 0.8, 0.7, 0.0, 0.4, 0.6])
    found = Detection(flagged, score, torch.zeros(10, 3), "in-sample", "test")
    q = detection_quality(found, given, true)
    assert (q["num_flagged"], q["num_wrong"]) == (3, 3)
    assert q["precision"] == 2 / 3 and q["recall"] == 2 / 3 and q["f1"] == pytest.approx(2 / 3)
    # AUROC: the fraction of (wrong, right) pairs that the score orders correctly
    wrong = [0.9, 0.5, 0.8]
    right = [0.1, 0.2, 0.3, 0.7, 0.0, 0.4, 0.6]
    pairs = sum((w > r) + 0.5 * (w == r) for w in wrong for r in right)
    assert q["auroc"] == pytest.approx(pairs / 21, rel=1e-12)
    # the ranking: flagged first (3, 6, 4 by score), then 5 (0.8): ceil(1%, 5%, 10% of 10) = 1
    assert found.order()[:4] == [3, 6, 4, 5]
    assert q["precision_at_1pct"] == q["precision_at_5pct"] == q["precision_at_10pct"] == 1.0


def test_find_label_issues_keeps_the_purifier_verdict_of_an_ot_run(colour_dataset, tmp_path):
    over = run_overrides(colour_dataset, "nlprompt", **{"noise.type": "sym", "noise.rate": 0.5})
    train_run(load_run_config(None, over), tmp_path / "nlp", **QUIET)
    issues = find_label_issues(tmp_path / "nlp")
    assert issues.detector == "ot" and issues.detection.scoring == "in-sample"
    out_of_sample = find_label_issues(tmp_path / "nlp", folds=2)
    assert out_of_sample.detector == "ot" and out_of_sample.detection.scoring == "out-of-sample"
    assert "2-fold cross-fit" in out_of_sample.verdict_source


def test_a_best_val_run_cross_fits_with_its_selection(colour_dataset, tmp_path):
    over = run_overrides(
        colour_dataset,
        "coop",
        **{"noise.type": "sym", "noise.rate": 0.5, "eval.select": "best-val"},
    )
    train_run(load_run_config(None, over), tmp_path / "bv", **QUIET)
    evidence, seen = _captured_folds(tmp_path / "bv", 2)
    cfg, given = evidence.run.cfg, evidence.given
    prep = cf.prepare_training_set(
        cfg, [s.path for s in evidence.samples], given, False, QUIET["log"]
    )
    keep = evidence.crossfit.folds != 0
    method = build_method(cfg, prep.backbone, prep.splits.classnames, prep.spec.templates)
    val_feats, val_labels = prep.validation.features.plain_view(), prep.validation.labels()
    epochs = []  # (noisy-val accuracy, weights) after each epoch, computed here directly

    def record(epoch, metrics):
        correct = predict_logits(method, val_feats).argmax(-1) == val_labels
        weights = {n: t.detach().clone() for n, t in method.state_dict().items()}
        epochs.append((float(correct.float().mean()), weights))

    data = TrainData(prep.train_features.subset(keep), given[keep])
    Trainer(method, data, cfg.optim, seed=cfg.train_seed, progress=False).fit(on_epoch=record)
    best = max(range(len(epochs)), key=lambda e: (epochs[e][0], -e))  # earliest of ties
    chosen = seen[0][0]
    for name, value in epochs[best][1].items():
        assert torch.equal(chosen[name], value), name
    assert best != len(epochs) - 1  # here the choice matters: the last epoch is not the best


def test_precision_at_the_top_counts_whole_rows():
    # 30 samples: the top 1% / 5% / 10% are the first 1 / 2 / 3 rows (ceil, at least 1)
    given = torch.zeros(30, dtype=torch.long)
    true = torch.zeros(30, dtype=torch.long)
    true[[0, 2]] = 1  # rows 0 and 2 are wrong, row 1 is right
    score = torch.linspace(1.0, 0.0, 30)  # ranked in index order
    found = Detection(torch.zeros(30, dtype=torch.bool), score, torch.zeros(30, 2), "x", "x")
    q = detection_quality(found, given, true)
    assert (q["precision_at_1pct"], q["precision_at_5pct"]) == (1.0, 0.5)
    assert q["precision_at_10pct"] == 2 / 3
    assert q["num_flagged"] == 0 and math.isnan(q["precision"]) and q["recall"] == 0.0


def test_a_new_detector_is_one_registration_away_from_compare(coop_run):
    from visprompt.robust.detector import Detector, disagreement, register_detector

    with DETECTORS.scoped():

        @register_detector("second-choice")
        class SecondChoice(Detector):
            """Flags a label when it is not among the model's two most likely classes."""

            def detect(self, inputs):
                found = disagreement(inputs, "not in the top two")
                top2 = inputs.probs.topk(2, dim=1).indices
                flagged = (top2 != inputs.labels[:, None]).all(dim=1)
                return Detection(flagged, found.score, inputs.probs, inputs.scoring, found.source)

        evidence = RunEvidence.of_run(coop_run)
        rows = {r["detector"]: r for r in compare_detectors(evidence, ("in-sample",))}
        found = evidence.detect("second-choice", "in-sample")
        top2 = evidence.in_sample_probs().topk(2, dim=1).indices
        assert torch.equal(found.flagged, (top2 != evidence.given[:, None]).all(dim=1))
        assert rows["second-choice"]["num_flagged"] == int(found.flagged.sum())
    assert "second-choice" not in DETECTORS
