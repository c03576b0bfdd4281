"""Noise-robust building blocks shared by the methods: losses and OT purification."""

from visprompt.robust.losses import (
    confidence_penalty,
    cross_entropy,
    entropy,
    gce_loss,
    mae_loss,
    sce_loss,
    soft_cross_entropy,
)
from visprompt.robust.purify import (
    PurifyResult,
    SinkhornResult,
    budget_at,
    purify,
    sinkhorn_log,
    split_quality,
)

__all__ = [
    "PurifyResult",
    "SinkhornResult",
    "budget_at",
    "confidence_penalty",
    "cross_entropy",
    "entropy",
    "gce_loss",
    "mae_loss",
    "purify",
    "sce_loss",
    "sinkhorn_log",
    "soft_cross_entropy",
    "split_quality",
]
