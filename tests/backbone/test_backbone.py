"""The frozen backbone: loading, exact truncated text encoding, images, frozenness."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file
from vp_testing import rel_err, tiny_open_clip_config

from visprompt.backbone import (
    build_class_prompts,
    insert_context,
    load_backbone,
    tiny_clip,
)
from visprompt.errors import VispromptError

PROMPTS = [
    "a photo of a dog.",
    "a blurry photo of a very small golden retriever sitting on the grass next to a red ball",
    "x",
    "an origami airplane.",
]


@pytest.fixture(scope="module", params=["tiny-vit", "tiny-rn"])
def backbone(request):
    return load_backbone(name=request.param, device="cpu")


def test_truncated_prompt_encoding_equals_open_clip_encode_text(backbone):
    ids = backbone.tokenize(PROMPTS)
    reference = backbone.model.encode_text(ids)
    ours = backbone.encode_prompts(backbone.embed_tokens(ids), ids.argmax(dim=-1))
    assert ours.shape == (len(PROMPTS), backbone.embed_dim)
    assert rel_err(ours, reference) <= 1e-5
    # the truncation really happens: the longest prompt is far shorter than 77 tokens
    assert int(ids.argmax(dim=-1).max()) + 1 < backbone.context_length // 2


def test_chunked_encoding_matches_unchunked_values_and_gradients(backbone):
    ids = backbone.tokenize(PROMPTS)
    base = backbone.embed_tokens(ids)
    eot = ids.argmax(dim=-1)
    grads = []
    outs = []
    for chunk in (None, 1, 3):
        emb = base.clone().requires_grad_(True)
        out = backbone.encode_prompts(emb, eot, chunk_size=chunk)
        out.pow(2).sum().backward()
        outs.append(out.detach())
        grads.append(emb.grad)
    for out, grad in zip(outs[1:], grads[1:], strict=True):
        assert rel_err(out, outs[0]) <= 1e-5
        # float32 summation order differs per chunk and CPU (3.7e-4 absolute on AMD EPYC)
        assert rel_err(grad, grads[0]) <= 1e-4


def test_backbone_is_frozen_and_stays_in_eval_mode(backbone):
    assert all(not p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training and not backbone.model.training
    assert all(not m.training for m in backbone.modules())


def test_image_encoding_and_patch_tokens(backbone):
    images = torch.randn(3, 3, backbone.image_size, backbone.image_size)
    feats = backbone.encode_image(images)
    assert feats.shape == (3, backbone.embed_dim)
    assert rel_err(feats.norm(dim=-1), torch.ones(3)) <= 1e-5
    if backbone.is_vit:
        glob, patches = backbone.encode_image(images, return_patches=True)
        assert rel_err(glob, feats) <= 1e-6
        grid = backbone.image_size // 8
        assert patches.shape == (3, grid, grid, backbone.embed_dim)
    else:
        with pytest.raises(ValueError, match="ViT"):
            backbone.encode_image(images, return_patches=True)


def test_class_prompts_layout_and_context_insertion(backbone):
    names = ["dog", "golden_retriever", "sea lion"]
    prompts = build_class_prompts(backbone.tokenizer, names, n_ctx=4)
    assert prompts.classnames == ("dog", "golden retriever", "sea lion")
    assert prompts.ctx_positions.tolist() == [[1, 2, 3, 4]] * 3
    for k, name in enumerate(prompts.classnames):
        expected = [backbone.sot_token_id, *[backbone.bpe("X")[0]] * 4]
        expected += backbone.bpe(name) + backbone.bpe(".") + [backbone.eot_token_id]
        assert prompts.token_ids[k, : len(expected)].tolist() == expected
        assert int(prompts.eot_index[k]) == len(expected) - 1
    base = backbone.embed_tokens(prompts.token_ids)
    ctx = torch.randn(4, backbone.text_width, requires_grad=True)
    emb = insert_context(base, prompts, ctx)
    assert torch.equal(emb[:, 1:5], ctx.detach().expand(3, 4, -1))
    assert torch.equal(emb[:, 5:], base[:, 5:]) and torch.equal(emb[:, 0], base[:, 0])
    emb.sum().backward()
    assert ctx.grad is not None and torch.all(ctx.grad == 3)
    per_image = insert_context(base, prompts, torch.randn(2, 4, backbone.text_width), True)
    assert per_image.shape == (2, 3, backbone.context_length, backbone.text_width)


def test_front_and_middle_layouts_and_word_initialisation(backbone):
    front = build_class_prompts(backbone.tokenizer, ["sea lion"], n_ctx=4, layout="front")
    name_len = len(backbone.bpe("sea lion"))
    assert front.ctx_positions[0].tolist() == list(range(1 + name_len, 5 + name_len))
    assert front.shared_prefix_length is None
    middle = build_class_prompts(backbone.tokenizer, ["cat"], n_ctx=4, layout="middle")
    assert middle.ctx_positions[0].tolist() == [1, 2, 4, 5]
    init = build_class_prompts(backbone.tokenizer, ["cat"], ctx_init="a photo of a")
    assert init.n_ctx == 4
    assert init.token_ids[0, 1:5].tolist() == backbone.bpe("a photo of a")


def test_too_long_class_name_is_a_clear_error(backbone):
    with pytest.raises(VispromptError, match="more than the model's 77"):
        build_class_prompts(backbone.tokenizer, ["word " * 70], n_ctx=16)


@pytest.mark.parametrize("vision", ["vit", "rn"])
def test_openai_state_dict_architecture_is_inferred_exactly(tmp_path, vision):
    model = tiny_clip(vision, seed=3)
    path = tmp_path / "openai.pt"
    torch.save(model.state_dict(), path)
    loaded = load_backbone(checkpoint=path, device="cpu")
    ids = loaded.tokenize(PROMPTS)
    assert rel_err(loaded.model.encode_text(ids), model.encode_text(ids)) <= 1e-6
    images = torch.randn(2, 3, loaded.image_size, loaded.image_size)
    assert rel_err(loaded.model.encode_image(images), model.encode_image(images)) <= 1e-6
    assert loaded.identity.fingerprint != load_backbone(name=f"tiny-{vision}").identity.fingerprint


def test_wrapped_state_dict_safetensors_and_named_arch(tmp_path):
    model = tiny_clip("vit", seed=4)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, wrapped)
    st = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, st)
    ids = load_backbone(name="tiny-vit").tokenize(PROMPTS)
    with torch.no_grad():
        expected = model.encode_text(ids)
    for path in (wrapped, st):
        assert rel_err(load_backbone(checkpoint=path).model.encode_text(ids), expected) <= 1e-6
    # an open_clip architecture name: register the tiny layout as a model config
    cfg = tiny_open_clip_config(quick_gelu=True)
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "tiny-test-arch.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfgs")
    named = load_backbone(arch="tiny-test-arch", checkpoint=st)
    assert rel_err(named.model.encode_text(ids), expected) <= 1e-6
    with pytest.raises(VispromptError, match="does not match architecture 'RN50'"):
        load_backbone(arch="RN50", checkpoint=st)


def test_torchscript_needs_explicit_permission(tmp_path):
    model = tiny_clip("vit", seed=5)

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for name, child in model.named_children():
                self.add_module(name, child)
            self.positional_embedding = model.positional_embedding
            self.text_projection = model.text_projection
            self.logit_scale = model.logit_scale

        def forward(self, x):
            return self.visual(x)

    path = tmp_path / "scripted.pt"
    with pytest.warns(Warning):
        torch.jit.save(torch.jit.trace(Holder(), torch.ones(1, 3, 32, 32)), path)
    with pytest.raises(VispromptError, match="allow_torchscript=true"):
        load_backbone(checkpoint=path)
    loaded = load_backbone(checkpoint=path, allow_torchscript=True)
    ids = loaded.tokenize(PROMPTS)
    assert rel_err(loaded.model.encode_text(ids), model.encode_text(ids)) <= 1e-6


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(VispromptError, match="checkpoint not found: .*nope.pt"):
        load_backbone(checkpoint=tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    torch.save({"layer.weight": torch.zeros(2)}, junk)
    with pytest.raises(VispromptError, match="is not a CLIP model"):
        load_backbone(checkpoint=junk)
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(VispromptError, match="cannot read checkpoint"):
        load_backbone(checkpoint=text)
    with pytest.raises(VispromptError, match="unknown backbone 'nope'"):
        load_backbone(name="nope")
    with pytest.raises(VispromptError, match="backbone.download=true"):
        load_backbone(arch="RN50")
    with pytest.raises(VispromptError, match="unknown open_clip architecture"):
        load_backbone(arch="RN5O", download=True)
