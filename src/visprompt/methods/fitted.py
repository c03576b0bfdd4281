"""Methods whose state is computed from the training set itself (and chosen on val).

A linear probe is fitted by a solver, Tip-Adapter's cache *is* the training
features; neither is only a set of weights initialised from a seed. Such a
method mixes in :class:`FitsOnData`; the engine (``engine.assembly.build_method``)
then hands it a :class:`FitData` right after construction, wherever the method is
built: for training, and equally when a finished run is reloaded or a test builds
a fresh one, so the method's tensors always have their data-given shapes (a
cache of N entries) before a checkpoint is loaded into them. ``fit_data`` must
therefore be cheap and deterministic (keep references, build a cache); a costly
fit belongs in the epochs (``start_epoch``), whose result is checkpointed.

A method that declares ``Requirements(validation=...)`` gets ``data.val``; the
engine has already refused a run without val images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from visprompt.data.features import SplitFeatures
from visprompt.data.validation_split import ValidationSplit


@dataclass
class FitData:
    """What a :class:`FitsOnData` method is fitted on.

    Attributes:
        features: the training set's cached features (readable images only).
        labels: (N,) given (possibly noisy) labels of those images.
        val: the validation split (lazy), or None when the method did not ask for it.
        batch_size: batch size of no-gradient passes (``engine.batch_size``).
    """

    features: SplitFeatures
    labels: torch.Tensor
    val: ValidationSplit | None = None
    batch_size: int = 256


class FitsOnData:
    """Mixin of a :class:`~visprompt.methods.base.PromptMethod` fitted on its data (see module)."""

    def fit_data(self, data: FitData) -> None:
        """Take the training data (called once, right after construction)."""
        raise NotImplementedError

    def after_training(self) -> bool:
        """Called once after the last epoch, before the final test evaluation.

        Returns True when it changed the model (e.g. Tip-Adapter-F's alpha/beta
        search on val), so the engine evaluates and saves the weights again.
        """
        return False

    def fit_record(self) -> dict[str, Any]:
        """What the run's result.json records about the fit (chosen values, val used)."""
        return {}
