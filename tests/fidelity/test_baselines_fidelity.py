"""The feature-level and CoOp-family baselines: each one's defining computation, by hand.

Restated from the reference code (commit and file in each method's docstring):
geekyutao/TaskRes 5195359 ``trainers/taskres.py``; gaopengcuhk/CLIP-Adapter
08d07f8 ``clip_adapter.py``; jusiro/CLAP dbdf409 ``trainers/adapters.py``
(``zero_shot_constraint``, ``init_lagrangian_multipliers``); htyao89/KgCoOp
c43ccc3 ``KgCoOp/trainers/kgcoop.py``; BeierZhu/Prompt-align 1b76203
``Dassl.ProGrad.pytorch/dassl/engine/trainer.py`` (``prograd_backward_and_update``).

TaskRes, CLIP-Adapter, ZS-LP, CLAP (heads on the frozen features against the
zero-shot classifier), KgCoOp (CoOp + distance to the zero-shot text features)
and ProGrad (CoOp with the CE gradient projected off the zero-shot KL's
conflicting direction). The contract tests (tests/contract) train, checkpoint
and resume each of them like every registered method.
"""

from __future__ import annotations

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
