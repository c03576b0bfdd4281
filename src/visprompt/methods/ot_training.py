"""NLPrompt's training framework, shared by nlprompt and visprompt (and any later OT method).

Before every epoch the whole training set is classified by the current model
(eval mode, clean cached view) and split by the method's purifier
(``method.purify``: ``ot``, entropic optimal transport,
:mod:`visprompt.robust.purifiers.ot`, where a sample is *clean* when the OT
pseudo-label equals its given label; or ``none``, every label trusted).
Clean samples are trained with cross-entropy on the given label, the rest with
MAE (GCE with q = 1) on the given label, which is robust to the wrong ones.

``schedule: sequential`` (default) runs all clean batches, then all noisy
batches, each batch one step, as NLPrompt's released trainer does - it is the
default because it reproduces the reference. ``schedule: mixed`` shuffles both
groups together and averages per-sample losses in each batch.

Departure on purpose: NLPrompt's released trainer classifies the training set
through its *train* loader (qunovo/NLPrompt 6266a82, ``trainers/nlprompt.py``):
augmented views, shuffled, with ``drop_last``, so the samples of the dropped
last batch are never scored and fall to the noisy part. We score every sample
on its clean view, so that the split does not depend on the batch order and
every label gets a verdict (``label-issues`` reports all of them). The batches
themselves drop as the reference's do (``optim.drop_last``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from visprompt.method_spec import MethodConfig
from visprompt.methods.base import EpochContext, EpochPlan, loader_drop_last, shuffled_batches
from visprompt.robust.losses import cross_entropy, mae_loss
from visprompt.robust.purifier import PurifierChoice, purifier_for
from visprompt.robust.purifiers.ot import OTOptions
from visprompt.robust.split import CLEAN, NOISY

__all__ = ["CLEAN", "NOISY", "OTConfig", "ot_epoch_plan", "ot_loss"]


class OTConfig(MethodConfig, PurifierChoice, OTOptions):
    """Options of NLPrompt's training: the purifier (OT by default), its options, the schedule."""

    purify: Literal["ot", "none"] = Field("ot", description="OT purification each epoch, or none")
    schedule: Literal["sequential", "mixed"] = "sequential"


def ot_epoch_plan(cfg: OTConfig, ctx: EpochContext) -> EpochPlan:
    """Purify (unless ``purify: none``) and lay out the epoch's batches."""
    n = ctx.labels.numel()
    everything = torch.arange(n)
    # NLPrompt's clean and noisy loaders are copies of the train loader with samples
    # removed (qunovo/NLPrompt 6266a82, trainers/nlprompt.py), so both keep the
    # drop_last the full training set was given: a part smaller than one batch is
    # not trained on that epoch, as there.
    drop = loader_drop_last(ctx.drop_last, n, ctx.batch_size)
    purifier = purifier_for(cfg)
    if not purifier.judges_labels:  # purify: none - no prediction pass, nothing to log
        return EpochPlan(
            batches=shuffled_batches(everything, ctx.batch_size, ctx.generator, drop),
            group=torch.full((n,), CLEAN, dtype=torch.long),
        )
    split = purifier.split(
        ctx.predict_train(),
        ctx.labels,
        epoch=ctx.epoch,
        num_epochs=ctx.num_epochs,
        generator=ctx.generator,
    )
    clean = split.clean.cpu()
    if cfg.schedule == "sequential":
        batches = shuffled_batches(everything[clean], ctx.batch_size, ctx.generator, drop)
        batches += shuffled_batches(everything[~clean], ctx.batch_size, ctx.generator, drop)
    else:
        batches = shuffled_batches(everything, ctx.batch_size, ctx.generator, drop)
    return EpochPlan(
        batches=batches,
        group=split.group(),
        stats=purifier.metrics(split, ctx.labels, ctx.true_labels),
    )


def ot_loss(logits: torch.Tensor, labels: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on clean samples, MAE on noisy ones, averaged over the batch."""
    per_sample = torch.where(
        group == CLEAN,
        cross_entropy(logits, labels, reduction="none"),
        mae_loss(logits, labels, reduction="none"),
    )
    return per_sample.mean()
