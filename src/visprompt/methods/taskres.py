"""TaskRes (Yu et al., CVPR 2023): a learned residual on the zero-shot text classifier.

``t'_k = t_k + alpha * x_k`` with ``x`` (K x D) zero-initialised, logits
``logit_scale * cos(z, t'_k)``, cross-entropy; only ``x`` trains, so step 0 is
zero-shot CLIP.

Reference defaults (geekyutao/TaskRes 5195359, ``train_regular.sh`` and
``configs/trainers/TaskRes/adam_lr2e-3_B256_ep200.yaml``, 16 shots): Adam lr
2e-3 (ImageNet 2e-4) with Dassl's weight decay 5e-4, batch 256, 200 epochs,
alpha 0.5 (Flowers102 1.0), one-epoch warm-up then cosine.

Departures: ``t`` is the L2-normalised zero-shot classifier (the reference adds
the residual to the unnormalised mean text feature, so the same alpha is a
relatively larger step here) and a step reads a cached augmented view
(:mod:`visprompt.methods.feature_base`).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from visprompt.method_spec import MethodConfig, register_method
from visprompt.methods.feature_base import FeatureMethod


class TaskResConfig(MethodConfig):
    name: Literal["taskres"] = "taskres"
    alpha: float = Field(0.5, ge=0.0, description="residual scale (Flowers102: 1.0)")


@register_method(
    "taskres",
    config=TaskResConfig,
    defaults={
        "optim.name": "adam",
        "optim.lr": 0.002,
        "optim.epochs": 200,
        "optim.batch_size": 256,
        "optim.weight_decay": 5e-4,
    },
    text_cost="0 (K once)",
    description="TaskRes: learned residual on the zero-shot text classifier (features only)",
)
class TaskRes(FeatureMethod):
    """TaskRes: zero-shot classifier plus a learned, zero-initialised residual."""

    def __init__(self, backbone, classnames, config: TaskResConfig, templates=()):
        super().__init__(backbone, classnames, config, templates)
        self.residual = nn.Parameter(torch.zeros_like(self.zs_text))

    def classifier(self) -> torch.Tensor:
        return self.zs_text + self.config.alpha * self.residual
