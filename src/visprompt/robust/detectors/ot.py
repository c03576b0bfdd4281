"""``ot``: NLPrompt's optimal-transport split flags a label (see :mod:`._purifier`)."""

from __future__ import annotations

from visprompt.robust.detector import register_detector
from visprompt.robust.detectors._purifier import PurifierDetector


@register_detector("ot")
class OTDetector(PurifierDetector):
    description = "NLPrompt's optimal-transport split flags a label"
