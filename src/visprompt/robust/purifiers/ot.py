"""``ot``: NLPrompt's optimal-transport purification (:func:`visprompt.robust.ot_purify.purify`).

A sample is clean when it is among the selected (budget) rows and the argmax of
its row of the transport plan is its given label; its score is the plan's share
of its mass on the given label. The options (``ot_*``, ``budget*``,
``curriculum_epochs``) sit flat in ``method.*`` of the methods that mix
:class:`OTOptions` in, with NLPrompt's defaults.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator

from visprompt.options import Section
from visprompt.robust.ot_purify import PurifyResult, budget_at, purify
from visprompt.robust.purifier import Purifier, register_purifier
from visprompt.robust.split import Split


class OTOptions(Section):
    """Options of OT purification (NLPrompt's defaults)."""

    ot_reg: float = Field(0.01, description="entropic regularisation epsilon (> 0)")
    ot_cost: Literal["neg_log_prob", "neg_prob"] = "neg_log_prob"
    ot_scope: Literal["global", "batch"] = "global"
    ot_batch_size: int = Field(16, ge=1, description="block size of ot_scope: batch")
    ot_iters: int = Field(1000, ge=1)
    ot_tol: float = Field(1e-6, ge=0)
    budget: float = Field(1.0, description="fraction of samples that may be selected, (0, 1]")
    budget_schedule: Literal["none", "linear", "exp"] = "none"
    budget_start: float = Field(0.3, description="budget at epoch 0 of the curriculum")
    curriculum_epochs: int | None = Field(None, ge=0)

    @field_validator("ot_reg")
    @classmethod
    def _reg_positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"method.ot_reg (epsilon) must be > 0, got {v}; NLPrompt uses 0.01")
        return v

    @field_validator("budget", "budget_start")
    @classmethod
    def _budget_range(cls, v: float) -> float:
        if not 0.0 < v <= 1.0:
            raise ValueError(f"the OT budget must be in (0, 1], got {v}")
        return v


@register_purifier("ot")
class OTPurifier(Purifier):
    """Entropic OT of the model's probabilities onto a uniform class marginal (stateless)."""

    options_model = OTOptions
    options: OTOptions
    description = "optimal-transport purification (NLPrompt)"

    def budget(self, epoch: int, num_epochs: int) -> float:
        """The selection budget of a 0-based ``epoch`` (the curriculum, if any)."""
        o = self.options
        if o.budget_schedule == "none":
            return o.budget
        return o.budget * budget_at(
            epoch, num_epochs, o.budget_schedule, o.budget_start, o.curriculum_epochs
        )

    def transport(
        self,
        probs: torch.Tensor,
        labels: torch.Tensor,
        *,
        epoch: int,
        num_epochs: int,
        generator: torch.Generator | None = None,
    ) -> PurifyResult:
        """The full OT result (plan statistics included) behind :meth:`split`.

        ``generator`` shuffles the samples into the blocks of ``ot_scope: batch``
        (the epoch's generator during training; None: a fixed seed); global scope
        ignores it.
        """
        o = self.options
        return purify(
            probs,
            labels,
            reg=o.ot_reg,
            budget=self.budget(epoch, num_epochs),
            cost=o.ot_cost,
            scope=o.ot_scope,
            batch_size=o.ot_batch_size,
            num_iter_max=o.ot_iters,
            tol=o.ot_tol,
            generator=generator,
        )

    def split(
        self,
        probs: torch.Tensor,
        labels: torch.Tensor,
        *,
        epoch: int,
        num_epochs: int,
        generator: torch.Generator | None = None,
    ) -> Split:
        result = self.transport(
            probs, labels, epoch=epoch, num_epochs=num_epochs, generator=generator
        )
        return Split(
            clean=result.clean_mask,
            scores=result.given_mass,
            pseudo_labels=result.pseudo_labels,
        )
