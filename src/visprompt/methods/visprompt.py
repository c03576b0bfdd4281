"""VisPrompt: vision-guided cross-modal prompts under label noise (our reconstruction).

The public VisPrompt code withholds its prompt module; this is the module of
DESIGN.md ("VisPrompt prompt module"), built from the paper's text and the
public configuration keys. For image b with normalised global embedding z_b
(and, optionally, pooled ViT patch tokens) and the shared context C (M x d):

1. visual memory S_b (P x h): P pool tokens ``reshape(W_pool z_b) + E_slot``;
   with ``visual_tokens: patches`` the multi-scale pooled patch tokens (1x1, 2x2,
   4x4 grids = 21 tokens) are projected to h, given scale embeddings and appended;
2. cross-modal attention with the prompt tokens as queries:
   ``A_b = MHA(Q = LN(C) W_q, K = S_b W_k, V = S_b W_v) W_o`` (H heads), W_o zero-
   initialised so that step 0 is exactly CoOp;
3. conditional modulation: ``gamma_b = 1 + W_g z_b``, ``beta_b = W_b z_b`` (both
   zero-initialised) and a reliability gate ``a_b = sigmoid(u . [z_b ; r_b] + c)``
   where r_b = (max softmax probability, normalised entropy) of image b under the
   shared prompt C, detached;
4. injection: ``C_b = C + lambda_v * a_b * Dropout_p(gamma_b * A_b + beta_b)``;
5. regulariser: ``L_reg = lambda_reg * mean_b ||C_b - C||^2``.

Training is NLPrompt's (OT purification each epoch; CE on clean, MAE on noisy)
plus L_reg. Each step encodes K shared prompts (for r_b) and B*K per-image
prompts. Ablation switches: ``attention``, ``film``, ``gate`` (off removes the
path and its parameters), ``purify`` (ot|none) and ``visual_tokens``
(pool|patches). With attention, FiLM and gate all off, C_b = C: CoOp's prompts.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from visprompt.method_spec import Requirements, register_method
from visprompt.methods.base import (
    EpochContext,
    EpochPlan,
    FeatureBatch,
    StepOutput,
    TrainBatch,
    cosine_logits,
)
from visprompt.methods.coop import ContextConfig, ContextMethod
from visprompt.methods.ot_training import OTConfig, ot_epoch_plan, ot_loss

#: Number of pooled patch tokens of the multi-scale option (1x1 + 2x2 + 4x4).
NUM_PATCH_TOKENS = 21


class VisPromptConfig(ContextConfig, OTConfig):
    name: Literal["visprompt"] = "visprompt"
    pool_size: int = Field(16, ge=1, description="P: visual pool tokens")
    hidden_dim: int = Field(512, ge=1, description="h: width of the visual memory")
    heads: int = Field(8, ge=1, description="attention heads")
    visual_weight: float = Field(0.9, ge=0.0, description="lambda_v")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout of the injected cue")
    reg_weight: float = Field(0.01, ge=0.0, description="lambda_reg of ||C_b - C||^2")
    attention: bool = True
    film: bool = True
    gate: bool = True
    visual_tokens: Literal["pool", "patches"] = "pool"

    @model_validator(mode="after")
    def _consistent(self) -> VisPromptConfig:
        if self.class_specific:
            raise ValueError(
                "visprompt shifts one shared context per image; set method.class_specific=false"
            )
        if self.hidden_dim % self.heads:
            raise ValueError(
                f"method.hidden_dim ({self.hidden_dim}) must be divisible by method.heads "
                f"({self.heads})"
            )
        if self.visual_tokens == "patches" and not self.attention:
            raise ValueError(
                "method.visual_tokens=patches feeds the cross-attention, which is off; "
                "set method.attention=true or method.visual_tokens=pool"
            )
        return self

    def requirements(self) -> Requirements:
        patches = self.visual_tokens == "patches"
        return Requirements(
            vit=("method.visual_tokens=patches", "use method.visual_tokens=pool")
            if patches
            else None,
            patch_tokens=patches,
            per_image_prompts=True,
        )


class VisualPromptModule(nn.Module):
    """Per-image context shift ``C_b - C`` from the image embedding (steps 1-4 above)."""

    def __init__(
        self,
        embed_dim: int,
        width: int,
        cfg: VisPromptConfig,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        h, p = cfg.hidden_dim, cfg.pool_size
        if cfg.attention:
            self.pool = nn.Linear(embed_dim, p * h)
            self.slots = nn.Parameter(torch.randn(p, h) * 0.02)
            if cfg.visual_tokens == "patches":
                self.patch_proj = nn.Linear(embed_dim, h)
                self.patch_pos = nn.Parameter(torch.randn(NUM_PATCH_TOKENS, h) * 0.02)
            self.norm_q = nn.LayerNorm(width)
            self.norm_kv = nn.LayerNorm(h)
            self.q = nn.Linear(width, h)
            self.k = nn.Linear(h, h)
            self.v = nn.Linear(h, h)
            self.out = nn.Linear(h, width)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        if cfg.film:
            self.film_gamma = nn.Linear(embed_dim, width)
            self.film_beta = nn.Linear(embed_dim, width)
            for layer in (self.film_gamma, self.film_beta):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        if cfg.gate:
            self.gate = nn.Linear(embed_dim + 2, 1)
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def memory(self, image: torch.Tensor, patches: torch.Tensor | None) -> torch.Tensor:
        """S_b: (B, P [+ 21], h)."""
        b = image.shape[0]
        tokens = self.pool(image).view(b, self.cfg.pool_size, -1) + self.slots
        if self.cfg.visual_tokens == "patches":
            if patches is None:
                raise ValueError("visual_tokens=patches needs patch tokens in the features")
            tokens = torch.cat([tokens, self.patch_proj(patches) + self.patch_pos], dim=1)
        return self.norm_kv(tokens)

    def attend(self, ctx: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """A_b: (B, M, d) - prompt tokens (queries) attending to the visual memory."""
        b, heads = memory.shape[0], self.cfg.heads
        q = self.q(self.norm_q(ctx))  # (M, h) - shared by all images
        k, v = self.k(memory), self.v(memory)  # (B, S, h)

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(*x.shape[:-1], heads, -1).transpose(-3, -2)

        qh = split(q).unsqueeze(0).expand(b, -1, -1, -1)  # (B, H, M, h/H)
        out = F.scaled_dot_product_attention(qh, split(k), split(v))  # (B, H, M, h/H)
        out = out.transpose(1, 2).reshape(b, ctx.shape[0], -1)
        return self.out(out)

    def forward(
        self,
        ctx: torch.Tensor,
        image: torch.Tensor,
        patches: torch.Tensor | None,
        reliability: torch.Tensor | None,
    ) -> torch.Tensor:
        """The context shift (B, M, d) added to the shared context."""
        b, (m, d) = image.shape[0], ctx.shape
        if self.cfg.attention:
            cue = self.attend(ctx, self.memory(image, patches))
        else:
            cue = ctx.new_zeros(b, m, d)
        if self.cfg.film:
            gamma = 1.0 + self.film_gamma(image)
            beta = self.film_beta(image)
            cue = gamma.unsqueeze(1) * cue + beta.unsqueeze(1)
        shift = self.cfg.visual_weight * self.drop(cue)
        if self.cfg.gate:
            gate = torch.sigmoid(self.gate(torch.cat([image, reliability], dim=-1)))
            shift = gate.unsqueeze(-1) * shift
        return shift


def reliability_signal(logits: torch.Tensor) -> torch.Tensor:
    """(B, 2): max softmax probability and entropy / log K of each row (no gradient)."""
    probs = logits.detach().float().softmax(dim=-1)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1)
    norm = math.log(probs.shape[-1]) if probs.shape[-1] > 1 else 1.0
    return torch.stack([probs.max(dim=-1).values, entropy / norm], dim=-1)


@register_method(
    "visprompt",
    config=VisPromptConfig,
    defaults={"optim.epochs": 100, "optim.batch_size": 16, "optim.lr": 0.002},
    # released code: OT per shuffled train batch of 16, 32 shots in run.sh; PREC fp16
    reference={
        "method.ot_scope": "batch",
        "method.ot_batch_size": 16,
        "data.shots": 32,
        "precision": "fp16",
    },
    text_cost="B·K + K (+ N·K per epoch: purification)",
    description="VisPrompt: vision-guided prompts (cross-attention + FiLM gate) + NLPrompt OT",
)
class VisPrompt(ContextMethod):
    """VisPrompt: per-image prompts conditioned on visual evidence, trained with OT purification."""

    def __init__(self, backbone, classnames, config: VisPromptConfig, templates=()):
        super().__init__(backbone, classnames, config, templates)
        self.visual = VisualPromptModule(backbone.embed_dim, self.prompt.width, config)

    def describe(self) -> str:
        base = self.prompt.ctx.numel()
        added = sum(p.numel() for p in self.visual.parameters())
        return (
            f"visprompt: {base + added:,} trainable parameters "
            f"({base:,} context as CoOp + {added:,} vision-guided prompt module)"
        )

    def image_contexts(
        self, features: FeatureBatch, shared_text: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image contexts C_b (B, M, d) and the shared-prompt text features (K, D)."""
        reliability = None
        if self.config.gate:
            if shared_text is None:
                with torch.no_grad():  # r_b is detached: no gradient through this pass
                    shared_text = self.prompt.text_features()
            shared_logits = cosine_logits(features.image, shared_text, self.logit_scale)
            reliability = reliability_signal(shared_logits)
        ctx = self.prompt.ctx
        shift = self.visual(ctx, features.image.float(), features.patches, reliability)
        return ctx.unsqueeze(0) + shift, shared_text

    def class_text_features(self) -> torch.Tensor | None:
        """The shared prompt's text features: the reference of the reliability gate."""
        return self.prompt.text_features() if self.config.gate else None

    def forward(
        self, features: FeatureBatch, text_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        contexts, _ = self.image_contexts(features, text_features)
        text = self.prompt.per_image_text_features(contexts)
        return cosine_logits(features.image, text, self.logit_scale)

    def start_epoch(self, ctx: EpochContext) -> EpochPlan:
        return ot_epoch_plan(self.config, ctx)

    def training_loss(self, batch: TrainBatch) -> StepOutput:
        contexts, _ = self.image_contexts(batch.features)
        text = self.prompt.per_image_text_features(contexts)
        logits = cosine_logits(batch.features.image, text, self.logit_scale)
        task = ot_loss(logits, batch.labels, batch.group)
        reg = (contexts - self.prompt.ctx.unsqueeze(0)).pow(2).sum(dim=(1, 2)).mean()
        loss = task + self.config.reg_weight * reg
        return StepOutput(
            loss=loss, logits=logits, parts={"task_loss": task.item(), "reg": reg.item()}
        )
