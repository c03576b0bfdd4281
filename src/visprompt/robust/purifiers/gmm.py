"""``gmm``: JoAPR's adaptive loss partition (Guo & Gu, CVPR 2024), a stateful purifier.

Each call (one per partitioned epoch):

1. ``l_i = CE(p_i, y_i) + H(p_i)`` for every training sample, min-max
   normalised over the set and averaged with those of the previous calls (the
   last ``loss_history`` = 5);
2. a two-component Gaussian mixture is fitted to the averaged losses
   (:mod:`visprompt.robust.gmm`); the lower-mean component is "clean" and
   ``w_i`` is sample i's clean posterior (the split's score);
3. adaptive threshold: ``tau_e = mean_i [w_i <= tau_(e-1)]`` - the noise rate
   estimated with the previous threshold, ``tau`` starting at
   ``initial_threshold`` = 0.5 (the reference's order: estimate with the old
   threshold, then apply the new one in the same epoch);
4. sample i is clean when ``l_i < x*`` (the crossing point of the two component
   densities) OR ``w_i > tau_e``.

The loss history, the threshold and the number of partitions so far are state
that must survive a resume: :meth:`GMMPurifier.state_dict` is what JoAPR saves
as its extra state. The mixture's initialisation is seeded by one draw from the
epoch's generator. The crossing-point departures from the reference code are
listed in :mod:`visprompt.methods.joapr`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field

from visprompt.options import Section
from visprompt.robust.gmm import TwoGaussians, fit_two_gaussians
from visprompt.robust.purifier import Purifier, register_purifier
from visprompt.robust.split import Split

#: Keys of the state (JoAPR's extra state in its checkpoints; do not rename).
STATE_KEYS = ("loss_history", "threshold", "partitions")


class GMMOptions(Section):
    """Options of JoAPR's partition (the reference's defaults)."""

    loss_history: int = Field(5, ge=1, description="epochs of normalised losses averaged")
    initial_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="first posterior threshold")
    gmm_max_iter: int = Field(10, ge=1)
    gmm_tol: float = Field(1e-2, gt=0.0)
    gmm_reg_covar: float = Field(5e-4, gt=0.0)


def minmax_normalise(x: torch.Tensor) -> torch.Tensor:
    """``(x - min) / (max - min)``; a constant vector gives zeros (the reference divides by 0)."""
    low, high = x.min(), x.max()
    if float(high - low) <= 0.0:
        return torch.zeros_like(x)
    return (x - low) / (high - low)


def selection_loss(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample ``CE(p_i, y_i) + H(p_i)`` from probabilities (N, K), min-max normalised.

    Probabilities that underflowed to 0 enter the log as the smallest normal
    float (a finite, very large CE) instead of giving infinities.
    """
    p = probs.double()
    tiny = torch.finfo(p.dtype).tiny
    ce = -torch.log(p.gather(1, labels.long().view(-1, 1)).squeeze(1).clamp_min(tiny))
    ent = -torch.special.xlogy(p, p).sum(dim=1)  # 0 log 0 = 0
    return minmax_normalise(ce + ent)


@dataclass
class Partition:
    """JoAPR's clean/noisy split of one epoch.

    Attributes:
        clean: (N,) bool, the clean set.
        posterior: (N,) clean-component posterior w_i.
        crossing: the crossing point x* of the two component densities.
        threshold: the posterior threshold applied (the new noise-rate estimate).
    """

    clean: torch.Tensor
    posterior: torch.Tensor
    crossing: float
    threshold: float


def partition(loss: torch.Tensor, mixture: TwoGaussians, previous_threshold: float) -> Partition:
    """Clean = below the crossing point OR clean posterior above the adaptive threshold.

    Args:
        loss: (N,) averaged normalised selection losses, in sample order.
        mixture: the two-component fit to ``loss``.
        previous_threshold: the threshold of the last partition (0.5 at first).

    Returns:
        The :class:`Partition`; its ``threshold`` = fraction of samples whose
        posterior is <= ``previous_threshold`` (the estimated noise rate).
    """
    post = torch.from_numpy(mixture.clean_posterior(loss))
    crossing = mixture.crossing_point()
    threshold = float((post <= previous_threshold).double().mean())
    clean = (loss.double().cpu() < crossing) | (post > threshold)
    return Partition(clean=clean, posterior=post, crossing=crossing, threshold=threshold)


@register_purifier("gmm")
class GMMPurifier(Purifier):
    """JoAPR's partition with its state (see the module docstring).

    Attributes:
        history: the last ``loss_history`` normalised selection-loss vectors.
        threshold: the posterior threshold of the last partition.
        partitions: partitions made so far (JoAPR weights by confidence from the second on).
    """

    options_model = GMMOptions
    options: GMMOptions
    # JoAPR's log has never held the ratio of an empty side (NaN); kept as it was.
    skip_undefined = True
    description = "JoAPR's loss partition (two-Gaussian mixture, adaptive threshold)"

    def __init__(self, options: GMMOptions | None = None) -> None:
        super().__init__(options)
        self.history: list[torch.Tensor] = []
        self.threshold = float(self.options.initial_threshold)
        self.partitions = 0

    def split(
        self,
        probs: torch.Tensor,
        labels: torch.Tensor,
        *,
        epoch: int,
        num_epochs: int,
        generator: torch.Generator | None = None,
    ) -> Split:
        o = self.options
        labels = labels.long().cpu()
        probs = probs.double().cpu()
        self.history = [*self.history, selection_loss(probs, labels)][-o.loss_history :]
        avg = torch.stack(self.history).mean(dim=0)
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
        mixture = fit_two_gaussians(
            avg, seed, max_iter=o.gmm_max_iter, tol=o.gmm_tol, reg_covar=o.gmm_reg_covar
        )
        part = partition(avg, mixture, self.threshold)
        self.threshold = part.threshold
        self.partitions += 1
        return Split(
            clean=part.clean,
            scores=part.posterior,
            stats={"joapr_threshold": part.threshold, "joapr_crossing": part.crossing},
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "loss_history": [t.clone() for t in self.history],
            "threshold": self.threshold,
            "partitions": self.partitions,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = set(STATE_KEYS) - set(state)
        if missing:
            raise ValueError(f"JoAPR's gmm purifier state lacks {sorted(missing)}")
        self.history = [torch.as_tensor(t).double() for t in state["loss_history"]]
        self.threshold = float(state["threshold"])
        self.partitions = int(state["partitions"])


__all__ = [
    "GMMOptions",
    "GMMPurifier",
    "Partition",
    "minmax_normalise",
    "partition",
    "selection_loss",
]
