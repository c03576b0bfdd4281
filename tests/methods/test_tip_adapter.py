"""tip-adapter / tip-adapter-f: the cache logits by hand, the val search, the OT-purified cache."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from vp_testing import rel_err

from visprompt.backbone import load_backbone
from visprompt.data.features import FeatureBatch, SplitFeatures
from visprompt.data.types import Sample
from visprompt.data.validation_split import ValidationSplit
from visprompt.methods import METHOD_REGISTRY
from visprompt.methods.fitted import FitData
from visprompt.methods.tip_adapter import search_grid
from visprompt.robust.purifier import build_purifier

CLASSES = ["red", "green", "blue", "yellow"]
TEMPLATES = ("a photo of a {}.",)


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(name="tiny-vit", device="cpu")


def features(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(CLASSES)).repeat(n)
    centres = torch.randn(len(CLASSES), dim, generator=torch.Generator().manual_seed(0))
    return centres[labels] + 0.8 * torch.randn(labels.numel(), dim, generator=g), labels


def val_split(image, labels) -> ValidationSplit:
    samples = tuple(Sample(f"/v/{i}.png", int(y), CLASSES[int(y)]) for i, y in enumerate(labels))
    ok = torch.ones(len(samples), dtype=torch.bool)
    return ValidationSplit(samples, len(CLASSES), cache=None, _features=SplitFeatures(image, ok))


def build(backbone, name, x, y, xv, yv, **options):
    entry = METHOD_REGISTRY.get(name)
    method = entry.cls(backbone, CLASSES, entry.config_cls(name=name, **options), TEMPLATES)
    ok = torch.ones(len(y), dtype=torch.bool)
    method.fit_data(FitData(SplitFeatures(x, ok), y, val_split(xv, yv), batch_size=5))
    return method


def hand_logits(backbone, method, image, keys, values, alpha, beta):
    """Per image and class, the sum written out: s cos(f, t_k) + alpha sum_m A_m Y_mk."""
    f = F.normalize(image, dim=-1)
    t = F.normalize(method.zs_text, dim=-1)
    out = torch.zeros(image.shape[0], len(CLASSES), dtype=torch.float64)
    for b in range(image.shape[0]):
        for k in range(len(CLASSES)):
            total = backbone.logit_scale * float(f[b] @ t[k])
            for m in range(keys.shape[0]):
                total += alpha * math.exp(-beta * (1 - float(f[b] @ keys[m]))) * float(values[m, k])
            out[b, k] = total
    return out


def test_logits_are_the_cache_formula_and_alpha_zero_is_zero_shot(backbone):
    d = backbone.embed_dim
    x, y = features(3, d, seed=1)
    xv, yv = features(2, d, seed=2)
    method = build(backbone, "tip-adapter", x, y, xv, yv, search_steps=(4, 3))
    xt, _ = features(1, d, seed=3)
    keys = F.normalize(x, dim=-1)
    values = F.one_hot(y, len(CLASSES)).float()
    ours = method(FeatureBatch(xt))
    expected = hand_logits(backbone, method, xt, keys, values, method.alpha(), method.beta())
    assert rel_err(ours, expected) < 1e-5
    method.set_choice(beta=2.0, alpha=0.0)
    zs = backbone.logit_scale * F.normalize(xt, dim=-1) @ F.normalize(method.zs_text, dim=-1).T
    assert rel_err(method(FeatureBatch(xt)), zs) < 1e-6


def test_the_search_picks_the_first_best_pair_on_val(backbone):
    d = backbone.embed_dim
    x, y = features(3, d, seed=1)
    xv, yv = features(3, d, seed=4)
    yv_given = yv.clone()
    yv_given[::3] = (yv[::3] + 1) % 4  # the val labels the search sees
    method = build(backbone, "tip-adapter", x, y, xv, yv_given, search_steps=(6, 5))
    betas, alphas = search_grid(7.0, 6), search_grid(3.0, 5)
    assert betas == [0.1 + i * 6.9 / 6 for i in range(6)]  # the upper end is never reached
    best, pair = -1, None
    for beta in betas:  # beta outer, alpha inner, strictly better replaces
        for alpha in alphas:
            method.set_choice(beta=beta, alpha=alpha)
            correct = int((method(FeatureBatch(xv)).argmax(1) == yv_given).sum())
            if correct > best:
                best, pair = correct, (beta, alpha)
    method.search()
    assert (method.beta(), method.alpha()) == pair
    assert method.val_accuracy == pytest.approx(100.0 * best / len(yv))


def test_tip_f_starts_as_tip_adapter_and_trains_only_its_keys(backbone):
    d = backbone.embed_dim
    x, y = features(3, d, seed=1)
    xv, yv = features(2, d, seed=2)
    free = build(backbone, "tip-adapter", x, y, xv, yv, search_steps=(4, 3))
    tuned = build(backbone, "tip-adapter-f", x, y, xv, yv, search_steps=(4, 3))
    xt, _ = features(1, d, seed=3)
    free.set_choice(beta=1.0, alpha=1.17)  # Tip-F trains at the initial alpha, beta
    assert rel_err(tuned(FeatureBatch(xt)), free(FeatureBatch(xt))) < 1e-6
    assert {n for n, p in tuned.named_parameters() if p.requires_grad} == {
        "key_weights",
        "alpha_param",
        "beta_param",
    }
    loss = F.cross_entropy(tuned(FeatureBatch(xt)), torch.arange(4))
    loss.backward()
    assert tuned.key_weights.grad.abs().sum() > 0
    assert tuned.alpha_param.grad is None and tuned.beta_param.grad is None  # search only


def test_ot_purified_cache_keeps_the_entries_ot_judges_clean(backbone):
    d = backbone.embed_dim
    x, y = features(4, d, seed=1)
    noisy = y.clone()
    noisy[:5] = (y[:5] + 1) % 4
    xv, yv = features(2, d, seed=2)
    method = build(backbone, "tip-adapter", x, noisy, xv, yv, purify="ot", search_steps=(4, 3))
    probs = method.zero_shot_logits(x).softmax(-1)
    clean = build_purifier("ot", method.config).split(probs, noisy, epoch=0, num_epochs=1).clean
    assert 0 < int(clean.sum()) < len(noisy)
    assert torch.equal(method.kept, clean)
    assert torch.equal(method.keys(), F.normalize(x[clean], dim=-1))
    assert torch.equal(method.values, F.one_hot(noisy[clean], 4).float())


@pytest.mark.parametrize("name", ["linear-probe", "tip-adapter", "tip-adapter-f"])
def test_a_finished_run_records_its_choice_and_reloads_to_the_same_accuracy(
    name, colour_dataset, tmp_path
):
    from vp_testing import run_overrides

    from visprompt.config import load_run_config
    from visprompt.engine.reload import evaluate_run
    from visprompt.engine.run import train_run

    extra = {"data.shots": 4, "noise.type": "sym", "noise.rate": 0.25, "optim.epochs": 2}
    if name != "tip-adapter-f":
        extra.pop("optim.epochs")
    cfg = load_run_config(None, run_overrides(colour_dataset, name, **extra))
    result = train_run(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    fit = result["fit"]
    assert fit["val_labels"] == "noisy" and fit["val_noise"] == "sym"
    assert fit["val_images"] > 0 and 0 <= fit["val_accuracy"] <= 100
    assert ("C" in fit) == (name == "linear-probe") and ("alpha" in fit) != (name == "linear-probe")
    again = evaluate_run(tmp_path / "run", progress=False)
    assert again["accuracy"] == pytest.approx(result["test_accuracy"])
