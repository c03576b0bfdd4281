"""The learning-rate schedule is Dassl's constant warm-up followed by cosine.

Facts restated here (KaiyangZhou/Dassl.pytorch 27eb2f4, ``dassl/optim/lr_scheduler.py``
and ``dassl/engine/trainer.py``): the scheduler is stepped once at the end of
every epoch; ``ConstantWarmupScheduler`` holds ``WARMUP_CONS_LR`` while its own
epoch count is below ``WARMUP_EPOCH``, and from then on hands over to a
``CosineAnnealingLR(T_max=MAX_EPOCH)`` that it steps only after the hand-over
epoch, so the first epoch after the warm-up runs at the full learning rate and
epoch ``e`` after it at ``lr * 0.5 * (1 + cos(pi * (e - W) / MAX_EPOCH))``.
"""

from __future__ import annotations

import pytest
import torch

from visprompt.config import load_run_config
from visprompt.engine.optim import build_optimizer

BASE = ["backbone.name=tiny-vit", "data.dataset=folder", "data.root=/x"]


def dassl_schedule(lr: float, warmup_lr: float, warmup: int, epochs: int) -> list[float]:
    """Per-epoch learning rates as Dassl's warm-up wrapper drives torch's cosine."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=float(epochs))
    rates = []
    for epoch in range(epochs):
        if epoch < warmup:
            rates.append(warmup_lr)
            continue
        if epoch > warmup:  # the successor is stepped only after the hand-over epoch
            opt.step()
            cosine.step()
        rates.append(cosine.get_last_lr()[0])
    return rates


def our_schedule(overrides: list[str]) -> tuple[list[float], object]:
    cfg = load_run_config(None, BASE + overrides)
    opt, sched = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg.optim)
    rates = []
    for _ in range(cfg.optim.epochs):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates, cfg.optim


@pytest.mark.parametrize(
    "method, epochs", [("cocoop", 10), ("coop", 50), ("nlprompt", 200), ("visprompt", 7)]
)
def test_warmup_then_cosine_matches_dassl(method, epochs):
    ours, optim = our_schedule([f"method.name={method}", f"optim.epochs={epochs}"])
    assert optim.warmup_epochs == 1 and optim.scheduler == "cosine"
    ref = dassl_schedule(optim.lr, optim.warmup_lr, optim.warmup_epochs, epochs)
    assert ours == pytest.approx(ref, rel=1e-12)
    assert ours[1] == pytest.approx(optim.lr)  # full rate right after the warm-up


def test_total_learning_rate_of_cocoop_matches_dassl():
    # The measure: starting the cosine one epoch early lost 18% of CoCoOp's total lr.
    ours, optim = our_schedule(["method.name=cocoop", "optim.epochs=10"])
    ref = dassl_schedule(optim.lr, optim.warmup_lr, 1, 10)
    assert sum(ours) == pytest.approx(sum(ref), rel=1e-12)


def test_without_warmup_the_cosine_starts_at_epoch_zero():
    ours, optim = our_schedule(["method.name=coop", "optim.epochs=8", "optim.warmup_epochs=0"])
    assert ours == pytest.approx(dassl_schedule(optim.lr, optim.warmup_lr, 0, 8), rel=1e-12)
