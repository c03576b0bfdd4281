"""The evidence label-issue detectors judge, gathered once per run and computed on demand.

For a finished run (:func:`~visprompt.engine.reload.load_run`) this holds its
training set with the given labels (and the truth when the noise was
synthetic) and computes, each at most once, the class probabilities of every
training sample under

- the final model (*in-sample*: it was trained on the labels it judges);
- K cross-fitted models (*out-of-sample*, :mod:`visprompt.experiments.cross_fit`);
- zero-shot CLIP with the dataset's templates (no label seen).

:meth:`RunEvidence.detect` runs a detector of
:data:`~visprompt.robust.detector.DETECTORS` on the probabilities it asks for.
The ``ot``/``gmm`` detectors split with the run's own purifier when the run
trained with it (its options; a stateful one's state restored from the last
checkpoint, :func:`run_purifier`) and draw from the last epoch's generator, so
the in-sample split is the one the next epoch would have made; otherwise with
a fresh purifier of their paper's defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from visprompt.data.types import Sample
from visprompt.engine import checkpoint as ckpt
from visprompt.engine.evaluate import predict_logits
from visprompt.engine.reload import LoadedRun, load_run, run_features
from visprompt.engine.run_folder import Log
from visprompt.engine.trainer import epoch_seed
from visprompt.errors import VispromptError
from visprompt.experiments.cross_fit import (
    CrossFit,
    FoldHook,
    check_folds,
    cross_fit,
    default_folds,
    prepare_training_set,
)
from visprompt.method_spec import METHOD_REGISTRY
from visprompt.robust.detector import DETECTORS, Detection, DetectorInput, Scoring
from visprompt.robust.purifier import HasPurifier, Purifier, build_purifier, purifier_for


def run_purifier(run: LoadedRun) -> tuple[Purifier, str] | None:
    """The purifier that judged ``run``'s labels during training, ready to split again.

    Returns (purifier, how its state was set), or None for a method without a
    purifier (or with ``purify: none``, which judges nothing). A method that
    keeps a stateful purifier (:class:`~visprompt.robust.purifier.HasPurifier`)
    gets its extra state back from the run's checkpoint first, which restores
    the purifier's; a stateless one is rebuilt from the run's options.
    """
    method = run.method
    restored = ""
    if isinstance(method, HasPurifier):
        purifier = method.purifier
        try:
            state = ckpt.load_state(run.out)
        except VispromptError:  # no (readable) checkpoint: judge with a fresh state
            restored = "fresh state (the run's checkpoint is missing)"
        else:
            method.load_extra_state(state.get("method_extra") or {})
            restored = "state of the run's last epoch"
    else:
        purifier = purifier_for(run.cfg.method)
    if purifier is None or not purifier.judges_labels:
        return None
    return purifier, restored


@dataclass
class RunEvidence:
    """A loaded run's training set and, computed on first use, its probabilities.

    Attributes:
        run: the loaded run.
        samples: its training samples (given labels), in trainset.json order.
        given: (N,) given labels; ``truth``: (N,) true labels or None (unknown).
        ok: (N,) False for images that could not be read now (they get no verdict).
        folds: the cross-fit fold count, or None for :func:`default_folds`.
    """

    run: LoadedRun
    samples: list[Sample]
    given: torch.Tensor
    truth: torch.Tensor | None
    folds: int | None = None
    progress: bool = False
    log: Log = field(default=lambda message: None)
    on_fold: FoldHook | None = None
    _probs: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _ok: torch.Tensor | None = field(default=None, repr=False)
    crossfit: CrossFit | None = field(default=None, repr=False)

    @classmethod
    def of_run(
        cls,
        run_dir: str | Path,
        folds: int | None = None,
        progress: bool = False,
        log: Log | None = None,
        allow_unfinished: bool = False,
        root: str | Path | None = None,
        on_fold: FoldHook | None = None,
    ) -> RunEvidence:
        """Load ``run_dir`` and check ``folds`` against its given labels (before any work)."""
        run = load_run(run_dir, allow_unfinished=allow_unfinished, root=root)
        samples, data = run.train_samples()
        given = torch.tensor(data["given_labels"], dtype=torch.long)
        truth = data.get("true_labels")
        if folds is not None:
            check_folds(folds, given, run.classnames)
        return cls(
            run=run,
            samples=samples,
            given=given,
            truth=None if truth is None else torch.tensor(truth, dtype=torch.long),
            folds=folds,
            progress=progress,
            log=log or (lambda message: None),
            on_fold=on_fold,
        )

    # ---------------------------------------------------------------- probabilities
    @property
    def ok(self) -> torch.Tensor:
        if self._ok is None:
            self.in_sample_probs()
        assert self._ok is not None
        return self._ok

    def _features(self):
        feats = run_features(self.run, self.samples, progress=self.progress)
        self._ok = feats.ok
        return feats

    def in_sample_probs(self) -> torch.Tensor:
        """(N, K) the final model's probabilities of its own training set."""
        if "in-sample" not in self._probs:
            feats = self._features()
            logits = predict_logits(
                self.run.method, feats.plain_view(), self.run.cfg.engine.batch_size
            )
            self._probs["in-sample"] = logits.softmax(dim=-1)
        return self._probs["in-sample"]

    def out_of_sample_probs(self) -> torch.Tensor:
        """(N, K) each sample's probabilities under the cross-fitted model that never saw it."""
        if self.crossfit is None:
            k = (
                self.folds
                if self.folds is not None
                else default_folds(self.given, self.run.classnames)
            )
            prep = prepare_training_set(
                self.run.cfg,
                [s.path for s in self.samples],
                self.given,
                progress=self.progress,
                log=self.log,
            )
            self.crossfit = cross_fit(
                prep, self.given, k, progress=self.progress, on_fold=self.on_fold
            )
        return self.crossfit.probs

    def zero_shot_probs(self) -> torch.Tensor:
        """(N, K) zero-shot CLIP's probabilities (the run's backbone, the dataset's templates)."""
        if "zero-shot" not in self._probs:
            entry = METHOD_REGISTRY.get("zeroshot")
            run = self.run
            method = entry.cls(run.backbone, run.classnames, entry.config_cls(), run.templates)
            feats = self._features()
            logits = predict_logits(method, feats.plain_view(), run.cfg.engine.batch_size)
            self._probs["zero-shot"] = logits.softmax(dim=-1)
        return self._probs["zero-shot"]

    def describe(self, scoring: str) -> str:
        """A scoring in words: ``in-sample (final model)``, ``out-of-sample (5-fold cross-fit)``."""
        if scoring == "in-sample":
            return "in-sample (final model)"
        if scoring == "out-of-sample":
            return self.crossfit.describe() if self.crossfit else "out-of-sample"
        return "zero-shot"

    def probs(self, scoring: str) -> torch.Tensor:
        """The probabilities of ``scoring``: ``in-sample``, ``out-of-sample`` or ``zero-shot``."""
        get: dict[str, Callable[[], torch.Tensor]] = {
            "in-sample": self.in_sample_probs,
            "out-of-sample": self.out_of_sample_probs,
            "zero-shot": self.zero_shot_probs,
        }
        return get[scoring]()

    # ---------------------------------------------------------------- detectors
    def scoring_of(self, detector: str, scoring: Scoring | None) -> str:
        """The scoring a detector runs with: zero-shot, the user's choice, or its default."""
        cls = DETECTORS.get(detector)
        if cls.evidence == "zero-shot":
            return "zero-shot"
        return scoring or cls.default_scoring

    def detect(self, detector: str, scoring: Scoring | None = None) -> Detection:
        """Run ``detector`` on the probabilities of its scoring; unreadable images unflagged."""
        cls = DETECTORS.get(detector)
        cls.check_available()
        used = self.scoring_of(detector, scoring)
        probs = self.probs(used)
        purifier, note = self._purifier(detector, used)
        epochs = max(int(self.run.cfg.optim.epochs), 1)
        # the last epoch's generator: batch-scope OT cuts the blocks the last epoch cut
        last = torch.Generator().manual_seed(epoch_seed(self.run.cfg.train_seed, epochs - 1) + 1)
        found = cls().detect(
            DetectorInput(
                probs=probs,
                labels=self.given,
                scoring=used,
                purifier=purifier,
                epoch=epochs - 1,
                num_epochs=epochs,
                generator=last,
            )
        )
        scores = self.describe(used) if used != "zero-shot" else ""
        source = "; ".join(part for part in (found.source, note, scores) if part)
        return Detection(
            flagged=found.flagged & self.ok,
            score=found.score,
            probs=found.probs,
            scoring=used,
            source=source,
        )

    def _purifier(self, detector: str, scoring: str) -> tuple[Purifier | None, str]:
        """The purifier the ``ot``/``gmm`` detector splits with, and a note on where it came from.

        In-sample: the run's own (options and restored state) when it trained with
        one of that name. Out of sample: a fresh one with the run's options, since
        a purifier's state belongs to the final model's history.
        """
        if detector not in ("ot", "gmm"):
            return None, ""
        own = getattr(self.run.cfg.method, "purify", None) == detector
        if own and scoring == "in-sample":
            judged = run_purifier(self.run)
            if judged is not None:
                purifier, restored = judged
                return purifier, "the run's own purifier" + (f", {restored}" if restored else "")
        if own:
            return build_purifier(detector, self.run.cfg.method), "the run's purifier options"
        return None, "its paper's default options"


__all__ = ["RunEvidence", "run_purifier"]
