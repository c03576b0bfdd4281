"""CoOp trained with generalised cross-entropy (Zhang & Sabuncu, NeurIPS 2018).

GCE(p, y) = (1 - p_y^q) / q interpolates between cross-entropy (q -> 0) and
MAE (q = 1); larger q is more robust to wrong labels and slower to fit. p_y^q
is evaluated as exp(q log p_y), so the gradient stays finite when p_y
underflows (:func:`visprompt.robust.gce_loss`).

PTNL (:mod:`visprompt.methods.ptnl`) is this method with PTNL's defaults (q =
0.5, the class-balanced noise protocol); ``loss: ce`` gives plain CoOp under
the same options (PTNL's CE rows).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from visprompt.method_spec import register_method
from visprompt.methods.base import StepOutput, TrainBatch
from visprompt.methods.coop import ContextConfig, ContextMethod
from visprompt.robust.losses import cross_entropy, gce_loss


class GCEConfig(ContextConfig):
    name: Literal["gce"] = "gce"
    loss: Literal["gce", "ce"] = Field("gce", description="gce, or ce (plain CoOp)")
    q: float = Field(0.7, gt=0.0, le=1.0, description="GCE exponent in (0, 1] (1 = MAE)")


@register_method(
    "gce",
    config=GCEConfig,
    defaults={"optim.epochs": 200, "optim.batch_size": 32, "optim.lr": 0.002},
    text_cost="K",
    description="CoOp with generalised cross-entropy (q = 0.7)",
)
class GCE(ContextMethod):
    """CoOp with the generalised cross-entropy loss."""

    def training_loss(self, batch: TrainBatch) -> StepOutput:
        logits = self(batch.features)
        if self.config.loss == "ce":
            loss = cross_entropy(logits, batch.labels)
        else:
            loss = gce_loss(logits, batch.labels, q=self.config.q)
        return StepOutput(loss=loss, logits=logits)
