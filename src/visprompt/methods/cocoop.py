"""CoCoOp (Zhou et al., CVPR 2022): a context conditioned on each image.

A small meta-net maps the image's normalised embedding z_b to a shift
``pi_b = W_2 ReLU(W_1 z_b + c_1) + c_2`` (``W_1``: D -> D/16, ``W_2``: -> d, d the
text width) that is added to every context token: ``C_b = C + pi_b``. Image b
is scored against the K prompts built from its own context,
``logit_bk = logit_scale * cos(z_b, TextEncoder([SOS] C_b <name_k> . [EOS]))``,
and trained with cross-entropy. Because every image has its own prompts, a
step runs B*K text sequences (evaluation too: no text features are shared).

Reference defaults (official configuration): 4 context tokens initialised from
"a photo of a", SGD lr 0.002, 10 epochs, batch size 1, ViT-B/16. We keep
batch size 1 as the default. The text-encoder work of an epoch is N*K
sequences whatever the batch size (B*K per step, N/B steps); the batch size
only changes how many optimiser steps an epoch makes and how well a GPU is
used. Larger batches (``optim.batch_size=8`` or ``32``) run faster on a GPU but
change the optimisation (one step per B images at the same lr), so their
numbers are not the official protocol's.

Differences from the reference: none in the math. The reference loops over
the images of a batch; here all B*K prompts are encoded together (in chunks).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from visprompt.method_spec import Requirements, register_method
from visprompt.methods.base import FeatureBatch, cosine_logits
from visprompt.methods.coop import ContextConfig, ContextMethod


class CoCoOpConfig(ContextConfig):
    """CoCoOp's options (context options as CoOp, CoCoOp's defaults)."""

    name: Literal["cocoop"] = "cocoop"
    n_ctx: int = Field(4, ge=1, description="number of context tokens M")
    ctx_init: str | None = Field("a photo of a", description="phrase initialising the context")
    meta_reduction: int = Field(
        16, ge=1, description="meta-net hidden width = image embedding width // meta_reduction"
    )

    def requirements(self) -> Requirements:
        return Requirements(per_image_prompts=True)


@register_method(
    "cocoop",
    config=CoCoOpConfig,
    defaults={"optim.epochs": 10, "optim.batch_size": 1, "optim.lr": 0.002},
    reference={"precision": "fp16"},  # CoCoOp configs: PREC fp16
    text_cost="B·K",
    description="CoCoOp: context shifted per image by a meta-net on the image embedding, CE",
)
class CoCoOp(ContextMethod):
    """CoCoOp: per-image context C + metanet(z), cross-entropy."""

    def __init__(self, backbone, classnames, config: CoCoOpConfig, templates=()):
        super().__init__(backbone, classnames, config, templates)
        vis_dim = backbone.embed_dim
        hidden = max(1, vis_dim // config.meta_reduction)
        self.meta_net = nn.Sequential(
            nn.Linear(vis_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, self.prompt.width)
        ).to(backbone.device)

    def class_text_features(self) -> None:
        return None  # prompts differ per image

    def contexts(self, image: torch.Tensor) -> torch.Tensor:
        """Per-image contexts ``C + metanet(z_b)``: (B, M, d), or (B, K, M, d) class-specific."""
        z = F.normalize(image.float(), dim=-1)
        shift = self.meta_net(z)  # (B, d)
        ctx = self.prompt.ctx
        if ctx.dim() == 2:
            return ctx.unsqueeze(0) + shift[:, None, :]
        return ctx.unsqueeze(0) + shift[:, None, None, :]

    def forward(
        self, features: FeatureBatch, text_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        text = self.prompt.per_image_text_features(self.contexts(features.image))
        return cosine_logits(features.image, text, self.logit_scale)
