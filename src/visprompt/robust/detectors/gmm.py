"""``gmm``: JoAPR's loss partition flags a label (see :mod:`._purifier`)."""

from __future__ import annotations

from visprompt.robust.detector import register_detector
from visprompt.robust.detectors._purifier import PurifierDetector


@register_detector("gmm")
class GMMDetector(PurifierDetector):
    description = "JoAPR's loss partition (two-Gaussian mixture) flags a label"
