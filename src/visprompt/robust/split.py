"""The one result every purifier returns: which given labels are judged correct.

:class:`Split` is what the training loop, ``label-issues`` and the logged
``purify_*`` numbers consume, whatever rule produced it (NLPrompt's optimal
transport, JoAPR's loss mixture, nothing at all). The loss groups that a
method's epoch plan hands to the trainer use one encoding, :data:`CLEAN` and
:data:`NOISY`, defined here once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from visprompt.errors import VispromptError
from visprompt.robust.quality import purify_metrics, split_quality

#: Loss group of a sample whose given label is judged correct / wrong (``EpochPlan.group``).
CLEAN, NOISY = 0, 1


@dataclass(frozen=True)
class Split:
    """A clean/noisy verdict on every training sample, with the evidence behind it.

    Attributes:
        clean: (N,) bool; True means the given label is judged correct.
        scores: (N,) float, higher = more likely clean; comparable within one
            split (OT: the transport plan's share of the sample's mass on its
            given label; GMM: the clean-component posterior; none: 1).
        pseudo_labels: (N,) int64 labels the purifier believes in, or None when
            it proposes none (JoAPR refurbishes with soft targets instead).
        stats: purifier-specific numbers logged with the split each epoch
            (e.g. JoAPR's ``joapr_threshold`` and ``joapr_crossing``).
    """

    clean: torch.Tensor
    scores: torch.Tensor
    pseudo_labels: torch.Tensor | None = None
    stats: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Shape and dtype only: these checks never wait for the device.
        n = self.clean.shape[0] if self.clean.dim() == 1 else -1
        if n < 0 or self.clean.dtype != torch.bool:
            raise VispromptError(
                f"Split.clean must be an (N,) bool tensor, got {tuple(self.clean.shape)} "
                f"{self.clean.dtype}"
            )
        if tuple(self.scores.shape) != (n,) or not self.scores.dtype.is_floating_point:
            raise VispromptError(
                f"Split.scores must be an ({n},) float tensor, got {tuple(self.scores.shape)} "
                f"{self.scores.dtype}"
            )
        pseudo = self.pseudo_labels
        if pseudo is not None and (tuple(pseudo.shape) != (n,) or pseudo.dtype != torch.long):
            raise VispromptError(
                f"Split.pseudo_labels must be an ({n},) int64 tensor or None, got "
                f"{tuple(pseudo.shape)} {pseudo.dtype}"
            )

    @property
    def size(self) -> int:
        """N, the number of samples judged."""
        return int(self.clean.shape[0])

    @property
    def noisy(self) -> torch.Tensor:
        """(N,) bool, the complement of ``clean``."""
        return ~self.clean

    @property
    def clean_fraction(self) -> float:
        return int(self.clean.sum()) / self.size if self.size else float("nan")

    def group(self) -> torch.Tensor:
        """(N,) int64 on the CPU: :data:`CLEAN` or :data:`NOISY` per sample (an epoch plan's group)."""
        return torch.where(self.clean.cpu(), CLEAN, NOISY).long()

    def quality(self, given_labels: torch.Tensor, true_labels: torch.Tensor) -> dict[str, float]:
        """Precision/recall of both sides and pseudo-label accuracy against the truth.

        See :func:`visprompt.robust.quality.split_quality` for the keys.
        """
        return split_quality(self.clean, given_labels, true_labels, self.pseudo_labels)

    def metrics(
        self,
        given_labels: torch.Tensor,
        true_labels: torch.Tensor | None = None,
        *,
        skip_undefined: bool = False,
    ) -> dict[str, float]:
        """``stats`` followed by the ``purify_*`` numbers logged each epoch.

        See :func:`visprompt.robust.quality.purify_metrics` (``skip_undefined``
        leaves out the ratios of an empty side instead of logging NaN).
        """
        return {
            **self.stats,
            **purify_metrics(
                self.clean,
                given_labels,
                true_labels,
                self.pseudo_labels,
                skip_undefined=skip_undefined,
            ),
        }


__all__ = ["CLEAN", "NOISY", "Split"]
