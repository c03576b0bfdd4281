"""PTNL: CoOp with GCE (q = 0.5), by default on the class-balanced noise protocol."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from vp_testing import rel_err, run_overrides

from visprompt.backbone import load_backbone
from visprompt.config import load_run_config
from visprompt.errors import VispromptError
from visprompt.methods import METHOD_REGISTRY
from visprompt.methods.base import FeatureBatch, TrainBatch
from visprompt.methods.ptnl import PTNL, PTNLConfig

CLASSES = ["red", "green", "blue", "yellow"]


def make_batch(dim: int, labels: list[int]) -> TrainBatch:
    gen = torch.Generator().manual_seed(3)
    image = F.normalize(torch.randn(len(labels), dim, generator=gen), dim=-1)
    n = len(labels)
    return TrainBatch(
        features=FeatureBatch(image=image),
        labels=torch.tensor(labels),
        index=torch.arange(n),
        group=torch.zeros(n, dtype=torch.long),
    )


def test_loss_is_gce_with_q_one_half_computed_by_hand():
    backbone = load_backbone(name="tiny-vit", device="cpu")
    torch.manual_seed(0)
    method = PTNL(backbone, CLASSES, PTNLConfig(init_std=0.5))
    batch = make_batch(backbone.embed_dim, [0, 1, 2, 3, 3, 1])
    out = method.training_loss(batch)
    with torch.no_grad():
        text = F.normalize(method.prompt.text_features(), dim=-1)
        logits = backbone.logit_scale * batch.features.image @ text.T
        p_y = logits.softmax(dim=1)[torch.arange(6), batch.labels]
    assert p_y.std() > 1e-3  # a non-trivial test: the samples differ
    expected = ((1 - p_y**0.5) / 0.5).mean()
    assert rel_err(out.loss.detach(), expected) < 1e-5
    assert rel_err(out.logits.detach(), logits) < 1e-5
    # GCE's gradient is p_y^q times CE's: the loss is differentiable in the context
    out.loss.backward()
    assert method.prompt.ctx.grad.abs().sum() > 0
    ce = PTNL(backbone, CLASSES, PTNLConfig(loss="ce", init_std=0.5))
    ce.load_state_dict(method.state_dict())
    assert (
        rel_err(ce.training_loss(batch).loss.detach(), F.cross_entropy(logits, batch.labels)) < 1e-5
    )


def test_reference_defaults_and_balanced_protocol_by_default(colour_dataset):
    entry = METHOD_REGISTRY.get("ptnl")
    assert entry.text_cost == "K"
    base = ["backbone.name=tiny-vit", "data.dataset=folder", "method.name=ptnl"]
    cfg = load_run_config(None, base)
    assert cfg.noise.protocol == "balanced" and cfg.method.q == 0.5 and cfg.method.loss == "gce"
    assert (cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.lr) == (50, 32, 0.002)
    assert cfg.method.n_ctx == 16 and cfg.method.ctx_init is None
    assert load_run_config(None, base + ["noise.protocol=relabel"]).noise.protocol == "relabel"
    with pytest.raises(VispromptError, match="asym-semantic is not available"):
        load_run_config(None, base + ["noise.type=asym-semantic", "noise.rate=0.5"])
    with pytest.raises(VispromptError, match="allow_fewer is not available"):
        load_run_config(None, base + ["data.allow_fewer=true"])
    with pytest.raises(VispromptError, match="method.q"):
        load_run_config(None, base + ["method.q=0"])


@pytest.mark.parametrize("protocol,noise_type", [("relabel", "sym"), ("balanced", "asym")])
def test_trains_on_the_colour_dataset_at_half_noise(colour_dataset, tmp_path, protocol, noise_type):
    from visprompt.engine.run import train_run
    from visprompt.engine.run_folder import read_metrics

    over = run_overrides(
        colour_dataset,
        "ptnl",
        **{"noise.type": noise_type, "noise.rate": 0.5, "noise.protocol": protocol},
    )
    result = train_run(load_run_config(None, over), tmp_path / "r", progress=False, log=print)
    rows = read_metrics(tmp_path / "r")
    assert len(rows) == 3 and result["num_noisy"] == 16 and result["noise_protocol"] == protocol
    trainset = json.loads((tmp_path / "r" / "trainset.json").read_text())
    given, true = trainset["given_labels"], trainset["true_labels"]
    if protocol == "balanced":  # 8 slots per class; pair flip: foreign images from class k + 1
        assert sorted(given) == [k for k in range(4) for _ in range(8)]
        assert all(t == (g + 1) % 4 for g, t in zip(given, true, strict=True) if g != t)


def test_baselines_expand_in_a_sweep_under_both_protocols(colour_dataset, tmp_path, capsys):
    from visprompt.cli import main

    sweep = tmp_path / "baselines.yaml"
    sweep.write_text(
        "name: baselines\n"
        "description: noisy-label prompt-learning baselines\n"
        "base:\n"
        "  backbone: {name: tiny-vit, device: cpu}\n"
        f"  data: {{dataset: folder, root: {colour_dataset}, shots: 8}}\n"
        "  noise: {type: sym, rate: 0.5}\n"
        "grid:\n"
        "  method.name: [cocoop, ptnl, joapr]\n"
        "  noise.protocol: [relabel, balanced]\n"
    )
    args = ["sweep", "--config", str(sweep), "--db", str(tmp_path / "r.sqlite"), "--dry-run"]
    assert main([*args, "--list"]) == 0
    out = capsys.readouterr().out
    assert "6 runs - 6 new" in out
    for method in ("cocoop", "ptnl", "joapr"):
        for protocol in ("relabel", "balanced"):
            assert f"{method} folder sym 0.5 seed 1 noise.protocol={protocol}" in out
