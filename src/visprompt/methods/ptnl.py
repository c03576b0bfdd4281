"""PTNL (Wu et al., ICCV 2023): CoOp trained with generalised cross-entropy.

"Why Is Prompt Tuning for Vision-Language Models Robust to Noisy Labels?"
shows that a shared learnable context is already fairly robust to label noise
and that the robust loss GCE makes it more so. The method is CoOp (one
context shared by all classes and images, one text pass of K prompts per
step) with the loss ``GCE_q = (1 - p_y^q) / q`` on the given labels, q = 0.5.

Reference defaults: 16 context tokens, N(0, 0.02) initialisation, SGD lr 0.002,
batch 32, 50 epochs, RN50, on the class-balanced noise protocol
(``noise.protocol: balanced``, :mod:`visprompt.data.protocols`), which is
applied by default for this method; set ``noise.protocol=relabel`` to compare
it on the NLPrompt/VisPrompt protocol instead. ``loss: ce`` gives the paper's
CoOp-with-CE rows under the same protocol.

Differences from the reference: GCE's p_y^q is evaluated as exp(q log p_y)
(finite gradients when p_y underflows; :func:`visprompt.robust.gce_loss`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from visprompt.config import RunConfig
from visprompt.errors import VispromptError
from visprompt.methods.base import StepOutput, TrainBatch
from visprompt.methods.coop import ContextConfig, ContextMethod
from visprompt.methods.registry import register_method
from visprompt.robust.losses import cross_entropy, gce_loss


class PTNLConfig(ContextConfig):
    """PTNL's options: the context options of CoOp plus the loss."""

    name: Literal["ptnl"] = "ptnl"
    loss: Literal["gce", "ce"] = Field("gce", description="gce (PTNL) or ce (plain CoOp)")
    q: float = Field(0.5, gt=0.0, le=1.0, description="GCE exponent q (1 = MAE)")


def check_balanced_protocol(config: RunConfig) -> None:
    """Cross-section checks for methods whose reference protocol is ``balanced``."""
    if config.noise.protocol != "balanced":
        return
    if config.data.shots is None:
        raise VispromptError(
            "noise.protocol balanced needs a number of shots per class; set data.shots (e.g. 16) "
            "or use noise.protocol relabel"
        )
    if config.data.allow_fewer:
        raise VispromptError(
            "data.allow_fewer is not available with noise.protocol balanced (every class gets "
            "exactly data.shots slots); lower data.shots or set noise.protocol relabel"
        )
    if config.noise.type == "asym-semantic":
        raise VispromptError(
            "noise.type asym-semantic is not available with noise.protocol balanced; choose sym "
            "or asym, or set noise.protocol relabel"
        )


@register_method(
    "ptnl",
    config=PTNLConfig,
    defaults={
        "optim.epochs": 50,
        "optim.batch_size": 32,
        "optim.lr": 0.002,
        "noise.protocol": "balanced",
    },
    # released script: CE (GCE only behind --use-robustloss); PREC fp16
    reference={"method.loss": "ce", "precision": "fp16"},
    text_cost="K",
    description="PTNL: CoOp with generalised cross-entropy (q 0.5), balanced noise protocol",
    check=check_balanced_protocol,
)
class PTNL(ContextMethod):
    """PTNL: a shared learnable context trained with GCE (q = 0.5)."""

    def training_loss(self, batch: TrainBatch) -> StepOutput:
        logits = self(batch.features)
        if self.config.loss == "ce":
            loss = cross_entropy(logits, batch.labels)
        else:
            loss = gce_loss(logits, batch.labels, q=self.config.q)
        return StepOutput(loss=loss, logits=logits)
