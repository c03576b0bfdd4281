"""The label-issue detector contract, the ``DETECTORS`` registry and a detection's quality.

A *detector* decides, after training, which given labels are probably wrong:
from class probabilities of every training sample (N, K) and the given labels
it returns a :class:`Detection` - a flagged set and a score (higher = more
likely mislabelled). Detectors differ in the probabilities they judge
(:attr:`Detector.evidence`) and in the rule that flags:

- ``ot``: NLPrompt's optimal-transport split; ``gmm``: JoAPR's loss partition
  (the purifiers of :mod:`visprompt.robust.purifiers`, run once on the model's
  probabilities);
- ``crossfit``: the model's prediction differs from the given label;
- ``cleanlab``: cleanlab's ``find_label_issues`` (confident learning);
- ``zeroshot``: zero-shot CLIP's prediction differs from the given label.

Every detector's score is ``1 - q`` where ``q`` is its label-quality score of
the given label: the probability of the given label (cleanlab's
*self-confidence*) for all but ``cleanlab``, which asks cleanlab's own
``get_label_quality_scores`` (by default the same self-confidence). The
purifiers' own clean scores (OT's transport share, the mixture's posterior)
are not used for ranking: the OT plan's share saturates at 0 or 1 (measured:
16 distinct values over 224 samples of a demo-world run, AUROC 0.72 against
0.89 for self-confidence), so it cannot order the rows.

Where the probabilities come from is the caller's business
(:mod:`visprompt.experiments.label_evidence`): the final model's
(*in-sample*: it was trained on the labels it judges), cross-fitted models'
(*out-of-sample*: each sample scored by a model that never saw it) or
zero-shot CLIP's. This package imports no engine.

Adding one is one new file in ``visprompt/robust/detectors/``::

    @register_detector("mine")
    class MyDetector(Detector):
        description = "what it flags"
        def detect(self, inputs: DetectorInput) -> Detection: ...
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from visprompt.errors import VispromptError
from visprompt.registry import Registry
from visprompt.robust.purifier import Purifier

#: Which probabilities a detector judges: the trained model's (in-sample or
#: out-of-sample, as the caller scores them) or zero-shot CLIP's.
Evidence = Literal["model", "zero-shot"]
#: How a trained model's probabilities were obtained.
Scoring = Literal["in-sample", "out-of-sample"]
#: Percentages of the ranking whose precision :func:`detection_quality` reports.
TOP_PERCENTS = (1, 5, 10)


@dataclass(frozen=True)
class DetectorInput:
    """What a detector judges.

    Attributes:
        probs: (N, K) class probabilities of every training sample (rows sum to 1).
        labels: (N,) int64 given labels.
        scoring: how ``probs`` were obtained (``in-sample``, ``out-of-sample``, or
            ``zero-shot`` for zero-shot CLIP's).
        purifier: for ``ot``/``gmm``, the purifier to split with (the run's own,
            its state restored, when the run trained with it); None: a fresh one
            with its paper's defaults.
        epoch, num_epochs: the epoch the purifier splits for (budget schedules).
        generator: the purifier's randomness (None: a fixed seed).
    """

    probs: torch.Tensor
    labels: torch.Tensor
    scoring: str
    purifier: Purifier | None = None
    epoch: int = 0
    num_epochs: int = 1
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        n = self.labels.shape[0]
        if self.probs.dim() != 2 or self.probs.shape[0] != n or self.labels.dim() != 1:
            raise VispromptError(
                f"a detector takes probs (N, K) and labels (N,), got {tuple(self.probs.shape)} "
                f"and {tuple(self.labels.shape)}; pass one row and one label per sample"
            )


@dataclass(frozen=True)
class Detection:
    """A detector's verdict on every training label.

    Attributes:
        flagged: (N,) bool, True = the given label is judged wrong.
        score: (N,) float in [0, 1], higher = more likely mislabelled.
        probs: (N, K) the probabilities judged (for the CSV's predicted label).
        scoring: ``in-sample``, ``out-of-sample`` or ``zero-shot``.
        source: one line saying what flagged the labels.
    """

    flagged: torch.Tensor
    score: torch.Tensor
    probs: torch.Tensor
    scoring: str
    source: str

    def order(self) -> list[int]:
        """Sample indices, flagged first, then by decreasing score (ties: by index)."""
        flagged, score = self.flagged.tolist(), self.score.tolist()
        return sorted(range(len(score)), key=lambda i: (not flagged[i], -score[i], i))


class Detector(ABC):
    """Base of every detector (see the module docstring).

    Class attributes a detector sets:
        name: its registry name (set by :func:`register_detector`).
        evidence: ``model`` (a trained model's probabilities) or ``zero-shot``.
        default_scoring: for ``model`` evidence, how the model's probabilities
            are obtained when the user does not say: ``in-sample`` for the
            purifiers (they judge the model as training does), ``out-of-sample``
            for the rest.
        description: one line for ``label-issues`` and listings.
    """

    name: ClassVar[str] = ""
    evidence: ClassVar[Evidence] = "model"
    default_scoring: ClassVar[Scoring] = "out-of-sample"
    description: ClassVar[str] = ""

    @classmethod
    def check_available(cls) -> None:
        """Raise a one-line VispromptError when an optional dependency is missing."""
        return None  # most detectors need nothing beyond visprompt's own dependencies

    @abstractmethod
    def detect(self, inputs: DetectorInput) -> Detection:
        """Flag and score every given label of ``inputs``."""


#: name -> detector class; filled by the modules of :mod:`visprompt.robust.detectors`.
DETECTORS: Registry[type[Detector]] = Registry("detector", discover=("visprompt.robust.detectors",))


def register_detector(name: str) -> Callable[[type[Detector]], type[Detector]]:
    """Class decorator: register a :class:`Detector` subclass under ``name``."""

    def decorate(cls: type[Detector]) -> type[Detector]:
        cls.name = name
        return DETECTORS.register(name)(cls)

    return decorate


def self_confidence(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) probability of each sample's given label (cleanlab's self-confidence)."""
    return probs.gather(1, labels.long().view(-1, 1)).squeeze(1)


def disagreement(inputs: DetectorInput, source: str) -> Detection:
    """Flag a label when the argmax of its probabilities is another class; score 1 - p(given)."""
    probs, labels = inputs.probs, inputs.labels.long()
    return Detection(
        flagged=probs.argmax(dim=1) != labels,
        score=1.0 - self_confidence(probs, labels),
        probs=probs,
        scoring=inputs.scoring,
        source=source,
    )


def _auroc(wrong: torch.Tensor, score: torch.Tensor) -> float:
    """Area under the ROC curve of ``score`` for the truly wrong labels (NaN: one class only)."""
    if bool(wrong.all()) or not bool(wrong.any()):
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(wrong.numpy(), score.double().numpy()))


def detection_quality(
    detection: Detection, given_labels: torch.Tensor, true_labels: torch.Tensor
) -> dict[str, float]:
    """How well ``detection`` finds the labels that differ from the truth.

    Returns:
        ``num_flagged``, ``num_wrong``; ``precision`` (of the flagged labels, the
        fraction truly wrong), ``recall`` (of the wrong labels, the fraction
        flagged) and their harmonic mean ``f1``; ``auroc`` of the score (ties
        count half, as in scikit-learn's ``roc_auc_score``); and
        ``precision_at_<p>pct`` for each ``p`` of :data:`TOP_PERCENTS`: the
        fraction truly wrong among the first ``max(1, ceil(p * N / 100))`` samples of
        :meth:`Detection.order` (flagged first, then by score: the CSV's top
        rows). An undefined ratio is NaN.
    """
    from visprompt.robust.quality import split_quality

    given, true = given_labels.long().cpu(), true_labels.long().cpu()
    flagged = detection.flagged.bool().cpu()
    q = split_quality(~flagged, given, true)
    precision, recall = float(q["noisy_precision"]), float(q["noisy_recall"])
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision + recall > 0  # NaN > 0 is False: undefined stays NaN
        else (0.0 if precision == 0 and recall == 0 else float("nan"))
    )
    wrong = given != true
    out = {
        "num_flagged": int(flagged.sum()),
        "num_wrong": int(wrong.sum()),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auroc": _auroc(wrong, detection.score.cpu()),
    }
    order = detection.order()
    for percent in TOP_PERCENTS:
        k = max(1, -(-percent * len(order) // 100))  # integer ceil: 10% of 30 is 3, not 4
        out[f"precision_at_{percent}pct"] = (
            sum(bool(wrong[i]) for i in order[:k]) / min(k, len(order)) if order else float("nan")
        )
    return out


__all__ = [
    "DETECTORS",
    "TOP_PERCENTS",
    "Detection",
    "Detector",
    "DetectorInput",
    "Evidence",
    "Scoring",
    "detection_quality",
    "disagreement",
    "register_detector",
    "self_confidence",
]
