"""What every method gives the trainer, and what the trainer gives every method.

A method is an ``nn.Module`` holding only its trainable prompt module (the
frozen backbone is referenced, not registered, so the method's ``state_dict``
is exactly the prompt weights). The trainer knows the loop; the method knows
its math:

* ``start_epoch(ctx) -> EpochPlan`` - called before every epoch; decides which
  samples form which batches and in which loss group (e.g. NLPrompt's OT split
  into clean and noisy), and returns statistics to log;
* ``training_loss(batch) -> StepOutput`` - the loss of one batch (and its logits);
* ``forward(features) -> logits`` - evaluation/prediction logits (B, K);
* ``extra_state()/load_extra_state()`` - non-parameter state that must survive
  a resume (e.g. JoAPR's loss history), as JSON-able values or tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from visprompt.backbone import FrozenCLIP
from visprompt.data.features import FeatureBatch
from visprompt.method_spec import MethodConfig


@dataclass
class TrainBatch:
    """One training batch: features, given (noisy) labels, sample indices, loss groups."""

    features: FeatureBatch
    labels: torch.Tensor
    index: torch.Tensor
    group: torch.Tensor


@dataclass
class StepOutput:
    loss: torch.Tensor
    logits: torch.Tensor
    #: scalar parts of the loss for logging (floats)
    parts: dict[str, float] = field(default_factory=dict)


@dataclass
class EpochContext:
    """What the trainer tells a method before an epoch.

    ``predict_train()`` returns class probabilities (N, K) of every training
    sample under the current model: eval mode, no gradient, clean cached view.
    """

    epoch: int
    num_epochs: int
    batch_size: int
    labels: torch.Tensor
    true_labels: torch.Tensor | None
    generator: torch.Generator
    predict_train: Callable[[], torch.Tensor]
    #: drop each sample set's last partial batch (``optim.drop_last``; see shuffled_batches)
    drop_last: bool = False


@dataclass
class EpochPlan:
    """The batches of one epoch and each sample's loss group.

    Attributes:
        batches: index tensors into the training set, in the order to train on.
        group: (N,) int group of each sample this epoch (method-defined; 0 = default).
        stats: numbers to log for this epoch (e.g. purification precision).
    """

    batches: list[torch.Tensor]
    group: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)


def shuffled_batches(
    indices: torch.Tensor, batch_size: int, generator: torch.Generator, drop_last: bool = False
) -> list[torch.Tensor]:
    """``indices`` in a random order, cut into batches of ``batch_size``.

    The last batch may be smaller; ``drop_last`` leaves it out, as a torch
    ``DataLoader(drop_last=True)`` does (so a set smaller than one batch gives
    none). Whether a loader drops is decided where it is built: see
    :func:`loader_drop_last`. The permutation is drawn either way, so the
    generator's state does not depend on ``drop_last``.
    """
    if indices.numel() == 0:
        return []
    order = indices[torch.randperm(indices.numel(), generator=generator)]
    batches = list(order.split(batch_size))
    if drop_last and batches[-1].numel() < batch_size:
        batches.pop()
    return batches


def loader_drop_last(enabled: bool, num_samples: int, batch_size: int) -> bool:
    """Dassl's rule for a train loader built on ``num_samples`` samples.

    ``drop_last=is_train and len(data_source) >= batch_size``
    (KaiyangZhou/Dassl.pytorch 27eb2f4, ``dassl/data/data_manager.py``): the last
    partial batch is dropped unless the set is smaller than one batch, which is
    then trained on whole. ``enabled`` is ``optim.drop_last``.
    """
    return enabled and num_samples >= batch_size


class PromptMethod(nn.Module):
    """Base class of every method (see module docstring for the contract)."""

    #: False for methods without parameters (zero-shot): ``train`` only evaluates.
    trainable: ClassVar[bool] = True

    def __init__(
        self,
        backbone: FrozenCLIP,
        classnames: Sequence[str],
        config: MethodConfig,
        templates: Sequence[str] = (),
    ) -> None:
        """``templates``: the dataset's hand-written prompt templates (``{}`` = class name),
        for methods that use them (zero-shot); how the text tower runs (chunks, shared
        prefix) is the backbone's setting, not the method's."""
        super().__init__()
        # Not registered as a submodule: the method's state_dict is its prompt module only.
        self.__dict__["backbone"] = backbone
        self.classnames = tuple(classnames)
        self.config = config
        self.logit_scale = backbone.logit_scale

    backbone: FrozenCLIP

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def describe(self) -> str:
        """One line for the start of training (trainable parameter count)."""
        n = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return f"{self.config.name}: {n:,} trainable parameters"

    # -- evaluation -------------------------------------------------------
    def class_text_features(self) -> torch.Tensor | None:
        """(K, D) normalised text features when prompts are shared by all images, else None.

        Evaluation computes them once and passes them to ``forward`` for every batch.
        """
        return None

    def forward(
        self, features: FeatureBatch, text_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    # -- training ---------------------------------------------------------
    def start_epoch(self, ctx: EpochContext) -> EpochPlan:
        n = ctx.labels.numel()
        return EpochPlan(
            batches=shuffled_batches(
                torch.arange(n),
                ctx.batch_size,
                ctx.generator,
                loader_drop_last(ctx.drop_last, n, ctx.batch_size),
            ),
            group=torch.zeros(n, dtype=torch.long),
        )

    def training_loss(self, batch: TrainBatch) -> StepOutput:
        logits = self(batch.features)
        return StepOutput(loss=F.cross_entropy(logits, batch.labels), logits=logits)

    # -- state beyond parameters ------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no extra state, got {sorted(state)}")


def cosine_logits(image: torch.Tensor, text: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """``logit_scale * cos(image, text)``; text (K, D) shared or (B, K, D) per image."""
    image = F.normalize(image.float(), dim=-1)
    text = F.normalize(text.float(), dim=-1)
    if text.dim() == 2:
        return logit_scale * image @ text.t()
    return logit_scale * torch.einsum("bd,bkd->bk", image, text)
