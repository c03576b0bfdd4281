"""``none``: trust every given label (the ablation ``purify: none`` of the OT methods)."""

from __future__ import annotations

import torch

from visprompt.robust.purifier import Purifier, register_purifier
from visprompt.robust.split import Split


@register_purifier("none")
class NoPurifier(Purifier):
    """Every sample is clean; its probabilities are never looked at.

    ``judges_labels`` is False: the training loop skips the prediction pass and
    logs no split (as the OT methods' ``purify: none`` always has), and
    ``label-issues`` judges such a run by its predictions instead.
    """

    judges_labels = False
    description = "no purification (every given label is trusted)"

    def split(
        self,
        probs: torch.Tensor | None,
        labels: torch.Tensor,
        *,
        epoch: int,
        num_epochs: int,
        generator: torch.Generator | None = None,
    ) -> Split:
        n = labels.shape[0]
        return Split(
            clean=torch.ones(n, dtype=torch.bool, device=labels.device),
            scores=torch.ones(n, dtype=torch.float32, device=labels.device),
        )
