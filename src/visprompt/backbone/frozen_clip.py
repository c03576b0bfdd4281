"""The frozen CLIP backbone: what prompt learning needs from an open_clip model.

``FrozenCLIP`` wraps an open_clip ``CLIP`` model whose text tower is the
standard causal transformer with a CLIP BPE tokenizer. Nothing in it ever
trains: every parameter has ``requires_grad=False`` and the module stays in
eval mode whatever ``train()`` is called with (BatchNorm in ResNet towers
included).

Text encoding works on *prompt embeddings* (token embeddings where some
positions hold learnable vectors). Because CLIP's text transformer is causal,
tokens after the end-of-text (EOT) token never influence the EOT feature, so
every batch is cut to its longest EOT position + 1 instead of the full context
(exact, and several times cheaper than 77 tokens). Class prompts with the name
at the end go further: their shared prefix ``[SOS] ctx`` is encoded once and
only the class-name suffixes run through the layers
(``text_encoding = "shared-prefix"``, the default; also exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.tokenizer import SimpleTokenizer
from torch import nn

from visprompt.backbone import text_encoder
from visprompt.backbone.prompts import ClassPrompts, insert_context
from visprompt.errors import VispromptError

#: Values of ``FrozenCLIP.text_encoding`` (``engine.text_encoding`` in run configs).
TEXT_ENCODINGS = ("shared-prefix", "truncated")


@lru_cache(maxsize=4)
def clip_tokenizer(context_length: int = 77) -> SimpleTokenizer:
    """The standard CLIP BPE tokenizer (shipped inside open_clip, no download)."""
    return SimpleTokenizer(context_length=context_length)


@dataclass(frozen=True)
class BackboneIdentity:
    """What makes two backbones the same for caches and checkpoints.

    ``fingerprint`` is a hash of the weights' source (checkpoint file hash, or the
    name and seed of a generated model); features cached under one fingerprint
    are never reused for another.
    """

    name: str
    arch: str
    fingerprint: str
    source: str = ""

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "arch": self.arch,
            "fingerprint": self.fingerprint,
            "source": self.source,
        }


class FrozenCLIP(nn.Module):
    """A frozen open_clip CLIP model with prompt-learning entry points.

    Args:
        model: an ``open_clip.CLIP`` whose text tower is a causal transformer
            with ``text_pool_type == "argmax"`` (EOT pooling).
        identity: where the weights came from (used in cache keys and checks).
        precision: ``fp32`` (default), ``fp16`` (weights in half precision, GPU
            only) or ``amp`` (fp32 weights, bf16 autocast on GPU).
    """

    def __init__(
        self,
        model: nn.Module,
        identity: BackboneIdentity,
        precision: str = "fp32",
        text_encoding: str = "shared-prefix",
        chunk_size: int | None = None,
    ):
        super().__init__()

        if getattr(model, "text_pool_type", "argmax") != "argmax" or not hasattr(
            model, "token_embedding"
        ):
            raise ValueError(
                "only CLIP models with a causal text tower and EOT pooling are supported"
            )
        self.model = model
        self.identity = identity
        self.precision = precision
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        self.tokenizer = clip_tokenizer(int(model.context_length))
        # Engine settings (``engine.text_encoding`` / ``engine.chunk_size``), fixed when the
        # backbone is built: they change how the text tower runs, never its result.
        #: how ``encode_class_prompts`` runs the text tower: ``shared-prefix`` or ``truncated``
        self.text_encoding = "shared-prefix"
        #: at most this many prompt sequences per text-encoder call (None: all at once)
        self.chunk_size: int | None = None
        self._shared_prefix_supported: bool | None = None
        self.with_engine(text_encoding=text_encoding, chunk_size=chunk_size)

    def with_engine(
        self, text_encoding: str = "shared-prefix", chunk_size: int | None = None
    ) -> FrozenCLIP:
        """Set how the text tower runs (checked here, once); returns ``self``."""
        if text_encoding not in TEXT_ENCODINGS:
            raise VispromptError(
                f"unknown text encoding {text_encoding!r}; choose one of {TEXT_ENCODINGS}"
            )
        if chunk_size is not None and chunk_size < 1:
            raise VispromptError(f"chunk_size must be at least 1, got {chunk_size}")
        self.text_encoding = text_encoding
        self.chunk_size = chunk_size
        return self

    # ------------------------------------------------------------------ facts
    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.token_embedding.weight.dtype

    @property
    def embed_dim(self) -> int:
        """D: dimension of the joint image-text embedding."""
        proj = self.model.text_projection
        return int(proj.weight.shape[0] if isinstance(proj, nn.Linear) else proj.shape[1])

    @property
    def text_width(self) -> int:
        """d: width of the text transformer (and of every prompt token)."""
        return int(self.model.token_embedding.weight.shape[1])

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    @property
    def is_vit(self) -> bool:
        return hasattr(self.model.visual, "conv1") and hasattr(self.model.visual, "class_embedding")

    @property
    def vision_width(self) -> int:
        """Width of the image tower's tokens before the output projection."""
        visual = self.model.visual
        if self.is_vit:
            return int(visual.class_embedding.shape[0])
        return int(self.embed_dim)

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    # open_clip's own reading of a model's preprocessing (its preprocess_cfg, or the
    # legacy image_mean/image_std attributes); CLIP's OpenAI statistics where it has none
    @property
    def image_mean(self) -> tuple[float, float, float]:
        cfg = dict(open_clip.get_model_preprocess_cfg(self.model))
        return tuple(cfg.get("mean") or OPENAI_DATASET_MEAN)

    @property
    def image_std(self) -> tuple[float, float, float]:
        cfg = dict(open_clip.get_model_preprocess_cfg(self.model))
        return tuple(cfg.get("std") or OPENAI_DATASET_STD)

    @property
    def logit_scale(self) -> float:
        """exp(logit_scale) of the checkpoint (about 100 for OpenAI CLIP)."""
        return float(self.model.logit_scale.detach().float().exp().item())

    @property
    def sot_token_id(self) -> int:
        return int(self.tokenizer.sot_token_id)

    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eot_token_id)

    def train(self, mode: bool = True) -> FrozenCLIP:  # noqa: ARG002 - frozen means eval always
        super().train(False)
        return self

    # ------------------------------------------------------------------ text
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids (n, context_length) with SOT ... EOT and zero padding."""
        return self.tokenizer(list(texts)).to(self.device)

    def bpe(self, text: str) -> list[int]:
        """BPE ids of ``text`` without SOT/EOT."""
        return list(self.tokenizer.encode(text))

    @torch.no_grad()
    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Frozen token embeddings (..., L) -> (..., L, d)."""
        return self.model.token_embedding(token_ids.to(self.device))

    def encode_prompts(
        self,
        prompt_embeddings: torch.Tensor,
        eot_index: torch.Tensor,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Text features (unnormalised) of prompt embeddings.

        Args:
            prompt_embeddings: (S, L, d) token embeddings; any positions may be
                learnable tensors (gradients flow back into them).
            eot_index: (S,) position of the end-of-text token in each sequence.
            chunk_size: encode at most this many sequences at once (each chunk
                is recomputed in the backward pass, so peak memory stays bounded
                whatever S is). ``None`` encodes all at once.

        Returns:
            (S, D) projected EOT features, exactly as open_clip's ``encode_text``
            computes them for the same token embeddings.
        """
        return text_encoder.encode_truncated(
            self.model, prompt_embeddings, eot_index.to(prompt_embeddings.device), chunk_size
        )

    def encode_class_prompts(
        self,
        prompts: ClassPrompts,
        base_embeddings: torch.Tensor,
        ctx: torch.Tensor,
        per_image: bool = False,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Text features (unnormalised) of K class prompts with context ``ctx`` inserted.

        How the text tower runs depends on ``self.text_encoding``; both ways give
        the same result within float error:

        * ``"shared-prefix"`` (default): when the class name is at the end
          (``prompts.layout == "end"``) and the context is the same for every
          class, ``[SOS] ctx`` is encoded once (once per image for per-image
          contexts) and only the K short suffixes ``<name> . [EOS]`` run through
          the layers, attending to the prefix's cached keys and values
          (:func:`~visprompt.backbone.text_encoder.encode_shared_prefix`). Other
          layouts, class-specific contexts and text towers of another block type
          fall back to truncation.
        * ``"truncated"``: every prompt is encoded in full up to the longest
          end-of-text position (:func:`~visprompt.backbone.text_encoder.encode_truncated`).

        Args:
            prompts: the token layout (``build_class_prompts``).
            base_embeddings: (K, L, d) frozen token embeddings of ``prompts.token_ids``.
            ctx: (M, d) or (K, M, d) shared context, or with ``per_image=True``
                (B, M, d) / (B, K, M, d) per-image context.
            per_image: whether ``ctx`` has a leading image dimension.
            chunk_size: at most this many sequences per text-encoder call (default:
                the backbone's ``chunk_size``); blocks are recomputed in the backward
                pass, so peak memory stays bounded whatever K (and B) is.

        Returns:
            (K, D), or (B, K, D) with ``per_image=True``.
        """
        chunk_size = self.chunk_size if chunk_size is None else chunk_size
        eot = prompts.eot_index.to(base_embeddings.device)
        if self.uses_shared_prefix(prompts, ctx, per_image):
            return self._encode_shared_prefix(prompts, base_embeddings, ctx, per_image, chunk_size)
        # Positions after the last EOT never influence any EOT feature: cut them before the
        # context is written in, so no (B, K, 77, d) tensor is ever built.
        length = int(prompts.eot_index.max()) + 1
        cut = replace(prompts, token_ids=prompts.token_ids[:, :length])
        embeddings = insert_context(base_embeddings[:, :length], cut, ctx, per_image=per_image)
        if not per_image:
            return self.encode_prompts(embeddings, eot, chunk_size)
        batch, num_classes = embeddings.shape[:2]
        flat = self.encode_prompts(embeddings.flatten(0, 1), eot.repeat(batch), chunk_size)
        return flat.view(batch, num_classes, -1)

    def uses_shared_prefix(
        self, prompts: ClassPrompts, ctx: torch.Tensor, per_image: bool = False
    ) -> bool:
        """Whether :meth:`encode_class_prompts` takes the shared-prefix path for these inputs.

        True when ``text_encoding == "shared-prefix"``, the class name is at the end,
        the context is shared by all classes ((M, d), or (B, M, d) per image) and the
        text tower is built from open_clip's standard attention blocks.
        """
        shared_over_classes = ctx.dim() == (3 if per_image else 2)
        return (
            self.text_encoding == "shared-prefix"
            and prompts.shared_prefix_length is not None
            and shared_over_classes
            and self._shared_prefix_ok()
        )

    def _shared_prefix_ok(self) -> bool:
        if self._shared_prefix_supported is None:
            self._shared_prefix_supported = text_encoder.shared_prefix_supported(self.model)
        return self._shared_prefix_supported

    def _encode_shared_prefix(
        self,
        prompts: ClassPrompts,
        base_embeddings: torch.Tensor,
        ctx: torch.Tensor,
        per_image: bool,
        chunk_size: int | None,
    ) -> torch.Tensor:
        prefix_length = prompts.shared_prefix_length
        ctx = ctx if per_image else ctx.unsqueeze(0)  # (P, M, d)
        count, width = ctx.shape[0], base_embeddings.shape[-1]
        if ctx.shape[1:] != (prompts.n_ctx, width):
            raise ValueError(
                f"context of shape {tuple(ctx.shape)} does not fit {prompts.n_ctx} slots of "
                f"width {width} ({'per-image' if per_image else 'shared'} prompts)"
            )
        sos = base_embeddings[0, :1].expand(count, 1, width)  # every prompt starts with SOS
        prefix = torch.cat([sos, ctx.to(base_embeddings.dtype)], dim=1)
        lengths = prompts.eot_index.to(base_embeddings.device) - prefix_length + 1
        suffix = base_embeddings[:, prefix_length : int(prompts.eot_index.max()) + 1]
        feats = text_encoder.encode_shared_prefix(self.model, prefix, suffix, lengths, chunk_size)
        return feats if per_image else feats[0]

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Features of plain text (zero-shot classifiers, class-name similarity)."""
        ids = self.tokenize(texts)
        feats = self.encode_prompts(self.embed_tokens(ids), ids.argmax(dim=-1))
        return F.normalize(feats, dim=-1) if normalize else feats

    # ----------------------------------------------------------------- image
    @torch.no_grad()
    def encode_image(
        self, images: torch.Tensor, normalize: bool = True, return_patches: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Global image embeddings (B, D), and patch tokens (B, gh, gw, D) if asked.

        Patch tokens exist for ViT towers only; they are passed through the same
        final LayerNorm and projection as the class token, so they live in the
        joint embedding space (not normalised).
        """
        visual = self.model.visual
        images = images.to(self.device, dtype=self.dtype)
        if not return_patches:
            feats = visual(images)
            return F.normalize(feats.float(), dim=-1) if normalize else feats.float()
        if not self.is_vit:
            raise ValueError("patch tokens exist for ViT image towers only")
        x = visual._embeds(images)
        x = visual.transformer(x)
        pooled, tokens = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
            tokens = tokens @ visual.proj
        gh, gw = visual.grid_size
        tokens = tokens.reshape(tokens.shape[0], gh, gw, -1).float()
        pooled = pooled.float()
        return (F.normalize(pooled, dim=-1) if normalize else pooled), tokens
