"""Optimiser and learning-rate schedule of the reference configs (Dassl's).

Epochs ``0 .. W-1`` (``W = warmup_epochs``) run at the constant ``warmup_lr``;
epoch ``e >= W`` runs at ``lr * 0.5 * (1 + cos(pi * (e - W) / epochs))``
(cosine), or at ``lr`` (constant). The schedule is stepped once per epoch.

The cosine restarts its count after the warm-up, as Dassl's
``ConstantWarmupScheduler`` does (KaiyangZhou/Dassl.pytorch 27eb2f4,
``dassl/optim/lr_scheduler.py``: the wrapped ``CosineAnnealingLR(T_max=epochs)``
is stepped only once the warm-up is over, so the first epoch after it runs at
the full ``lr``). With ``W = 0`` this is the plain ``cos(pi * e / epochs)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from visprompt.config import OptimConfig


def lr_factor(epoch: int, cfg: OptimConfig) -> float:
    """Multiplier of ``cfg.lr`` during ``epoch`` (0-based)."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr / cfg.lr
    if cfg.scheduler == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / cfg.epochs))


def build_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: OptimConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    params = [p for p in params if p.requires_grad]
    if cfg.name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    elif cfg.name == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: lr_factor(e, cfg))
    return opt, sched
