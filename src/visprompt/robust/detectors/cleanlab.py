"""``cleanlab``: confident learning, by cleanlab itself (an optional extra).

The flagged set is ``cleanlab.filter.find_label_issues(labels, pred_probs)``
with cleanlab's defaults (``filter_by="prune_by_noise_rate"``, ``frac_noise=1``,
``min_examples_per_class=1``), except ``n_jobs=1``: the result does not depend
on it, and no worker processes are started. The score is
``1 - cleanlab.rank.get_label_quality_scores(labels, pred_probs)`` (its default
``method="self_confidence"``). cleanlab asks for out-of-sample ``pred_probs``,
which is this detector's default scoring.

Install with ``pip install 'visprompt[cleanlab]'`` (cleanlab pinned).
"""

from __future__ import annotations

import importlib

import numpy as np
import torch

from visprompt.errors import VispromptError
from visprompt.robust.detector import Detection, Detector, DetectorInput, register_detector

#: The one-line fix printed when cleanlab is missing.
INSTALL = "pip install 'visprompt[cleanlab]'"


def _cleanlab():
    """cleanlab's ``filter`` and ``rank`` modules, or a one-line error saying how to install."""
    try:
        return (
            importlib.import_module("cleanlab.filter"),
            importlib.import_module("cleanlab.rank"),
        )
    except ImportError:
        raise VispromptError(
            f"detector 'cleanlab' needs the cleanlab package, which is not installed; "
            f"install it with {INSTALL}"
        ) from None


@register_detector("cleanlab")
class CleanlabDetector(Detector):
    description = "cleanlab's find_label_issues (confident learning) flags a label"

    @classmethod
    def check_available(cls) -> None:
        _cleanlab()

    def detect(self, inputs: DetectorInput) -> Detection:
        cl_filter, cl_rank = _cleanlab()
        labels = inputs.labels.long().cpu().numpy()
        pred_probs = inputs.probs.double().cpu().numpy()
        flagged = cl_filter.find_label_issues(labels, pred_probs, n_jobs=1)
        quality = cl_rank.get_label_quality_scores(labels, pred_probs)
        return Detection(
            flagged=torch.from_numpy(np.asarray(flagged, dtype=bool)),
            score=1.0 - torch.from_numpy(np.asarray(quality, dtype=np.float64)).float(),
            probs=inputs.probs,
            scoring=inputs.scoring,
            source=f"cleanlab.filter.find_label_issues on {inputs.scoring} pred_probs",
        )
