"""The shared rule of ``ot`` and ``gmm``: a purifier's clean/noisy split of the probabilities.

The verdict is the purifier's (:meth:`~visprompt.robust.purifier.Purifier.split`
once, for the epoch the caller names): a label is flagged when the split puts
it on the noisy side. The purifier is the run's own when the run trained with
it (its options, and its state restored by the caller: JoAPR's loss history and
threshold), else a fresh one with its paper's defaults (NLPrompt's OT, JoAPR's
mixture with no history). Score: ``1 - p(given)`` of the probabilities split
(see :mod:`visprompt.robust.detector` for why not the purifier's own score).

By default the purifiers judge the final model in-sample, as they judge the
model before each training epoch.
"""

from __future__ import annotations

from visprompt.robust.detector import (
    Detection,
    Detector,
    DetectorInput,
    self_confidence,
)
from visprompt.robust.purifier import build_purifier


class PurifierDetector(Detector):
    """Flags the noisy side of the purifier of the same name."""

    default_scoring = "in-sample"

    def detect(self, inputs: DetectorInput) -> Detection:
        purifier = inputs.purifier if inputs.purifier is not None else build_purifier(self.name)
        if purifier.name != self.name:
            raise ValueError(f"detector {self.name!r} was given purifier {purifier.name!r}")
        where = "the final model" if inputs.scoring == "in-sample" else f"{inputs.scoring} probs"
        split = purifier.split(
            inputs.probs,
            inputs.labels,
            epoch=inputs.epoch,
            num_epochs=inputs.num_epochs,
            generator=inputs.generator,
        )
        return Detection(
            flagged=split.noisy.cpu(),
            score=1.0 - self_confidence(inputs.probs, inputs.labels),
            probs=inputs.probs,
            scoring=inputs.scoring,
            source=f"{self.name} purifier on {where} ({purifier.description})",
        )
