"""NLPrompt (Pan et al., CVPR 2025): CoOp + OT purification, CE on clean, MAE on noisy.

See :mod:`visprompt.methods.ot_training` for the purification and the epoch
schedule; the prompt is CoOp's shared context.
"""

from __future__ import annotations

from typing import Literal

from visprompt.method_spec import register_method
from visprompt.methods.base import EpochContext, EpochPlan, StepOutput, TrainBatch
from visprompt.methods.coop import ContextConfig, ContextMethod
from visprompt.methods.ot_training import OTConfig, ot_epoch_plan, ot_loss


class NLPromptConfig(ContextConfig, OTConfig):
    name: Literal["nlprompt"] = "nlprompt"


@register_method(
    "nlprompt",
    config=NLPromptConfig,
    defaults={"optim.epochs": 200, "optim.batch_size": 32, "optim.lr": 0.002},
    # released code: log_softmax of probabilities as the OT cost (= -p); PREC fp16
    reference={"method.ot_cost": "neg_prob", "precision": "fp16"},
    text_cost="K (+ K per epoch: purification)",
    description="NLPrompt: CoOp + OT purification; CE on clean, MAE on noisy",
)
class NLPrompt(ContextMethod):
    """NLPrompt: OT-purified CoOp (CE on the clean subset, MAE on the rest)."""

    def start_epoch(self, ctx: EpochContext) -> EpochPlan:
        return ot_epoch_plan(self.config, ctx)

    def training_loss(self, batch: TrainBatch) -> StepOutput:
        logits = self(batch.features)
        return StepOutput(loss=ot_loss(logits, batch.labels, batch.group), logits=logits)
