"""``zeroshot``: zero-shot CLIP's prediction differs from the given label.

Zero-shot CLIP (the backbone with the dataset's hand-written templates) never
sees a training label, so its verdict is out of sample by construction; it is
the baseline every trained detector must beat.
"""

from __future__ import annotations

from visprompt.robust.detector import (
    Detection,
    Detector,
    DetectorInput,
    disagreement,
    register_detector,
)


@register_detector("zeroshot")
class ZeroShotDetector(Detector):
    evidence = "zero-shot"
    description = "zero-shot CLIP's prediction differs from the given label"

    def detect(self, inputs: DetectorInput) -> Detection:
        return disagreement(inputs, "zero-shot CLIP's prediction differs from the given label")
