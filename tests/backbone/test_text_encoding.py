"""Shared-prefix text encoding: exact against a direct 77-token computation and truncation.

The direct computation is written here from open_clip's public pieces (token
embeddings + positions -> ``model.transformer`` over all 77 positions -> final
LayerNorm -> EOT row -> projection), independent of the code under test.
"""

from __future__ import annotations

import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from vp_testing import rel_err

from visprompt.backbone import (
    BackboneIdentity,
    build_class_prompts,
    insert_context,
    load_backbone,
)
from visprompt.backbone import text_encoder as te
from visprompt.backbone.loader import wrap_frozen
from visprompt.errors import VispromptError

#: Class names whose prompts have suffixes of different lengths (1 to 5 name tokens).
NAMES = [
    "dog",
    "golden retriever",
    "x",
    "a very long class name indeed",
    "chicken quesadilla",
    "pho",
    "hot and sour soup",
]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from a second thread; on a loaded 2-core machine with
    spinning OpenMP workers the second thread made this file 12x slower (79 s vs 6.5 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_clip(**text) -> CLIP:
    """A small random CLIP whose text tower has several heads (and the given extras)."""
    torch.manual_seed(0)
    cfg = {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3}
    cfg.update(text)
    vision = CLIPVisionCfg(layers=1, width=32, head_width=32, patch_size=8, image_size=16)
    return CLIP(embed_dim=48, vision_cfg=vision, text_cfg=CLIPTextCfg(**cfg)).eval()


def _wrap(model, name):
    return wrap_frozen(model, BackboneIdentity(name, name, name), torch.device("cpu"), "fp32")


@pytest.fixture(scope="module", params=["tiny-vit", "tiny-rn", "multi-head", "layer-scale"])
def backbone(request):
    if request.param == "multi-head":
        return _wrap(small_clip(), "multi-head")
    if request.param == "layer-scale":
        return _wrap(small_clip(ls_init_value=0.5, heads=2), "layer-scale")
    return load_backbone(name=request.param, device="cpu")


def direct_features(backbone, embeddings: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """open_clip's ``encode_text`` on token embeddings (S, 77, d): every position, one batch."""
    model = backbone.model
    x = embeddings + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)[torch.arange(x.shape[0]), eot]
    return x @ model.text_projection


def encode(backbone, prompts, ctx, per_image, chunk, mode, weights):
    """Features and the gradient of a fixed weighting of them wrt the context."""
    backbone.with_engine(text_encoding=mode)
    try:
        ctx = ctx.clone().requires_grad_(True)
        base = backbone.embed_tokens(prompts.token_ids)
        out = backbone.encode_class_prompts(
            prompts, base, ctx, per_image=per_image, chunk_size=chunk
        )
        (out * weights).sum().backward()
        return out.detach(), ctx.grad
    finally:
        backbone.with_engine()


@pytest.mark.parametrize("per_image", [False, True])
def test_shared_prefix_equals_direct_77_token_encoding(backbone, per_image):
    prompts = build_class_prompts(backbone.tokenizer, NAMES, n_ctx=4)
    k, d = len(NAMES), backbone.text_width
    gen = torch.Generator().manual_seed(1)
    ctx = torch.randn((3, 4, d) if per_image else (4, d), generator=gen) * 0.5
    out, _ = encode(backbone, prompts, ctx, per_image, None, "shared-prefix", 1.0)
    base = backbone.embed_tokens(prompts.token_ids)
    full = insert_context(base, prompts, ctx, per_image=per_image)
    eot = prompts.eot_index
    if per_image:
        ref = direct_features(backbone, full.flatten(0, 1), eot.repeat(3)).view(3, k, -1)
    else:
        ref = direct_features(backbone, full, eot)
    assert (
        out.shape == ref.shape == ((3, k, backbone.embed_dim) if per_image else (k, ref.shape[1]))
    )
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("per_image", [False, True])
def test_shared_prefix_matches_truncation_in_values_and_gradients(backbone, per_image):
    prompts = build_class_prompts(backbone.tokenizer, NAMES, n_ctx=5)
    k, d = len(NAMES), backbone.text_width
    gen = torch.Generator().manual_seed(2)
    ctx = torch.randn((3, 5, d) if per_image else (5, d), generator=gen) * 0.5
    shape = (3, k, backbone.embed_dim) if per_image else (k, backbone.embed_dim)
    weights = torch.randn(shape, generator=gen)
    ref_out, ref_grad = encode(backbone, prompts, ctx, per_image, None, "truncated", weights)
    # None: one block; 3: class chunks (3 < K); 7 / 14: image chunks of 1 / 2 images
    for chunk in (None, 3, 7, 14):
        out, grad = encode(backbone, prompts, ctx, per_image, chunk, "shared-prefix", weights)
        assert rel_err(out, ref_out) < 1e-5, chunk
        assert rel_err(grad, ref_grad) < 1e-5, chunk


def test_no_grad_chunked_encoding_equals_unchunked(backbone):
    prompts = build_class_prompts(backbone.tokenizer, NAMES, n_ctx=4)
    base = backbone.embed_tokens(prompts.token_ids)
    ctx = torch.randn(5, 4, backbone.text_width, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = backbone.encode_class_prompts(prompts, base, ctx, per_image=True)
        parts = backbone.encode_class_prompts(prompts, base, ctx, per_image=True, chunk_size=4)
    assert rel_err(whole, parts) < 1e-5


class Calls:
    """Counts calls of the two text-encoder entry points (and still runs them)."""

    def __init__(self, monkeypatch):
        self.truncated = self.shared = 0
        truncated, shared = te.encode_truncated, te.encode_shared_prefix

        def count_truncated(*args, **kwargs):
            self.truncated += 1
            return truncated(*args, **kwargs)

        def count_shared(*args, **kwargs):
            self.shared += 1
            return shared(*args, **kwargs)

        monkeypatch.setattr(te, "encode_truncated", count_truncated)
        monkeypatch.setattr(te, "encode_shared_prefix", count_shared)


@pytest.fixture(scope="module")
def tiny():
    return load_backbone(name="tiny-vit", device="cpu")


@pytest.mark.parametrize(
    ("layout", "ctx_shape", "per_image", "shared"),
    [
        ("end", (4, 64), False, True),
        ("end", (2, 4, 64), True, True),
        ("front", (4, 64), False, False),
        ("middle", (2, 4, 64), True, False),
        ("end", (len(NAMES), 4, 64), False, False),  # class-specific context
        ("end", (2, len(NAMES), 4, 64), True, False),  # per image and per class
    ],
)
def test_dispatch_and_fallback_give_the_same_features(
    tiny, monkeypatch, layout, ctx_shape, per_image, shared
):
    prompts = build_class_prompts(tiny.tokenizer, NAMES, n_ctx=4, layout=layout)
    base = tiny.embed_tokens(prompts.token_ids)
    ctx = torch.randn(ctx_shape, generator=torch.Generator().manual_seed(4))
    calls = Calls(monkeypatch)
    assert tiny.uses_shared_prefix(prompts, ctx, per_image) is shared
    out = tiny.encode_class_prompts(prompts, base, ctx, per_image=per_image)
    assert (calls.shared, calls.truncated) == ((1, 0) if shared else (0, 1))
    full = insert_context(base, prompts, ctx, per_image=per_image)
    eot = prompts.eot_index
    if per_image:
        ref = direct_features(tiny, full.flatten(0, 1), eot.repeat(2)).view(2, len(NAMES), -1)
    else:
        ref = direct_features(tiny, full, eot)
    assert rel_err(out, ref) < 1e-5


def test_truncated_switch_turns_shared_prefix_off(tiny, monkeypatch):
    prompts = build_class_prompts(tiny.tokenizer, NAMES, n_ctx=4)
    base = tiny.embed_tokens(prompts.token_ids)
    ctx = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(5))
    calls = Calls(monkeypatch)
    shared = tiny.encode_class_prompts(prompts, base, ctx, per_image=True)
    tiny.with_engine(text_encoding="truncated")
    try:
        assert not tiny.uses_shared_prefix(prompts, ctx, per_image=True)
        truncated = tiny.encode_class_prompts(prompts, base, ctx, per_image=True)
    finally:
        tiny.with_engine()
    assert (calls.shared, calls.truncated) == (1, 1)
    assert rel_err(shared, truncated) < 1e-5


def test_unknown_text_encoding_is_a_clear_error(tiny):
    with pytest.raises(VispromptError, match="text encoding 'full'"):
        tiny.with_engine(text_encoding="full")
    assert tiny.text_encoding == "shared-prefix"  # a refused setting changes nothing


def test_other_block_types_fall_back_to_truncation(monkeypatch):
    custom = _wrap(small_clip(block_type="custom", heads=2, layers=2), "custom")
    assert not te.shared_prefix_supported(custom.model)
    assert te.shared_prefix_supported(small_clip(heads=2, layers=2))
    prompts = build_class_prompts(custom.tokenizer, NAMES, n_ctx=3)
    base = custom.embed_tokens(prompts.token_ids)
    ctx = torch.randn(2, 3, 128, generator=torch.Generator().manual_seed(6))
    calls = Calls(monkeypatch)
    out = custom.encode_class_prompts(prompts, base, ctx, per_image=True)
    assert (calls.shared, calls.truncated) == (0, 1)
    assert out.shape == (2, len(NAMES), custom.embed_dim)


def test_bad_context_shape_is_rejected(tiny):
    prompts = build_class_prompts(tiny.tokenizer, NAMES, n_ctx=4)
    base = tiny.embed_tokens(prompts.token_ids)
    with pytest.raises(ValueError, match="does not fit"):
        tiny.encode_class_prompts(prompts, base, torch.zeros(2, 5, 64), per_image=True)


@pytest.mark.parametrize(
    ("count", "classes", "chunk"),
    [(16, 101, 1024), (16, 101, None), (4, 397, 256), (3, 7, 3), (5, 10, 1000), (1, 10, 4)],
)
def test_blocks_cover_everything_within_the_chunk_size(count, classes, chunk):
    images, runs = te.plan_blocks(count, classes, chunk)
    assert sum(images) == count and sum(runs) == classes
    largest = max(images) * max(runs)
    assert chunk is None or largest <= chunk
    # the last block (the one not recomputed in the backward pass) is the largest
    assert images[-1] * runs[-1] == largest
