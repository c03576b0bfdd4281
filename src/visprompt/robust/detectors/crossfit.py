"""``crossfit``: the model's prediction differs from the given label.

Scored out of sample by default: each sample's probabilities come from the
cross-fitted model that never saw it (``label-issues --cross-fit K``), so a
label the model merely memorised is not taken as evidence for itself. With
in-sample scoring it is the final model's prediction (the verdict of
``label-issues`` for methods without a purifier before cross-fitting existed).
"""

from __future__ import annotations

from visprompt.robust.detector import (
    Detection,
    Detector,
    DetectorInput,
    disagreement,
    register_detector,
)


@register_detector("crossfit")
class CrossFitDetector(Detector):
    description = "the model's prediction differs from the given label"

    def detect(self, inputs: DetectorInput) -> Detection:
        return disagreement(inputs, "the model's prediction differs from the given label")
