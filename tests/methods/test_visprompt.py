"""VisPrompt's prompt module: per-image prompts, CoOp at step 0, ablations, frozenness."""

from __future__ import annotations

import pytest
import torch
from vp_testing import rel_err

from visprompt.backbone import load_backbone
from visprompt.backbone.loader import tiny_clip
from visprompt.config import load_run_config
from visprompt.engine.assembly import build_backbone
from visprompt.errors import VispromptError
from visprompt.methods import METHOD_REGISTRY, FeatureBatch, TrainBatch
from visprompt.methods.base import EpochContext
from visprompt.methods.coop import CoOp, CoOpConfig
from visprompt.methods.visprompt import VisPrompt, VisPromptConfig, reliability_signal

CLASSES = ["red", "green", "blue", "yellow", "purple"]


@pytest.fixture(scope="module")
def vit():
    return load_backbone(name="tiny-vit", device="cpu")


def make(backbone, **options) -> VisPrompt:
    torch.manual_seed(0)
    cfg = VisPromptConfig(n_ctx=4, pool_size=4, hidden_dim=32, heads=4, **options)
    return VisPrompt(backbone, CLASSES, cfg)


def features(backbone, b=3, patches=False, seed=1) -> FeatureBatch:
    g = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.normalize(torch.randn(b, backbone.embed_dim, generator=g), dim=-1)
    tokens = torch.randn(b, 21, backbone.embed_dim, generator=g) if patches else None
    return FeatureBatch(image=image, patches=tokens)


def perturb(method: VisPrompt) -> None:
    """Move every zero-initialised weight so the per-image paths are active."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in method.visual.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def test_step_zero_equals_coop(vit):
    method = make(vit).eval()
    coop = CoOp(vit, CLASSES, CoOpConfig(n_ctx=4)).eval()
    coop.prompt.ctx.data.copy_(method.prompt.ctx.data)
    feats = features(vit)
    assert rel_err(method(feats), coop(feats)) < 1e-5


def test_prompts_differ_per_image_and_collapse_to_coop_without_the_paths(vit):
    method = make(vit).eval()
    perturb(method)
    feats = features(vit, b=4)
    contexts, _ = method.image_contexts(feats)
    assert contexts.shape == (4, 4, vit.text_width)
    assert (contexts[0] - contexts[1]).abs().max() > 1e-3
    off = make(vit, attention=False, film=False, gate=False).eval()
    assert sum(p.numel() for p in off.visual.parameters()) == 0
    contexts, _ = off.image_contexts(feats)
    assert torch.equal(contexts, off.prompt.ctx.expand(4, -1, -1))
    coop = CoOp(vit, CLASSES, CoOpConfig(n_ctx=4)).eval()
    coop.prompt.ctx.data.copy_(off.prompt.ctx.data)
    assert rel_err(off(feats), coop(feats)) < 1e-5


def test_per_image_logits_match_a_manual_computation(vit):
    method = make(vit).eval()
    perturb(method)
    feats = features(vit, b=2)
    contexts, _ = method.image_contexts(feats)
    logits = method(feats)
    for b in range(2):
        text = method.prompt.text_features(contexts[b])  # (K, D) for image b's context
        expected = method.logit_scale * feats.image[b] @ text.t()
        assert rel_err(logits[b], expected) < 1e-5


@pytest.mark.parametrize(
    ("switch", "absent"),
    [
        ("attention", ("pool", "slots", "q", "k", "v", "out", "norm_q", "norm_kv")),
        ("film", ("film_gamma", "film_beta")),
        ("gate", ("gate",)),
    ],
)
def test_switching_a_path_off_removes_its_parameters(vit, switch, absent):
    on, off = make(vit), make(vit, **{switch: False})
    on_names = {n.split(".")[0] for n, _ in on.visual.named_parameters()}
    off_names = {n.split(".")[0] for n, _ in off.visual.named_parameters()}
    assert set(absent) <= on_names
    assert not set(absent) & off_names


def test_gate_uses_the_shared_prompt_reliability(vit):
    method = make(vit).eval()
    perturb(method)
    feats = features(vit, b=3)
    calls = []
    real = method.visual.forward

    def spy(ctx, image, patches, reliability):
        calls.append(reliability)
        return real(ctx, image, patches, reliability)

    method.visual.forward = spy
    method.image_contexts(feats)
    shared = method.prompt.text_features()
    logits = method.logit_scale * feats.image @ shared.t()
    probs = logits.softmax(-1)
    entropy = -(probs * probs.log()).sum(-1) / torch.log(torch.tensor(5.0))
    assert rel_err(calls[0][:, 0], probs.max(-1).values) < 1e-5
    assert rel_err(calls[0][:, 1], entropy) < 1e-5
    assert reliability_signal(logits).requires_grad is False


def test_patch_tokens_are_used_only_with_visual_tokens_patches(vit):
    pool = make(vit)
    assert not pool.config.requirements().patch_tokens and not hasattr(pool.visual, "patch_proj")
    patches = make(vit, visual_tokens="patches").train()
    perturb(patches)
    assert patches.config.requirements().patch_tokens
    feats = features(vit, b=2, patches=True)
    batch = TrainBatch(feats, torch.tensor([0, 1]), torch.tensor([0, 1]), torch.zeros(2).long())
    patches.training_loss(batch).loss.backward()
    assert patches.visual.patch_proj.weight.grad.abs().sum() > 0


def test_patches_on_a_resnet_checkpoint_file_is_refused_when_it_loads(tmp_path):
    # a file's image tower is unknown to the config layer: the engine checks the
    # method's declared requirement against the loaded model, before any work
    path = tmp_path / "rn.pt"
    torch.save(tiny_clip("rn").state_dict(), path)
    cfg = load_run_config(
        None,
        [
            f"backbone.checkpoint={path}",
            "data.dataset=folder",
            "method.name=visprompt",
            "method.visual_tokens=patches",
        ],
    )
    with pytest.raises(VispromptError, match="needs a ViT image tower, but .* is a ResNet; use"):
        build_backbone(cfg)


def test_purify_none_never_runs_the_purification_pass(vit):
    method = make(vit, purify="none")
    called = []

    def predict():
        called.append(1)
        return torch.full((6, 5), 0.2)

    ctx = EpochContext(0, 2, 4, torch.arange(6) % 5, None, torch.Generator(), predict)
    plan = method.start_epoch(ctx)
    assert called == [] and plan.group.eq(0).all()
    assert sorted(torch.cat(plan.batches).tolist()) == list(range(6))
    ot = make(vit)
    ot.start_epoch(ctx)
    assert called == [1]


def test_gradients_reach_only_the_prompt_module_and_backbone_is_untouched(vit):
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    method = make(vit).train()
    perturb(method)
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    feats = features(vit, b=4)
    batch = TrainBatch(
        feats, torch.tensor([0, 1, 2, 3]), torch.arange(4), torch.tensor([0, 0, 1, 1])
    )
    out = method.training_loss(batch)
    out.loss.backward()
    opt.step()
    assert all(p.grad is None for p in vit.parameters())
    assert method.prompt.ctx.grad is not None and method.visual.out.weight.grad is not None
    after = vit.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert out.parts["reg"] > 0


def test_regulariser_is_the_mean_squared_context_shift(vit):
    method = make(vit, dropout=0.0).train()
    perturb(method)
    feats = features(vit, b=3)
    batch = TrainBatch(feats, torch.tensor([0, 1, 2]), torch.arange(3), torch.zeros(3).long())
    out = method.training_loss(batch)
    contexts, _ = method.image_contexts(feats)
    expected = ((contexts - method.prompt.ctx) ** 2).sum(dim=(1, 2)).mean()
    assert out.parts["reg"] == pytest.approx(expected.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(
        out.parts["task_loss"] + 0.01 * expected.item(), rel=1e-5
    )


BASE = ["backbone.name=tiny-vit", "data.dataset=folder", "method.name=visprompt"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.atention=false", "unknown option 'method.atention'; allowed here: attention"),
        ("method.visual_tokens=grid", "bad value for 'method.visual_tokens'"),
        ("method.budget=0", "the OT budget must be in (0, 1]"),
        ("method.budget=1.5", "the OT budget must be in (0, 1]"),
        ("method.ot_reg=0", "epsilon) must be > 0"),
        ("method.ot_reg=-0.01", "epsilon) must be > 0"),
        ("method.class_specific=true", "set method.class_specific=false"),
    ],
)
def test_bad_visprompt_options_fail_before_training(override, message):
    with pytest.raises(VispromptError) as info:
        load_run_config(None, [*BASE, override])
    assert message in str(info.value)


def test_patches_on_a_resnet_is_refused_at_config_time():
    with pytest.raises(VispromptError, match="needs a ViT image tower, but 'tiny-rn'"):
        load_run_config(
            None,
            [
                "backbone.name=tiny-rn",
                "data.dataset=folder",
                "method.name=visprompt",
                "method.visual_tokens=patches",
            ],
        )


def test_reference_defaults():
    cfg = load_run_config(None, BASE)
    m = cfg.method
    assert (m.n_ctx, m.pool_size, m.hidden_dim, m.heads) == (16, 16, 512, 8)
    assert (m.visual_weight, m.dropout, m.reg_weight) == (0.9, 0.1, 0.01)
    assert (cfg.optim.batch_size, cfg.optim.lr, cfg.optim.name) == (16, 0.002, "sgd")
    assert cfg.optim.scheduler == "cosine" and cfg.optim.warmup_epochs == 1
    assert m.ot_reg == 0.01 and m.budget == 1.0 and m.ot_cost == "neg_log_prob"
    assert METHOD_REGISTRY.get("visprompt").text_cost.startswith("B·K")
