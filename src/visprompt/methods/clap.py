"""ZS-LP and CLAP (Silva-Rodríguez et al., CVPR 2024): linear probes from the zero-shot weights.

Both train class prototypes ``W`` (K x D) initialised to the zero-shot
classifier ``t`` (so step 0 is zero-shot CLIP), with logits
``logit_scale * cos(z, W_k)``:

* ``zs-lp``: cross-entropy only;
* ``clap``: cross-entropy plus the class-adaptive constraint toward the
  zero-shot weights, ``(1/K) sum_k alpha_k ||W_k - t_k||^2``, where ``alpha_k``
  is the zero-shot model's mean probability of class k on the training images
  labelled k (computed once, before the first epoch, from the given labels, as
  the reference computes it from its support set) and then kept fixed.

Reference (jusiro/CLAP dbdf409, ``trainers/adapters.py``: ``zero_shot_constraint``,
``init_lagrangian_multipliers``; ``configs/trainers/SGD_lr1e-1_B256_ep300.yaml``):
SGD lr 0.1, momentum 0.9, weight decay 0, batch 256, 300 epochs, one-epoch
warm-up then cosine, for every dataset and shot count. The released scripts
keep the multipliers fixed (the augmented-Lagrangian update exists in the code
behind a flag none of them sets); so do we.

Departures: ``t`` is the L2-normalised zero-shot classifier and ``W`` starts
there (the reference uses the unnormalised mean text feature, so the penalty's
scale differs); the reference trains on a pool of 20 augmented views per image,
we on the cached views (``data.num_views``; :mod:`visprompt.methods.feature_base`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from visprompt.method_spec import MethodConfig, register_method
from visprompt.methods.base import EpochContext, EpochPlan, StepOutput, TrainBatch
from visprompt.methods.feature_base import FeatureMethod
from visprompt.robust.losses import cross_entropy

SETTINGS = {
    "optim.name": "sgd",
    "optim.lr": 0.1,
    "optim.weight_decay": 0.0,
    "optim.epochs": 300,
    "optim.batch_size": 256,
}


class ZSLPConfig(MethodConfig):
    name: Literal["zs-lp"] = "zs-lp"


class CLAPConfig(MethodConfig):
    name: Literal["clap"] = "clap"


def class_adaptive_weights(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """alpha_k = mean of ``probs[i, k]`` over the samples i labelled k (0 for an empty class)."""
    k = probs.shape[1]
    onehot = torch.nn.functional.one_hot(labels.long(), k).to(probs.dtype)
    counts = onehot.sum(dim=0)
    return (probs * onehot).sum(dim=0) / counts.clamp_min(1.0)


@register_method(
    "zs-lp",
    config=ZSLPConfig,
    defaults=SETTINGS,
    text_cost="0 (K once)",
    description="ZS-LP: linear probe initialised from the zero-shot weights (features only)",
)
class ZSLinearProbe(FeatureMethod):
    """ZS-LP: class prototypes initialised from the zero-shot classifier, cross-entropy."""

    def __init__(self, backbone, classnames, config, templates=()):
        super().__init__(backbone, classnames, config, templates)
        self.prototypes = nn.Parameter(self.zs_text.clone())

    def classifier(self) -> torch.Tensor:
        return self.prototypes

    def penalty(self) -> torch.Tensor | None:
        return None

    def training_loss(self, batch: TrainBatch) -> StepOutput:
        logits = self(batch.features)
        ce = cross_entropy(logits, batch.labels)
        extra = self.penalty()
        if extra is None:
            return StepOutput(loss=ce, logits=logits)
        return StepOutput(
            loss=ce + extra, logits=logits, parts={"ce": ce.item(), "constraint": extra.item()}
        )


@register_method(
    "clap",
    config=CLAPConfig,
    defaults=SETTINGS,
    text_cost="0 (K once)",
    description="CLAP: ZS-LP + class-adaptive L2 constraint toward the zero-shot weights",
)
class CLAP(ZSLinearProbe):
    """CLAP: ZS-LP with ``mean_k alpha_k ||W_k - t_k||^2`` (alpha from zero-shot confidence)."""

    def __init__(self, backbone, classnames, config, templates=()):
        super().__init__(backbone, classnames, config, templates)
        self.alpha: torch.Tensor | None = None

    def start_epoch(self, ctx: EpochContext) -> EpochPlan:
        if self.alpha is None:  # before the first epoch W = t: the model is zero-shot CLIP
            probs = ctx.predict_train().float()
            self.alpha = class_adaptive_weights(probs, ctx.labels.to(probs.device))
        return super().start_epoch(ctx)

    def penalty(self) -> torch.Tensor:
        if self.alpha is None:
            raise RuntimeError("CLAP.training_loss called before start_epoch set alpha")
        dist = (self.prototypes - self.zs_text).pow(2).sum(dim=1)
        return (self.alpha.to(dist.device) * dist).mean()

    def extra_state(self) -> dict[str, Any]:
        return {} if self.alpha is None else {"alpha": self.alpha.detach().cpu().clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.alpha = None if "alpha" not in state else torch.as_tensor(state["alpha"]).float()
