"""JoAPR: the GMM partition, crossing point, refurbished labels, prior term, and a killed run."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import brentq
from scipy.stats import norm
from vp_testing import assert_same_run, kill_then_resume, rel_err, run_overrides, train_command

from visprompt.backbone import load_backbone
from visprompt.config import load_run_config
from visprompt.engine import checkpoint as ckpt
from visprompt.engine.evaluate import predict_logits
from visprompt.engine.reload import load_run, run_features
from visprompt.engine.run import train_run
from visprompt.engine.run_folder import read_metrics
from visprompt.engine.trainer import epoch_seed
from visprompt.errors import VispromptError
from visprompt.experiments.label_issues import CSV_COLUMNS, export_label_issues
from visprompt.methods import METHOD_REGISTRY
from visprompt.methods.base import EpochContext, FeatureBatch, TrainBatch
from visprompt.methods.joapr import (
    JoAPR,
    JoAPRConfig,
    mixup_lambda,
    refurbished_targets,
    uniform_prior_penalty,
)
from visprompt.robust.gmm import TwoGaussians, fit_two_gaussians, gaussian_crossing
from visprompt.robust.purifiers.gmm import GMMOptions, GMMPurifier, partition, selection_loss
from visprompt.robust.split import CLEAN, NOISY

QUIET = {"progress": False, "log": lambda message: None}


def direct_crossing(m_c: float, v_c: float, m_n: float, v_n: float) -> float:
    """Where log N(x; m_c, v_c) - log N(x; m_n, v_n) turns from + to - (grid scan + brentq)."""
    diff = lambda x: norm.logpdf(x, m_c, math.sqrt(v_c)) - norm.logpdf(x, m_n, math.sqrt(v_n))  # noqa: E731
    grid = np.linspace(min(m_c, m_n) - 20, max(m_c, m_n) + 20, 400_001)
    values = diff(grid)
    turns = np.nonzero((values[:-1] > 0) & (values[1:] <= 0))[0]
    assert len(turns) == 1, "two densities cross downwards exactly once"
    i = turns[0]
    return brentq(diff, grid[i], grid[i + 1], xtol=1e-12)


def reference_discriminant(m_c: float, v_c: float, m_n: float, v_n: float) -> float:
    """The JoAPR reference's discriminant (variances used as standard deviations)."""
    s_c, s_n = v_c, v_n
    a = s_n**2 - s_c**2
    b = 2 * (m_n * s_c**2 - m_c * s_n**2)
    c = (m_c * s_n) ** 2 - (m_n * s_c) ** 2 + 2 * (s_n * s_c) ** 2 * math.log(2 * s_c / s_n)
    return b * b - 4 * a * c


@pytest.mark.parametrize(
    "params",
    [
        (0.2, 0.01, 0.7, 0.04),  # narrow clean component
        (0.2, 0.09, 0.6, 0.0025),  # broad clean component
        (0.1, 0.02, 0.5, 0.02),  # equal variances: the midpoint
        (0.1, 0.02, 0.5, 0.02 * (1 + 1e-9)),  # nearly equal: no cancellation
        (0.40, 0.055, 0.41, 0.07),  # the reference's discriminant is negative here
    ],
)
def test_crossing_point_equals_the_direct_root(params):
    got = gaussian_crossing(*params)
    assert math.isfinite(got)
    assert got == pytest.approx(direct_crossing(*params), abs=1e-7)
    if params[1] == params[3]:
        assert got == pytest.approx((params[0] + params[2]) / 2)
    if params[0] == 0.40:
        assert reference_discriminant(*params) < 0  # sqrt -> NaN in the reference
    # identical components have no crossing: the midpoint, never NaN
    assert gaussian_crossing(0.3, 0.01, 0.3, 0.01) == pytest.approx(0.3)


LOSSES = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.35, 0.38, 0.40, 0.42, 0.45, 0.5, 0.6, 0.8, 1.0])


def direct_partition(loss, means, variances, weights, previous):
    x = loss.double().numpy()
    dens = [
        w * norm.pdf(x, m, math.sqrt(v)) for m, v, w in zip(means, variances, weights, strict=True)
    ]
    post = dens[0] / (dens[0] + dens[1])
    crossing = direct_crossing(means[0], variances[0], means[1], variances[1])
    threshold = float(np.mean(post <= previous))
    return (x < crossing) | (post > threshold), post, crossing, threshold


@pytest.mark.parametrize(
    "weights,previous,expected_clean",
    [
        ((0.3, 0.7), 0.5, 6),  # 0.35 and 0.38 are clean by the crossing rule only
        ((0.8, 0.2), 0.5, 9),  # 0.40 .. 0.45 are clean by the posterior rule only
        ((0.8, 0.2), 0.9, 8),  # a stricter previous threshold, a lenient estimate
    ],
)
def test_partition_on_a_hand_made_loss_vector(weights, previous, expected_clean):
    means, variances = (0.2, 0.7), (0.01, 0.04)
    mixture = TwoGaussians(means=means, variances=variances, weights=weights)
    part = partition(LOSSES, mixture, previous)
    clean, post, crossing, threshold = direct_partition(LOSSES, means, variances, weights, previous)
    np.testing.assert_allclose(part.posterior.numpy(), post, rtol=1e-10, atol=1e-12)
    assert part.crossing == pytest.approx(crossing, abs=1e-9)
    assert part.threshold == pytest.approx(threshold)
    assert part.clean.tolist() == clean.tolist()
    assert int(part.clean.sum()) == expected_clean
    assert part.clean[:expected_clean].all()  # lower losses are the clean ones here


def test_mixture_fit_recovers_a_known_mixture_and_its_partition():
    rng = np.random.default_rng(0)
    clean = rng.normal(0.15, 0.05, 300)
    noisy = rng.normal(0.75, 0.1, 100)
    values = torch.from_numpy(np.concatenate([noisy[:50], clean, noisy[50:]]))  # mixed order
    fit = fit_two_gaussians(values, seed=0, max_iter=100, tol=1e-6)
    assert fit.means == pytest.approx((0.15, 0.75), abs=0.02)
    assert math.sqrt(fit.variances[0]) == pytest.approx(0.05, abs=0.01)
    assert fit.weights == pytest.approx((0.75, 0.25), abs=0.03)
    truth = np.r_[np.zeros(50), np.ones(300), np.zeros(50)].astype(bool)
    part = partition(values, fit, 0.5)
    assert (part.clean.numpy() == truth).mean() >= 0.99  # the partition follows the samples
    assert part.threshold == pytest.approx(0.25, abs=0.02)  # = the noise rate
    assert fit_two_gaussians(values, seed=0) == fit_two_gaussians(values, seed=0)


def test_selection_loss_is_normalised_ce_plus_entropy():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0, 2, 1])
    raw = []
    for p, y in zip(probs.tolist(), labels.tolist(), strict=True):
        ce = -math.log(max(p[y], np.finfo(np.float64).tiny))
        ent = -sum(q * math.log(q) for q in p if q > 0)
        raw.append(ce + ent)
    raw = np.array(raw)
    expected = (raw - raw.min()) / (raw.max() - raw.min())
    np.testing.assert_allclose(selection_loss(probs, labels).numpy(), expected, rtol=1e-6)
    assert selection_loss(probs[:1].repeat(3, 1), labels[:1].repeat(3)).eq(0).all()  # constant


def test_refurbished_targets_follow_the_formula():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    labels = torch.tensor([1, 1, 0])
    weight = torch.tensor([0.9, 0.4, 0.7])
    clean = torch.tensor([True, True, False])
    got = refurbished_targets(probs, labels, weight, clean, temperature=2.0)
    expected = []
    for i in range(3):
        p = probs[i].tolist()
        if clean[i]:
            w = float(weight[i])
            p = [w * (k == int(labels[i])) + (1 - w) * p[k] for k in range(3)]
        powered = [q**2 for q in p]
        expected.append([q / sum(powered) for q in powered])
    assert rel_err(got, torch.tensor(expected)) <= 1e-6


def test_uniform_prior_kl_term():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 3.0, 0.0, 0.0], [1.0, 1.0, 1.0, -2.0]])
    mean = logits.softmax(dim=1).mean(dim=0)
    direct = sum(0.25 * math.log(0.25 / float(m)) for m in mean)
    assert float(uniform_prior_penalty(logits)) == pytest.approx(direct, rel=1e-5)
    balanced = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 5.0, 0], [0, 0, 0, 5.0]])
    assert float(uniform_prior_penalty(balanced)) == pytest.approx(0.0, abs=1e-6)


def test_mixup_lambda_is_beta_with_tiny_concentration_and_seeded():
    torch.manual_seed(0)
    draws = np.array([mixup_lambda(0.001) for _ in range(2000)])
    assert (draws >= 0.5).all() and (draws <= 1.0).all()
    assert (draws > 0.99).mean() > 0.98  # true mass of [0.01, 0.99] at beta 0.001 is ~0.5%
    torch.manual_seed(5)
    a = [mixup_lambda(0.5) for _ in range(5)]
    torch.manual_seed(5)
    assert a == [mixup_lambda(0.5) for _ in range(5)] and len(set(a)) == 5


# ---------------------------------------------------------------- the method on the engine

CLASSES = ["red", "green", "blue", "yellow"]


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(name="tiny-vit", device="cpu")


def make_context(epoch, probs, labels, batch_size=4, true_labels=None):
    return EpochContext(
        epoch=epoch,
        num_epochs=10,
        batch_size=batch_size,
        labels=labels,
        true_labels=true_labels,
        generator=torch.Generator().manual_seed(epoch),
        predict_train=lambda: probs,
    )


def test_epoch_plan_weights_each_sample_by_its_own_posterior_and_confidence(backbone):
    torch.manual_seed(0)
    method = JoAPR(backbone, CLASSES, JoAPRConfig(warmup_epochs=1))
    n = 24
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (n,), generator=gen)
    true = labels.clone()
    true[:8] = (labels[:8] + 1) % 4  # the first 8 labels are wrong
    logits = torch.randn(n, 4, generator=gen)
    logits[torch.arange(n), true] += 3.0  # the model leans towards the true class
    probs = logits.softmax(dim=1)

    warm = method.start_epoch(make_context(0, probs, labels))
    assert method._warmup and sorted(torch.cat(warm.batches).tolist()) == list(range(n))

    history = []
    threshold = 0.5
    for epoch in (1, 2, 3):
        plan = method.start_epoch(make_context(epoch, probs, labels, true_labels=true))
        history.append(selection_loss(probs, labels))
        avg = torch.stack(history[-5:]).mean(0)
        seed = int(
            torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(epoch))
        )
        part = partition(avg, fit_two_gaussians(avg, seed), threshold)
        threshold = part.threshold
        weight = part.posterior * (probs[torch.arange(n), labels] if epoch > 1 else 1.0)
        torch.testing.assert_close(method._weight, weight.float())
        # one loss-group encoding for every method: CLEAN (0) / NOISY (1)
        assert plan.group.tolist() == torch.where(part.clean, CLEAN, NOISY).tolist()
        assert plan.stats["joapr_threshold"] == threshold
        # every sample is trained on; a step holds at most 4 clean + 4 noisy samples
        assert set(torch.cat(plan.batches).tolist()) == set(range(n))
        for idx in plan.batches:
            assert len(set(idx.tolist())) == len(idx)
            assert (part.clean[idx]).sum() <= 4 and (~part.clean[idx]).sum() <= 4
    assert plan.stats["purify_precision"] > 0.8  # the wrong labels are mostly set aside

    # the state a resume needs survives torch.save(weights_only=True)
    buf = io.BytesIO()
    torch.save(method.extra_state(), buf)
    buf.seek(0)
    other = JoAPR(backbone, CLASSES, JoAPRConfig(warmup_epochs=1))
    other.load_extra_state(torch.load(buf, weights_only=True))
    assert set(method.extra_state()) == {"loss_history", "threshold", "partitions"}
    mine, theirs = method.purifier, other.purifier
    assert theirs.threshold == mine.threshold and theirs.partitions == 3
    assert all(torch.equal(a, b) for a, b in zip(theirs.history, mine.history, strict=True))


def test_training_step_matches_a_direct_computation(backbone):
    torch.manual_seed(0)
    cfg = JoAPRConfig(warmup_epochs=0, beta=0.5, init_std=0.3)
    method = JoAPR(backbone, CLASSES, cfg)
    n = 6
    gen = torch.Generator().manual_seed(2)
    z = F.normalize(torch.randn(n, backbone.embed_dim, generator=gen), dim=-1)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    method._warmup = False
    method._weight = torch.linspace(0.1, 0.9, n)
    group = torch.tensor([CLEAN, CLEAN, CLEAN, NOISY, NOISY, CLEAN])
    batch = TrainBatch(FeatureBatch(image=z), labels, torch.arange(n), group)
    torch.manual_seed(11)
    out = method.training_loss(batch)

    torch.manual_seed(11)
    lam = mixup_lambda(0.5)
    perm = torch.randperm(n)
    assert 0.5 <= lam < 0.99  # beta 0.5: a real mix, so the check covers the mixing
    with torch.no_grad():
        text = F.normalize(method.prompt.text_features(), dim=-1)
        probs = (backbone.logit_scale * z @ text.T).softmax(dim=1)
        targets = torch.zeros(n, 4)
        for i in range(n):
            q = probs[i]
            if group[i] == CLEAN:
                w = float(method._weight[i])
                q = w * F.one_hot(labels[i], 4) + (1 - w) * q
            targets[i] = q**2 / (q**2).sum()
        mz = lam * z + (1 - lam) * z[perm]
        mt = lam * targets + (1 - lam) * targets[perm]
        ml = backbone.logit_scale * F.normalize(mz, dim=-1) @ text.T
        soft_ce = -(mt * ml.log_softmax(dim=1)).sum(dim=1).mean()
        mean_p = ml.softmax(dim=1).mean(dim=0)
        kl = (0.25 * torch.log(0.25 / mean_p)).sum()
    assert rel_err(out.loss, soft_ce + cfg.alpha2 * kl) <= 1e-5
    assert out.parts["mixup_lambda"] == lam
    out.loss.backward()
    assert method.prompt.ctx.grad.abs().sum() > 0

    method._warmup = True  # warm-up: CE + alpha1 * sum p log p
    out = method.training_loss(batch)
    with torch.no_grad():
        logits = backbone.logit_scale * z @ text.T
        p = logits.softmax(dim=1)
        expected = F.cross_entropy(logits, labels) + 0.5 * (p * p.log()).sum(dim=1).mean()
    assert rel_err(out.loss, expected) <= 1e-5


def test_defaults_and_config_checks():
    entry = METHOD_REGISTRY.get("joapr")
    assert entry.text_cost.startswith("K (")
    base = ["backbone.name=tiny-vit", "data.dataset=folder", "method.name=joapr"]
    cfg = load_run_config(None, base)
    assert cfg.noise.protocol == "balanced"
    assert (cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.lr) == (200, 32, 0.002)
    m = cfg.method
    assert (m.warmup_epochs, m.alpha1, m.alpha2, m.beta, m.temperature) == (1, 0.5, 1.0, 0.001, 2)
    with pytest.raises(VispromptError, match=r"method.warmup_epochs \(20\) must be smaller"):
        load_run_config(None, base + ["method.warmup_epochs=20", "optim.epochs=10"])


@pytest.mark.parametrize("protocol,noise_type", [("relabel", "asym"), ("balanced", "sym")])
def test_trains_on_the_colour_dataset_at_half_noise(colour_dataset, tmp_path, protocol, noise_type):
    over = run_overrides(
        colour_dataset,
        "joapr",
        **{"noise.type": noise_type, "noise.rate": 0.5, "noise.protocol": protocol},
    )  # 3 epochs: 1 warm-up + 2 partitioned
    result = train_run(load_run_config(None, over), tmp_path / "r", **QUIET)
    rows = read_metrics(tmp_path / "r")
    assert len(rows) == 3 and "ce" in rows[0] and "joapr_threshold" not in rows[0]
    for row in rows[1:]:
        assert {"soft_ce", "prior_kl", "joapr_threshold", "purify_clean_fraction"} <= set(row)
        assert 0.0 <= row["joapr_threshold"] <= 1.0 and math.isfinite(row["joapr_crossing"])
    assert result["num_noisy"] == 16 and result["noise_protocol"] == protocol


@pytest.mark.slow  # spawns and SIGKILLs a training process
def test_sigkill_then_resume_reaches_the_same_result(colour_dataset, tmp_path):
    over = run_overrides(
        colour_dataset,
        "joapr",
        **{
            "optim.epochs": 8,
            "optim.batch_size": 8,
            "noise.type": "sym",
            "noise.rate": 0.5,
            "method.beta": 0.5,  # mixing that matters, so the RNG streams are exercised
        },
    )
    # killed after the loss history and threshold have evolved
    full, killed = kill_then_resume(
        lambda out, *extra: train_command(out, over, *extra), tmp_path, 3, 8
    )
    assert_same_run(full, killed)


def test_label_issues_judge_a_joapr_run_with_its_restored_gmm_purifier(colour_dataset, tmp_path):
    over = run_overrides(
        colour_dataset,
        "joapr",
        **{"noise.type": "sym", "noise.rate": 0.5, "optim.epochs": 4},
    )  # 1 warm-up + 3 partitioned epochs: the purifier has a history and a threshold
    train_run(load_run_config(None, over), tmp_path / "r", **QUIET)
    issues, path = export_label_issues(tmp_path / "r", tmp_path / "issues.csv")
    assert issues.verdict_source.startswith("gmm purifier on the final model")
    assert "state of the run's last epoch" in issues.verdict_source
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 32 and tuple(rows[0]) == CSV_COLUMNS

    # Direct: the final model's probabilities, split by a gmm purifier holding the
    # state saved with the last epoch, drawing from the last epoch's generator.
    run = load_run(tmp_path / "r")
    samples, data = run.train_samples()
    given = torch.tensor(data["given_labels"])
    feats = run_features(run, samples, progress=False)
    probs = predict_logits(run.method, feats.plain_view(), 64).softmax(dim=-1)
    purifier = GMMPurifier(GMMOptions())
    purifier.load_state_dict(ckpt.load_state(tmp_path / "r")["method_extra"])
    assert purifier.partitions == 3 and len(purifier.history) == 3
    generator = torch.Generator().manual_seed(epoch_seed(run.cfg.train_seed, 3) + 1)
    split = purifier.split(probs, given, epoch=3, num_epochs=4, generator=generator)
    by_path = {r["path"]: r["verdict"] for r in rows}
    expected = {s.path: "noisy" if bool(split.noisy[i]) else "clean" for i, s in enumerate(samples)}
    assert by_path == expected
    assert issues.summary["num_flagged_noisy"] == int(split.noisy.sum())
    truth = torch.tensor(data["true_labels"])
    wrong = given != truth
    assert issues.summary["noisy_recall"] == pytest.approx(
        int((split.noisy & wrong).sum()) / int(wrong.sum())
    )
