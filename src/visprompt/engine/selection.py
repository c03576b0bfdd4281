"""Model selection of a trained run (``eval.select``): the last epoch, or the best on val.

``last`` (the default) tests the weights after the last epoch, as CoOp and the
noisy-label papers report. ``best-val`` evaluates the model on the run's
validation split after every epoch - with the val labels *as noisy as the
training labels* (:mod:`visprompt.data.validation_split`), since a user of a
noisy-label toolbox has no clean labels to choose with - keeps a copy of the
weights of the epoch with the highest val accuracy (the earliest such epoch on
a tie), and loads them back before the one test evaluation.

The test split chooses nothing: with ``best-val`` the engine evaluates on test
once, after the selection (``eval.every`` > 0 adds test evaluations for the
log only; they are never read by the selection). The selection's state (best
epoch, its val accuracy and weights) is part of the checkpoint, so an
interrupted run resumes to the same choice.
"""

from __future__ import annotations

from typing import Any

import torch

from visprompt.engine.assembly import PreparedRun, check_validation
from visprompt.engine.evaluate import accuracy_metrics, predict_logits

#: what a best-val run's error names when the run has no val images
WHAT = "eval.select: best-val"


class BestValSelection:
    """Tracks the epoch of highest noisy-val accuracy and its weights (see module docstring).

    Raises:
        VispromptError: (at construction) the run has no validation images.
    """

    def __init__(self, prep: PreparedRun) -> None:
        check_validation(prep.cfg, prep.splits, WHAT)
        self.prep = prep
        self.best_epoch: int | None = None  # 0-based
        self.best_accuracy = float("-inf")
        self.best_weights: dict[str, torch.Tensor] | None = None

    def after_epoch(self, epoch: int) -> dict[str, float]:
        """Evaluate on val (noisy labels); remember this epoch if it is the best so far.

        Returns the epoch's ``val_accuracy`` / ``val_macro_accuracy`` (noisy labels) for the log.
        """
        prep, val = self.prep, self.prep.validation
        logits = predict_logits(
            prep.method, val.features.plain_view(), prep.cfg.engine.batch_size, prep.cfg.precision
        )
        m = accuracy_metrics(logits, val.labels())
        if m["accuracy"] > self.best_accuracy:
            self.best_epoch, self.best_accuracy = epoch, m["accuracy"]
            self.best_weights = {
                k: v.detach().cpu().clone() for k, v in prep.method.state_dict().items()
            }
        return {"val_accuracy": m["accuracy"], "val_macro_accuracy": m["macro_accuracy"]}

    def restore(self) -> None:
        """Load the selected epoch's weights into the method (before the test evaluation)."""
        if self.best_weights is not None:
            self.prep.method.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_epoch": self.best_epoch,
            "best_accuracy": self.best_accuracy,
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_epoch = state["best_epoch"]
        self.best_accuracy = float(state["best_accuracy"])
        self.best_weights = state["best_weights"]

    def record(self) -> dict[str, Any]:
        """What result.json says about the choice: epoch (1-based), its val accuracy, val split."""
        return {
            "selection": "best-val",
            "selected_epoch": None if self.best_epoch is None else self.best_epoch + 1,
            "selected_val_accuracy": self.best_accuracy,
            **{f"selection_{k}": v for k, v in self.prep.validation.record().items()},
        }


def make_selection(prep: PreparedRun) -> BestValSelection | None:
    """The run's selection tracker: None for ``eval.select: last`` (nothing to track)."""
    return BestValSelection(prep) if prep.cfg.eval.select == "best-val" else None
