"""The feature-level and CoOp-family baselines: each one's defining computation, by hand.

Restated from the reference code (commit and file in each method's docstring):
geekyutao/TaskRes 5195359 ``trainers/taskres.py``; gaopengcuhk/CLIP-Adapter
08d07f8 ``clip_adapter.py``; jusiro/CLAP dbdf409 ``trainers/adapters.py``
(``zero_shot_constraint``, ``init_lagrangian_multipliers``); htyao89/KgCoOp
c43ccc3 ``KgCoOp/trainers/kgcoop.py``; BeierZhu/Prompt-align 1b76203
``Dassl.ProGrad.pytorch/dassl/engine/trainer.py`` (``prograd_backward_and_update``);
KaiyangZhou/CoOp ff61507 ``lpclip/linear_probe.py`` (the C search); gaopengcuhk/Tip-Adapter
d0e2d6f ``main.py`` (``run_tip_adapter``, ``run_tip_adapter_F``) and ``utils.py``
(``build_cache_model``, ``search_hp``).

TaskRes, CLIP-Adapter, ZS-LP, CLAP (heads on the frozen features against the
zero-shot classifier), KgCoOp (CoOp + distance to the zero-shot text features)
and ProGrad (CoOp with the CE gradient projected off the zero-shot KL's
conflicting direction). The contract tests (tests/contract) train, checkpoint
and resume each of them like every registered method.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from vp_testing import rel_err

from visprompt.backbone import load_backbone
from visprompt.config import load_run_config
from visprompt.data.features import FeatureBatch
from visprompt.methods import METHOD_REGISTRY, EpochContext, TrainBatch
from visprompt.methods.clap import class_adaptive_weights
from visprompt.methods.prograd import project_conflict
from visprompt.methods.zeroshot import zero_shot_weights

CLASSES = ["red", "green", "blue", "yellow"]
TEMPLATES = ("a photo of a {}.", "a {} thing.")


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(name="tiny-vit", device="cpu")


def build(backbone, name: str, **options):
    entry = METHOD_REGISTRY.get(name)
    torch.manual_seed(0)
    return entry.cls(backbone, CLASSES, entry.config_cls(**options), templates=TEMPLATES)


def batch(backbone, labels=(0, 1, 2, 3, 3, 1)) -> TrainBatch:
    g = torch.Generator().manual_seed(4)
    image = F.normalize(torch.randn(len(labels), backbone.embed_dim, generator=g), dim=-1)
    n = len(labels)
    return TrainBatch(FeatureBatch(image), torch.tensor(labels), torch.arange(n), torch.zeros(n))


def hand_logits(backbone, image, weights):
    return backbone.logit_scale * F.normalize(image, dim=-1) @ F.normalize(weights, dim=-1).T


def zero_shot(backbone) -> torch.Tensor:
    feats = [
        F.normalize(backbone.encode_text([t.format(c) for t in TEMPLATES]).mean(0), dim=-1)
        for c in CLASSES
    ]
    return torch.stack(feats)


def test_zero_shot_weights_average_the_normalised_templates(backbone):
    assert rel_err(zero_shot_weights(backbone, CLASSES, TEMPLATES), zero_shot(backbone)) < 1e-6


@pytest.mark.parametrize("name", ["taskres", "clip-adapter", "zs-lp", "clap"])
def test_feature_heads_start_as_zero_shot_clip(backbone, name):
    method = build(backbone, name)
    b = batch(backbone)
    expected = hand_logits(backbone, b.features.image, zero_shot(backbone))
    if name == "clip-adapter":  # a random adapter: zero-shot only at ratio 0
        method = build(backbone, name, ratio=0.0)
    assert rel_err(method(b.features).detach(), expected) < 1e-5


def test_taskres_logits_use_the_scaled_residual(backbone):
    method = build(backbone, "taskres", alpha=0.5)
    with torch.no_grad():
        method.residual.normal_(0, 0.3)
    b = batch(backbone)
    t = zero_shot(backbone) + 0.5 * method.residual.detach()
    assert rel_err(method(b.features).detach(), hand_logits(backbone, b.features.image, t)) < 1e-5


def test_clip_adapter_mixes_the_adapted_feature(backbone):
    method = build(backbone, "clip-adapter", ratio=0.2)
    b = batch(backbone)
    z = b.features.image
    w1, w2 = method.adapter[0].weight.detach(), method.adapter[2].weight.detach()
    adapted = 0.2 * torch.relu(torch.relu(z @ w1.T) @ w2.T) + 0.8 * z
    expected = hand_logits(backbone, adapted, zero_shot(backbone))
    assert rel_err(method(b.features).detach(), expected) < 1e-5
    assert w1.shape == (backbone.embed_dim // 4, backbone.embed_dim)


def test_clap_weights_are_the_zero_shot_confidence_of_each_labelled_class():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    labels = torch.tensor([0, 0, 1, 0])
    alpha = class_adaptive_weights(probs, labels)
    assert torch.allclose(alpha, torch.tensor([(0.7 + 0.5 + 0.2) / 3, 0.6, 0.0]))


def test_clap_loss_is_ce_plus_the_class_adaptive_distance(backbone):
    method = build(backbone, "clap")
    b = batch(backbone)
    probs = hand_logits(backbone, b.features.image, zero_shot(backbone)).softmax(-1)
    ctx = EpochContext(
        epoch=0,
        num_epochs=2,
        batch_size=4,
        labels=b.labels,
        true_labels=None,
        generator=torch.Generator().manual_seed(0),
        predict_train=lambda: probs,
    )
    method.start_epoch(ctx)
    alpha = torch.stack([probs[b.labels == k, k].mean() for k in range(4)])
    assert rel_err(method.alpha, alpha) < 1e-6
    with torch.no_grad():
        method.prototypes.add_(0.1 * torch.randn_like(method.prototypes))
    w = method.prototypes.detach()
    ce = F.cross_entropy(hand_logits(backbone, b.features.image, w), b.labels)
    expected = ce + (alpha * (w - zero_shot(backbone)).pow(2).sum(1)).mean()
    assert rel_err(method.training_loss(b).loss.detach(), expected) < 1e-5
    # the weights survive a resume: they are the method's extra state
    other = build(backbone, "clap")
    other.load_extra_state(method.extra_state())
    assert torch.equal(other.alpha, method.alpha)


def test_kgcoop_adds_lambda_times_one_minus_the_mean_cosine(backbone):
    method = build(backbone, "kgcoop", weight=8.0)
    b = batch(backbone)
    out = method.training_loss(b)
    with torch.no_grad():
        text = method.prompt.text_features()
        ce = F.cross_entropy(hand_logits(backbone, b.features.image, text), b.labels)
        anchor = zero_shot(backbone)
        cos = (F.normalize(text, dim=-1) * anchor).sum(-1)
        # 1 - cos = ||w - w_zs||^2 / 2 for unit vectors: the paper's squared distance
        half_sq = 0.5 * (F.normalize(text, dim=-1) - anchor).pow(2).sum(-1)
    assert rel_err(1 - cos, half_sq) < 1e-5
    assert rel_err(out.loss.detach(), ce + 8.0 * (1 - cos.mean())) < 1e-5
    assert method.prompt.n_ctx == 4  # "a photo of a"


def test_prograd_projection_by_hand():
    g, g_kl = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    assert torch.allclose(project_conflict(g, g_kl, 1.0), torch.tensor([0.5, 0.5]))
    assert (project_conflict(g, g_kl, 1.0) * g_kl).sum().abs() < 1e-7  # orthogonal to g_kl
    assert torch.allclose(project_conflict(g, g_kl, 0.8), g - 0.8 * (-0.5) * g_kl)
    assert torch.equal(project_conflict(g, torch.tensor([1.0, 1.0]), 1.0), g)  # no conflict
    assert torch.equal(project_conflict(g, torch.zeros(2), 1.0), g)


def test_prograd_step_gradient_is_the_projected_ce_gradient(backbone):
    method = build(backbone, "prograd", weight=1.0, temperature=2.0)
    b = batch(backbone)
    # the hand computation: autograd of CE and of the T^2-scaled distillation loss
    text = method.prompt.text_features()
    logits = hand_logits(backbone, b.features.image, text)
    teacher = hand_logits(backbone, b.features.image, zero_shot(backbone))
    ce = F.cross_entropy(logits, b.labels)
    kl = 4.0 * F.kl_div(
        (logits / 2).log_softmax(-1), (teacher / 2).softmax(-1), reduction="batchmean"
    )
    (g,) = torch.autograd.grad(ce, [method.prompt.ctx], retain_graph=True)
    (gk,) = torch.autograd.grad(kl, [method.prompt.ctx])
    dot = (g * gk).sum()
    expected = g - dot / (gk * gk).sum() * gk if dot < 0 else g
    out = method.training_loss(b)
    method.zero_grad()
    out.loss.backward()
    assert rel_err(method.prompt.ctx.grad, expected) < 1e-4
    assert rel_err(out.loss.detach(), ce.detach()) < 1e-6  # the logged loss is the CE


@pytest.mark.parametrize(
    ("name", "optim"),
    [
        ("taskres", ("adam", 0.002, 256, 200)),
        ("clap", ("sgd", 0.1, 256, 300)),
        ("zs-lp", ("sgd", 0.1, 256, 300)),
        ("kgcoop", ("sgd", 0.002, 128, 100)),
        ("prograd", ("sgd", 0.002, 32, 200)),
        ("clip-adapter", ("sgd", 0.002, 32, 200)),
    ],
)
def test_reference_defaults(name, optim):
    cfg = load_run_config(
        None, ["backbone.name=tiny-vit", "data.dataset=folder", f"method.name={name}"]
    )
    o = cfg.optim
    assert (o.name, o.lr, o.batch_size, o.epochs) == optim


# ---------------------------------------------------------------- linear-probe (lpclip)


def lpclip_reference(acc_of, steps=8):
    """KaiyangZhou/CoOp ff61507 lpclip/linear_probe.py l.53-118, restated: the coarse list,
    ``np.argmax`` peak, then ``binary_search`` (ranges in log10, ``np.power(10, .)``)."""
    import numpy as np

    search_list = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    acc_list = [acc_of(c) for c in search_list]
    c_peak = search_list[np.argmax(acc_list)]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    ranges, c_final = [], c_peak
    for _ in range(steps):
        ranges.append((c_left, c_right))
        acc_left, acc_right = acc_of(c_left), acc_of(c_right)
        if acc_left < acc_right:
            c_final = c_right
            c_left = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_right = np.log10(c_right)
        else:
            c_final = c_left
            c_right = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_left = np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    return ranges, c_final


@pytest.mark.parametrize(
    "acc_of",
    [
        lambda c: -abs(math.log10(c) - 0.3),  # a peak at 10^0.3, between grid values
        lambda c: float(round(math.log10(c)) % 3 == 0),  # plateaus: every tie rule decides
        lambda c: -abs(math.log10(c) + 3.7),
    ],
)
def test_lpclip_search_is_the_references(acc_of):
    from visprompt.methods.linear_probe import LPCLIP_GRID, lpclip_search

    ranges, final = lpclip_reference(acc_of)
    ours = lpclip_search(acc_of, LPCLIP_GRID, 8)
    assert [(s[0], s[2]) for s in ours.steps] == ranges  # to the bit
    assert ours.chosen == final


def test_lpclip_on_a_real_problem_chooses_the_references_c(backbone):
    """The whole fit: restated lpclip (sklearn fits on train, predict on val) against ours."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from visprompt.data.features import SplitFeatures
    from visprompt.data.types import Sample
    from visprompt.data.validation_split import ValidationSplit
    from visprompt.methods.fitted import FitData

    g = torch.Generator().manual_seed(7)
    centres = torch.randn(4, backbone.embed_dim, generator=g)
    y, yv = torch.arange(4).repeat(8), torch.arange(4).repeat(4)
    x = F.normalize(centres[y] + 2.5 * torch.randn(32, backbone.embed_dim, generator=g), dim=-1)
    xv = F.normalize(centres[yv] + 2.5 * torch.randn(16, backbone.embed_dim, generator=g), dim=-1)
    xn, xvn = x.double().numpy(), xv.double().numpy()

    def acc_of(c):  # the reference's fit and score, l.57-60 and l.70-78
        clf = LogisticRegression(solver="lbfgs", max_iter=1000, C=c).fit(xn, y.numpy())
        return sum(clf.predict(xvn) == yv.numpy()) / len(yv)

    _, final = lpclip_reference(acc_of)
    method = build(backbone, "linear-probe")
    ok = torch.ones(32, dtype=torch.bool)
    samples = tuple(Sample(f"/v/{i}", int(t), CLASSES[int(t)]) for i, t in enumerate(yv))
    val = ValidationSplit(samples, 4, cache=None, _features=SplitFeatures(xv, ok[:16]))
    method.fit_data(FitData(SplitFeatures(x, ok), y, val))
    assert method.fit().chosen == final
    clf = LogisticRegression(solver="lbfgs", max_iter=1000, C=final).fit(xn, y.numpy())
    assert np.array_equal(method(FeatureBatch(xv)).argmax(1).numpy(), clf.predict(xvn))


# ---------------------------------------------------------------- tip-adapter


def tip_reference_search(cfg, cache_keys, cache_values, features, labels, clip_weights, scale):
    """gaopengcuhk/Tip-Adapter d0e2d6f utils.py ``search_hp`` l.99-129, restated (``100.``
    replaced by the model's ``scale``; cache_keys D x M, clip_weights D x K as there)."""
    beta_list = [
        i * (cfg["search_scale"][0] - 0.1) / cfg["search_step"][0] + 0.1
        for i in range(cfg["search_step"][0])
    ]
    alpha_list = [
        i * (cfg["search_scale"][1] - 0.1) / cfg["search_step"][1] + 0.1
        for i in range(cfg["search_step"][1])
    ]
    best_acc, best_beta, best_alpha = 0, 0, 0
    for beta in beta_list:
        for alpha in alpha_list:
            affinity = features @ cache_keys
            cache_logits = ((-1) * (beta - beta * affinity)).exp() @ cache_values
            clip_logits = scale * features @ clip_weights
            tip_logits = clip_logits + cache_logits * alpha
            acc = 100.0 * float((tip_logits.argmax(1) == labels).float().mean())
            if acc > best_acc:
                best_acc, best_beta, best_alpha = acc, beta, alpha
    return best_beta, best_alpha, best_acc


def test_tip_adapter_logits_and_search_are_the_references(backbone):
    from visprompt.data.features import SplitFeatures
    from visprompt.data.types import Sample
    from visprompt.data.validation_split import ValidationSplit
    from visprompt.methods.fitted import FitData

    g = torch.Generator().manual_seed(3)
    centres = torch.randn(4, backbone.embed_dim, generator=g)
    y, yv = torch.arange(4).repeat(4), torch.arange(4).repeat(5)
    x = centres[y] + 1.2 * torch.randn(16, backbone.embed_dim, generator=g)
    xv = centres[yv] + 1.2 * torch.randn(20, backbone.embed_dim, generator=g)
    yv_given = yv.clone()
    yv_given[::4] = (yv[::4] + 2) % 4
    cfg = {"search_scale": [7, 3], "search_step": [30, 10]}
    method = build(backbone, "tip-adapter", search_scale=(7.0, 3.0), search_steps=(30, 10))
    ok = torch.ones(16, dtype=torch.bool)
    samples = tuple(Sample(f"/v/{i}", int(t), CLASSES[int(t)]) for i, t in enumerate(yv_given))
    val = ValidationSplit(samples, 4, cache=None, _features=SplitFeatures(xv, ok.repeat(2)[:20]))
    method.fit_data(FitData(SplitFeatures(x, ok), y, val, batch_size=7))
    # the cache of build_cache_model (one pass: keys normalised, D x M; values one-hot)
    cache_keys = F.normalize(x, dim=-1).t()
    cache_values = F.one_hot(y).float()
    clip_weights = F.normalize(method.zs_text, dim=-1).t()
    fv = F.normalize(xv, dim=-1)  # pre_load_features normalises val/test features
    beta, alpha, acc = tip_reference_search(
        cfg, cache_keys, cache_values, fv, yv_given, clip_weights, backbone.logit_scale
    )
    assert acc > 0  # the reference's start at 0 and ours at "none yet" agree here
    assert (method.beta(), method.alpha()) == (beta, alpha)
    assert method.val_accuracy == pytest.approx(acc)
    # run_tip_adapter's test logits at the chosen pair (main.py l.55-60)
    affinity = fv @ cache_keys
    ref = (
        backbone.logit_scale * fv @ clip_weights
        + ((-1) * (beta - beta * affinity)).exp() @ cache_values * alpha
    )
    assert rel_err(method(FeatureBatch(xv)), ref) < 1e-6


def test_tip_adapter_f_step_is_the_references(backbone):
    """run_tip_adapter_F l.70-99: keys = adapter.weight (M x D) trained by AdamW on CE of the
    logits at the initial alpha, beta; one step of ours equals one of the restated loop."""
    from visprompt.data.features import SplitFeatures
    from visprompt.data.types import Sample
    from visprompt.data.validation_split import ValidationSplit
    from visprompt.methods.fitted import FitData

    g = torch.Generator().manual_seed(5)
    y = torch.arange(4).repeat(3)
    x = torch.randn(12, backbone.embed_dim, generator=g)
    method = build(backbone, "tip-adapter-f", search_steps=(3, 2))
    ok = torch.ones(12, dtype=torch.bool)
    samples = tuple(Sample(f"/v/{i}", int(t), CLASSES[int(t)]) for i, t in enumerate(y))
    val = ValidationSplit(samples, 4, cache=None, _features=SplitFeatures(x, ok))
    method.fit_data(FitData(SplitFeatures(x, ok), y, val))
    adapter = torch.nn.Linear(backbone.embed_dim, 12, bias=False)
    adapter.weight = torch.nn.Parameter(F.normalize(x, dim=-1).clone())
    ref_opt = torch.optim.AdamW(adapter.parameters(), lr=0.001)
    ours_opt = torch.optim.AdamW(method.parameters(), lr=0.001)
    cache_values = F.one_hot(y).float()
    clip_weights = F.normalize(method.zs_text, dim=-1).t()
    beta, alpha = 1.0, 1.17  # init_beta, init_alpha
    batch_x = F.normalize(torch.randn(6, backbone.embed_dim, generator=g), dim=-1)
    batch_y = torch.tensor([0, 1, 2, 3, 0, 1])
    for _ in range(2):
        affinity = adapter(batch_x)
        cache_logits = ((-1) * (beta - beta * affinity)).exp() @ cache_values
        tip = backbone.logit_scale * batch_x @ clip_weights + cache_logits * alpha
        ref_opt.zero_grad()
        F.cross_entropy(tip, batch_y).backward()
        ref_opt.step()
        ours_opt.zero_grad()
        F.cross_entropy(method(FeatureBatch(batch_x)), batch_y).backward()
        ours_opt.step()
    assert rel_err(method.key_weights, adapter.weight) < 1e-6
