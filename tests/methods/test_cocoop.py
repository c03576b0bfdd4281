"""CoCoOp: the per-image context C + metanet(z) and its logits, against a direct computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from vp_testing import rel_err, run_overrides

from visprompt.backbone import load_backbone
from visprompt.config import load_run_config
from visprompt.engine.reload import evaluate_run
from visprompt.engine.run import train_run
from visprompt.engine.run_folder import read_metrics
from visprompt.methods import METHOD_REGISTRY
from visprompt.methods.base import FeatureBatch
from visprompt.methods.cocoop import CoCoOp, CoCoOpConfig

CLASSES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(name="tiny-vit", device="cpu")


@pytest.fixture
def method(backbone):
    torch.manual_seed(0)
    m = CoCoOp(backbone, CLASSES, CoCoOpConfig())
    # move the meta-net's output layer off its tiny initialisation so the shift is visible
    with torch.no_grad():
        m.meta_net[2].weight.normal_(0, 0.5)
        m.meta_net[2].bias.normal_(0, 0.5)
    return m


def test_config_and_architecture_follow_the_reference(backbone, method):
    d_img, width = backbone.embed_dim, method.prompt.width
    assert method.config.requirements().per_image_prompts and method.class_text_features() is None
    assert method.prompt.n_ctx == 4  # "a photo of a"
    init = backbone.embed_tokens(torch.tensor([backbone.bpe("a photo of a")]))[0].float()
    assert torch.equal(CoCoOp(backbone, CLASSES, CoCoOpConfig()).prompt.ctx.detach(), init)
    lin1, relu, lin2 = method.meta_net
    assert (lin1.in_features, lin1.out_features) == (d_img, max(1, d_img // 16))
    assert isinstance(relu, torch.nn.ReLU) and lin2.out_features == width
    entry = METHOD_REGISTRY.get("cocoop")
    assert entry.text_cost == "B·K"
    assert entry.defaults == {"optim.epochs": 10, "optim.batch_size": 1, "optim.lr": 0.002}


def test_per_image_context_and_logits_match_a_manual_computation(backbone, method):
    z = F.normalize(torch.randn(3, backbone.embed_dim, generator=torch.Generator().manual_seed(1)))
    sd = method.state_dict()
    hidden = torch.relu(z @ sd["meta_net.0.weight"].T + sd["meta_net.0.bias"])
    shift = hidden @ sd["meta_net.2.weight"].T + sd["meta_net.2.bias"]  # (B, d)
    expected_ctx = sd["prompt.ctx"][None] + shift[:, None, :]  # every token shifted alike
    torch.testing.assert_close(method.contexts(z), expected_ctx)

    with torch.no_grad():
        logits = method(FeatureBatch(image=z))
    prompts = method.prompt.prompts
    base = backbone.embed_tokens(prompts.token_ids).float()
    manual = torch.empty(3, len(CLASSES))
    for b in range(3):
        emb = base.clone()
        for k in range(len(CLASSES)):
            emb[k, prompts.ctx_positions[k]] = expected_ctx[b]
        with torch.no_grad():
            text = backbone.encode_prompts(emb, prompts.eot_index)  # full prompts, one image
        manual[b] = backbone.logit_scale * F.normalize(text, dim=-1) @ z[b]
    assert rel_err(logits, manual) < 1e-5
    # the shift matters: the shared context alone gives other logits
    with torch.no_grad():
        shared = backbone.logit_scale * z @ method.prompt.text_features().T
    assert (logits - shared).abs().max() > 1e-2


def test_gradients_reach_context_and_meta_net(backbone, method):
    z = F.normalize(torch.randn(2, backbone.embed_dim))
    loss = F.cross_entropy(method(FeatureBatch(image=z)), torch.tensor([0, 2]))
    loss.backward()
    grads = {n: p.grad for n, p in method.named_parameters()}
    assert set(grads) == {
        "prompt.ctx",
        *(f"meta_net.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")),
    }
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())


@pytest.mark.parametrize("protocol", ["relabel", "balanced"])
def test_trains_on_the_colour_dataset_at_half_noise(colour_dataset, tmp_path, protocol):
    over = run_overrides(
        colour_dataset,
        "cocoop",
        **{"noise.type": "sym", "noise.rate": 0.5, "noise.protocol": protocol, "optim.epochs": 2},
    )
    cfg = load_run_config(None, over)
    assert cfg.optim.batch_size == 8  # the user's value wins over the method default (1)
    result = train_run(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)
    assert result["num_train"] == 32 and result["num_noisy"] == 16
    assert result["noise_protocol"] == protocol
    # the reported number is the saved model's: `eval` on the run folder gives it again
    assert evaluate_run(tmp_path / "run", progress=False)["accuracy"] == pytest.approx(
        result["test_accuracy"]
    )
