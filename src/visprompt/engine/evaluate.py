"""Evaluation: logits over many cached features, accuracy and macro accuracy."""

from __future__ import annotations

import contextlib

import torch

from visprompt.data.features import FeatureBatch
from visprompt.methods.base import PromptMethod


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on GPU for ``precision: amp``; nothing otherwise (fp32 on CPU)."""
    if precision == "amp" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_logits(
    method: PromptMethod,
    features: FeatureBatch,
    batch_size: int = 256,
    precision: str = "fp32",
) -> torch.Tensor:
    """(N, K) logits of every sample, in eval mode; shared text features computed once."""
    was_training = method.training
    method.eval()
    device = method.backbone.device
    try:
        with autocast_context(device, precision):
            text = method.class_text_features()
            out = []
            for start in range(0, len(features), batch_size):
                chunk = features.index(slice(start, start + batch_size)).to(device)
                out.append(method(chunk, text_features=text).float().cpu())
    finally:
        method.train(was_training)
    if not out:
        return torch.zeros(0, method.num_classes)
    return torch.cat(out)


def accuracy_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro (mean per-class) accuracy, in percent."""
    labels = labels.to(logits.device)
    pred = logits.argmax(dim=-1)
    correct = (pred == labels).float()
    classes = labels.unique()
    per_class = torch.stack([correct[labels == c].mean() for c in classes])
    return {
        "accuracy": 100.0 * correct.mean().item(),
        "macro_accuracy": 100.0 * per_class.mean().item(),
    }
