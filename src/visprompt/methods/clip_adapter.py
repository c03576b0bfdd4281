"""CLIP-Adapter (Gao et al., IJCV 2023): a residual bottleneck MLP on the image feature.

``A(z) = ReLU(W_2 ReLU(W_1 z))`` with ``W_1``: D -> D/4 and ``W_2``: D/4 -> D
(no biases), ``z' = ratio * A(z) + (1 - ratio) * z``, logits
``logit_scale * cos(z', t_k)`` against the frozen zero-shot classifier,
cross-entropy; only the adapter trains.

Reference (gaopengcuhk/CLIP-Adapter 08d07f8, ``clip_adapter.py``, its only code
file): ratio 0.2, reduction 4, no biases, PyTorch's default initialisation. The
repository ships no training configuration (its README says to run it under
CoOp's commands), so the optimiser settings here are CoOp's (SGD lr 0.002,
batch 32, 200 epochs): unverified against the paper, chosen so that the
comparison with the prompt methods is under one protocol.

Departures: the adapter sees the L2-normalised cached feature (the reference
the raw one; the mix with ``ratio`` is then between unit-scale vectors) and the
width follows the backbone (the reference hard-codes RN50's 1024).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from visprompt.data.features import FeatureBatch
from visprompt.method_spec import MethodConfig, register_method
from visprompt.methods.base import cosine_logits
from visprompt.methods.feature_base import FeatureMethod


class CLIPAdapterConfig(MethodConfig):
    name: Literal["clip-adapter"] = "clip-adapter"
    ratio: float = Field(0.2, ge=0.0, le=1.0, description="weight of the adapted feature")
    reduction: int = Field(4, ge=1, description="bottleneck width = D // reduction")


@register_method(
    "clip-adapter",
    config=CLIPAdapterConfig,
    defaults={"optim.epochs": 200, "optim.batch_size": 32, "optim.lr": 0.002},
    text_cost="0 (K once)",
    description="CLIP-Adapter: residual bottleneck MLP on the image feature (features only)",
)
class CLIPAdapter(FeatureMethod):
    """CLIP-Adapter: ``ratio * MLP(z) + (1 - ratio) * z`` against the zero-shot classifier."""

    def __init__(self, backbone, classnames, config: CLIPAdapterConfig, templates=()):
        super().__init__(backbone, classnames, config, templates)
        d = backbone.embed_dim
        hidden = max(1, d // config.reduction)
        self.adapter = nn.Sequential(
            nn.Linear(d, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, d, bias=False),
            nn.ReLU(inplace=True),
        ).to(backbone.device)

    def adapt(self, image: torch.Tensor) -> torch.Tensor:
        z = image.float()
        return self.config.ratio * self.adapter(z) + (1.0 - self.config.ratio) * z

    def forward(
        self, features: FeatureBatch, text_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        weights = self.zs_text if text_features is None else text_features
        return cosine_logits(self.adapt(features.image), weights, self.logit_scale)
