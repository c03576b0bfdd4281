"""Learnable context for class prompts, shared by the CoOp family of methods.

``ContextPrompts`` owns the M context vectors (one set shared by all classes, or
one per class with ``class_specific``) and the frozen token embeddings of the K
class prompts ``[SOS] ctx_1..ctx_M <name> . [EOS]``. It turns a context into
normalised text features, either shared (K, D) or per image (B, K, D) when a
method adds an image-dependent shift to the context.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from visprompt.backbone import FrozenCLIP, build_class_prompts


class ContextPrompts(nn.Module):
    """M learnable context vectors + the frozen rest of K class prompts.

    Args:
        backbone: the frozen model (tokenizer, token embedding, text encoder).
        classnames: the K class names.
        n_ctx: M (ignored when ``ctx_init`` is given: the phrase's token count).
        ctx_init: optional phrase whose token embeddings initialise the context
            (e.g. ``"a photo of a"``); otherwise N(0, ``init_std``^2).
        class_specific: one context per class (CoOp's CSC) instead of one shared.
        layout: class token position, ``end`` (default), ``middle`` or ``front``.
        init_std: standard deviation of the random initialisation.
    """

    def __init__(
        self,
        backbone: FrozenCLIP,
        classnames: Sequence[str],
        n_ctx: int = 16,
        ctx_init: str | None = None,
        class_specific: bool = False,
        layout: str = "end",
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.__dict__["backbone"] = backbone
        self.prompts = build_class_prompts(
            backbone.tokenizer, classnames, n_ctx=n_ctx, layout=layout, ctx_init=ctx_init
        ).to(backbone.device)
        base = backbone.embed_tokens(self.prompts.token_ids).float()
        self.register_buffer("base_embeddings", base, persistent=False)
        m, width = self.prompts.n_ctx, backbone.text_width
        if ctx_init:
            ctx = base[0, self.prompts.ctx_positions[0]].clone()
            if class_specific:
                ctx = ctx.unsqueeze(0).repeat(len(classnames), 1, 1)
        else:
            shape = (len(classnames), m, width) if class_specific else (m, width)
            ctx = torch.randn(shape, device=backbone.device) * init_std
        self.ctx = nn.Parameter(ctx)

    backbone: FrozenCLIP

    @property
    def n_ctx(self) -> int:
        return self.prompts.n_ctx

    @property
    def width(self) -> int:
        return int(self.base_embeddings.shape[-1])

    def text_features(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """(K, D) normalised text features of the prompts with ``ctx`` (default: own)."""
        ctx = self.ctx if ctx is None else ctx
        feats = self.backbone.encode_class_prompts(self.prompts, self._base(), ctx, per_image=False)
        return F.normalize(feats.float(), dim=-1)

    def per_image_text_features(self, ctx: torch.Tensor) -> torch.Tensor:
        """(B, K, D) normalised text features of per-image contexts (B, M, d) or (B, K, M, d)."""
        feats = self.backbone.encode_class_prompts(self.prompts, self._base(), ctx, per_image=True)
        return F.normalize(feats.float(), dim=-1)

    def _base(self) -> torch.Tensor:
        return self.base_embeddings.to(self.backbone.dtype)
