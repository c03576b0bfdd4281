"""KgCoOp (Yao et al., CVPR 2023): CoOp kept close to the hand-written prompts' text features.

``L = CE(logit_scale * cos(z, w_k), y) + lambda * (1 - (1/K) sum_k cos(w_k, w_zs,k))``
where ``w_k`` are the learned prompts' text features and ``w_zs,k`` the
zero-shot classifier of the dataset's hand-written templates. For unit vectors
``1 - cos = ||w - w_zs||^2 / 2``: the term is the paper's squared distance to the
zero-shot weights, with the reference code's factor (half of it per lambda).

Reference (htyao89/KgCoOp c43ccc3, ``KgCoOp/trainers/kgcoop.py`` and
``configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml``, ``scripts/run.sh``):
lambda (``TRAINER.COOP.W``) 8.0, context "a photo of a" (4 tokens), class token
at the end, SGD lr 0.002, batch 128, 100 epochs, one-epoch warm-up then cosine.

Departures: the anchor uses the dataset's templates (CoOp's; KgCoOp's DTD
template reads "a photo of a {}, a type of texture."), and the reference drops
the term in its mixed-precision branch (ours keeps it in every precision).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from visprompt.method_spec import register_method
from visprompt.methods.base import StepOutput, TrainBatch, cosine_logits
from visprompt.methods.coop import ContextConfig, ContextMethod
from visprompt.methods.zeroshot import register_zero_shot_anchor
from visprompt.robust.losses import cross_entropy


class KgCoOpConfig(ContextConfig):
    name: Literal["kgcoop"] = "kgcoop"
    n_ctx: int = Field(4, ge=1, description="number of context tokens M")
    ctx_init: str | None = Field("a photo of a", description="phrase initialising the context")
    weight: float = Field(8.0, ge=0.0, description="lambda of the knowledge-guided term")


def knowledge_guided_term(text: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """``1 - mean_k cos(text_k, anchor_k)`` for (K, D) text features and anchors."""
    return 1.0 - torch.nn.functional.cosine_similarity(text, anchor, dim=-1).mean()


@register_method(
    "kgcoop",
    config=KgCoOpConfig,
    defaults={"optim.epochs": 100, "optim.batch_size": 128, "optim.lr": 0.002},
    reference={"precision": "fp16"},  # KgCoOp configs: PREC fp16
    text_cost="K",
    description="KgCoOp: CoOp + lambda * distance of its text features to the zero-shot ones",
)
class KgCoOp(ContextMethod):
    """KgCoOp: CoOp regularised toward the hand-written prompts' text features."""

    def __init__(self, backbone, classnames, config: KgCoOpConfig, templates=()):
        super().__init__(backbone, classnames, config, templates)
        register_zero_shot_anchor(self, backbone, self.classnames, templates)

    def training_loss(self, batch: TrainBatch) -> StepOutput:
        text = self.prompt.text_features()
        logits = cosine_logits(batch.features.image, text, self.logit_scale)
        ce = cross_entropy(logits, batch.labels)
        kg = knowledge_guided_term(text, self.zs_text)
        return StepOutput(
            loss=ce + self.config.weight * kg,
            logits=logits,
            parts={"ce": ce.item(), "kg": kg.item()},
        )
