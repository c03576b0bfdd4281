"""ProGrad (Zhu et al., ICCV 2023): CoOp with gradients that do not fight zero-shot knowledge.

Each step computes two gradients of the context: ``g`` of the cross-entropy on
the given labels, and ``g_kl`` of the distillation loss toward the zero-shot
classifier, ``T^2 * soft-CE(softmax(z_zs / T), softmax(z / T))`` (the KL up to
the teacher's constant entropy). Per parameter tensor, when ``g . g_kl < 0``
the update uses ``g - lambda * (g . g_kl / ||g_kl||^2) g_kl`` (the component of
``g`` against ``g_kl`` removed), otherwise ``g``. The distillation loss only
gives the direction; it is never added to the loss.

Reference (BeierZhu/Prompt-align 1b76203, ``ProGrad.public/trainers/prograd.py``
and ``Dassl.ProGrad.pytorch/dassl/engine/trainer.py`` ``prograd_backward_and_update``;
``configs/trainers/ProGrad/rn50.yaml``): 16 context tokens, class token at the
end, SGD lr 0.002, batch 32, 200 epochs, lambda 1.0 (0.8 for Flowers102, DTD
and EuroSAT at 8 and 16 shots), T 1.0. Weight decay is applied by the
optimiser, after the projection, as there.

Departures: the context starts as CoOp's (N(0, 0.02), or ``ctx_init``) where
the reference writes its template's words into the last slots and zeros into
the rest; the teacher uses the dataset's templates (CoOp's), not ProGrad's
re-worded ones; a zero ``g_kl`` leaves ``g`` unchanged (the reference divides by
its norm). The projected gradient reaches the trainer as the gradient of a
surrogate whose value is the cross-entropy, so the loop stays the plain one.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from visprompt.method_spec import register_method
from visprompt.methods.base import StepOutput, TrainBatch, cosine_logits
from visprompt.methods.coop import ContextConfig, ContextMethod
from visprompt.methods.zeroshot import register_zero_shot_anchor
from visprompt.robust.losses import cross_entropy, soft_cross_entropy


class ProGradConfig(ContextConfig):
    name: Literal["prograd"] = "prograd"
    weight: float = Field(1.0, ge=0.0, le=1.0, description="lambda: share of g's conflict removed")
    temperature: float = Field(1.0, gt=0.0, description="distillation temperature T")


def project_conflict(g: torch.Tensor, g_kl: torch.Tensor, weight: float) -> torch.Tensor:
    """``g`` with ``weight`` times its component along ``g_kl`` removed when they conflict.

    Decided on the device (``torch.where``), so a training step never waits for
    the host to read the sign; no conflict, or a zero ``g_kl``, leaves ``g`` as it is.
    """
    dot = (g * g_kl).sum()
    norm2 = (g_kl * g_kl).sum()
    conflict = (dot < 0) & (norm2 > 0)
    coef = torch.where(conflict, dot / torch.where(conflict, norm2, 1.0), 0.0)
    return g - weight * coef * g_kl


@register_method(
    "prograd",
    config=ProGradConfig,
    defaults={"optim.epochs": 200, "optim.batch_size": 32, "optim.lr": 0.002},
    reference={"precision": "fp16"},  # ProGrad configs: PREC fp16
    text_cost="K",
    description="ProGrad: CoOp with CE gradients projected off the zero-shot KL's conflicts",
)
class ProGrad(ContextMethod):
    """ProGrad: CoOp whose updates never oppose the zero-shot distillation gradient."""

    def __init__(self, backbone, classnames, config: ProGradConfig, templates=()):
        super().__init__(backbone, classnames, config, templates)
        register_zero_shot_anchor(self, backbone, self.classnames, templates)

    def training_loss(self, batch: TrainBatch) -> StepOutput:
        cfg = self.config
        image = batch.features.image
        logits = self(batch.features)
        with torch.no_grad():
            teacher = cosine_logits(image, self.zs_text, self.logit_scale)
        t = cfg.temperature
        ce = cross_entropy(logits, batch.labels)
        kl = soft_cross_entropy(logits / t, (teacher / t).softmax(dim=-1)) * t * t
        params = [p for p in self.parameters() if p.requires_grad]
        g_ce = torch.autograd.grad(ce, params, retain_graph=True)
        g_kl = torch.autograd.grad(kl, params)
        projected = [project_conflict(g, k, cfg.weight) for g, k in zip(g_ce, g_kl, strict=True)]
        # value: the cross-entropy; gradient wrt each parameter: its projected gradient
        surrogate = ce.detach() + sum(
            (p * g).sum() - (p.detach() * g).sum() for p, g in zip(params, projected, strict=True)
        )
        return StepOutput(
            loss=surrogate, logits=logits.detach(), parts={"ce": ce.item(), "kl": kl.item()}
        )
