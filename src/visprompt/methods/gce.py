"""CoOp trained with generalised cross-entropy (Zhang & Sabuncu, NeurIPS 2018).

GCE(p, y) = (1 - p_y^q) / q interpolates between cross-entropy (q -> 0) and
MAE (q = 1); larger q is more robust to wrong labels and slower to fit.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from visprompt.methods.base import StepOutput, TrainBatch
from visprompt.methods.coop import ContextConfig, ContextMethod
from visprompt.methods.registry import register_method
from visprompt.robust.losses import gce_loss


class GCEConfig(ContextConfig):
    name: Literal["gce"] = "gce"
    q: float = Field(0.7, gt=0.0, le=1.0, description="GCE exponent in (0, 1]")


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
        return StepOutput(loss=gce_loss(logits, batch.labels, q=self.config.q), logits=logits)
