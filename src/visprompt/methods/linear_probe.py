"""Linear probe (CLIP's, as CoOp's ``lpclip/``): logistic regression on the image features.

A scikit-learn ``LogisticRegression`` (lbfgs, L2, at most 1000 iterations) on the
L2-normalised plain-view features of the training set, with the inverse
regularisation C chosen on the validation split by lpclip's search
(:func:`lpclip_search`):

1. fit at every C of a coarse grid (``c_grid``, lpclip's ``[1e6, 1e4, 1e2, 1,
   1e-2, 1e-4, 1e-6]``) and score each on val; the first best C (ties: the
   grid's earlier, larger C) is the peak;
2. start from the range ``[0.1 * peak, 10 * peak]`` and, ``search_steps`` times
   (lpclip: 8), fit at both ends and keep the better one (ties: the left,
   smaller C), the next range being the kept end and the midpoint in log10.

The classifier is the one fitted at the last kept C, on the training split (as
lpclip: no refit on train + val). Logits are its decision function
``f̂ Wᵀ + b`` (softmax gives scikit-learn's ``predict_proba``).

How it meets the trainer: the whole search runs when the first epoch starts
(``start_epoch``; a fit has no batches, so the optimiser never steps) and its
result (W, b, the chosen C and the search's trace) is the epoch's checkpoint.
``optim.epochs`` is 1; a later epoch only logs the fitted model again. The
epoch's ``train_loss``/``train_acc`` are the fitted classifier's cross-entropy and
accuracy on the given training labels.

Reference: KaiyangZhou/CoOp ff61507, ``lpclip/linear_probe.py`` (grid, bisection,
``LogisticRegression(solver="lbfgs", max_iter=1000, penalty="l2", C=c)``).
Departures: features are L2-normalised (lpclip fits the raw fp16 RN50 features,
so its best C is about ‖f‖² times ours; the grid spans 12 decades either way);
the few-shot train and val subsets are the run's (lpclip draws its own with
``np.random.seed``); val labels carry the run's noise unless ``val_labels:
clean`` (:mod:`visprompt.data.validation_split`; lpclip's val is clean);
``penalty="l2"`` is spelled ``l1_ratio=0`` (scikit-learn 1.8 deprecated
``penalty``; the same model).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from visprompt.errors import VispromptError
from visprompt.method_spec import MethodConfig, Requirements, register_method
from visprompt.methods.base import EpochContext, EpochPlan, FeatureBatch, PromptMethod
from visprompt.methods.fitted import FitData, FitsOnData

#: lpclip's coarse grid of C, in its order (``search_list``)
LPCLIP_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
#: bias of a class no training label names: never predicted, but finite (checkpoints)
ABSENT_CLASS_BIAS = -1e4


class LinearProbeConfig(MethodConfig):
    name: Literal["linear-probe"] = "linear-probe"
    c_grid: list[float] = Field(
        default_factory=lambda: list(LPCLIP_GRID), description="coarse grid of C, in order"
    )
    search_steps: int = Field(8, ge=0, description="bisection steps after the coarse grid")
    max_iter: int = Field(1000, ge=1, description="lbfgs iterations per fit")
    val_labels: Literal["noisy", "clean"] = "noisy"

    @field_validator("c_grid")
    @classmethod
    def _grid(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError(
                "method.c_grid is empty, so there is no C to search; give at least one value "
                "(lpclip's: [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6])"
            )
        if any(not (c > 0 and math.isfinite(c)) for c in v):
            raise ValueError(f"method.c_grid values must be finite and > 0, got {v}")
        return v

    def requirements(self) -> Requirements:
        return Requirements(validation="linear-probe's C search")


@dataclass
class CSearch:
    """lpclip's search, step by step.

    Attributes:
        coarse: ``(C, val accuracy)`` of every coarse grid value, in order.
        steps: ``(c_left, acc_left, c_right, acc_right)`` of each bisection step.
        chosen: the final C (the kept end of the last step; the peak without steps).
        accuracy: val accuracy at ``chosen``.
    """

    coarse: list[tuple[float, float]] = field(default_factory=list)
    steps: list[tuple[float, float, float, float]] = field(default_factory=list)
    chosen: float = float("nan")
    accuracy: float = float("nan")


def lpclip_search(
    val_accuracy: Callable[[float], float], grid: Sequence[float], steps: int
) -> CSearch:
    """CoOp lpclip's choice of C (see the module docstring), given ``val_accuracy(C)``.

    The range arithmetic is lpclip's: the next range's ends go through log10 and
    back (``np.power(10, ...)``), so the Cs fitted are the reference's to the bit.

    Raises:
        VispromptError: an empty ``grid``.
    """
    if len(grid) == 0:
        raise VispromptError("the C search grid is empty; give at least one C (method.c_grid)")
    out = CSearch()
    for c in grid:
        out.coarse.append((float(c), float(val_accuracy(float(c)))))
    accs = [a for _, a in out.coarse]
    peak = int(np.argmax(accs))  # first maximum: ties go to the earlier (larger) C
    out.chosen, out.accuracy = out.coarse[peak]
    c_left, c_right = 1e-1 * out.chosen, 1e1 * out.chosen
    for _ in range(steps):
        acc_left, acc_right = float(val_accuracy(c_left)), float(val_accuracy(c_right))
        out.steps.append((float(c_left), acc_left, float(c_right), acc_right))
        if acc_left < acc_right:
            out.chosen, out.accuracy = float(c_right), acc_right
            lo = 0.5 * (np.log10(c_right) + np.log10(c_left))
            hi = np.log10(c_right)
        else:  # ties keep the left (smaller) C
            out.chosen, out.accuracy = float(c_left), acc_left
            hi = 0.5 * (np.log10(c_right) + np.log10(c_left))
            lo = np.log10(c_left)
        c_left, c_right = float(np.power(10, lo)), float(np.power(10, hi))
    return out


def fit_logistic(
    x: np.ndarray, y: np.ndarray, c: float, num_classes: int, max_iter: int = 1000
) -> tuple[np.ndarray, np.ndarray, bool]:
    """lpclip's ``LogisticRegression`` at ``C = c`` as a (K, D) weight and (K,) bias.

    Classes no label names get weight 0 and bias :data:`ABSENT_CLASS_BIAS`; two
    classes (scikit-learn's single binary row ``w``) become ``-w/2`` and ``+w/2``,
    whose softmax is the binary model's sigmoid. Returns ``(W, b, converged)``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    present = np.unique(y)
    if present.size < 2:
        raise VispromptError(
            f"linear-probe needs training labels of at least 2 classes, got {present.size}; "
            "use more shots or a dataset with more classes"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf = LogisticRegression(solver="lbfgs", max_iter=max_iter, l1_ratio=0.0, C=c).fit(x, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    weight = np.zeros((num_classes, x.shape[1]))
    bias = np.full(num_classes, ABSENT_CLASS_BIAS)
    classes = clf.classes_.astype(np.int64)
    if classes.size == 2:
        weight[classes[0]], weight[classes[1]] = -clf.coef_[0] / 2, clf.coef_[0] / 2
        bias[classes[0]], bias[classes[1]] = -clf.intercept_[0] / 2, clf.intercept_[0] / 2
    else:
        weight[classes], bias[classes] = clf.coef_, clf.intercept_
    return weight, bias, converged


def _accuracy(weight: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    # argmax of the decision function: scikit-learn's predict (first index on ties)
    return float(np.mean(np.argmax(x @ weight.T + bias, axis=1) == y)) if len(y) else 0.0


@register_method(
    "linear-probe",
    config=LinearProbeConfig,
    defaults={"optim.epochs": 1},
    text_cost="0",
    description="linear probe: logistic regression on the features, C chosen on val (lpclip)",
)
class LinearProbe(FitsOnData, PromptMethod):
    """Logistic regression on normalised image features, C chosen on val by lpclip's search."""

    def __init__(self, backbone, classnames, config: LinearProbeConfig, templates=()):
        super().__init__(backbone, classnames, config, templates)
        dim = int(backbone.embed_dim)
        # fitted by the solver, not by gradients: the optimiser never steps (no batches)
        self.weight = nn.Parameter(torch.zeros(self.num_classes, dim))
        self.bias = nn.Parameter(torch.zeros(self.num_classes))
        self.search: CSearch | None = None
        self.fits = 0
        self.not_converged = 0
        self._data: FitData | None = None

    def fit_data(self, data: FitData) -> None:
        self._data = data

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        data = self._data
        if data is None or data.val is None:
            raise RuntimeError("LinearProbe needs fit_data (with val) before its first epoch")
        clean = self.config.val_labels == "clean"
        x = F.normalize(data.features.image.float(), dim=-1).cpu().double().numpy()
        xv = F.normalize(data.val.features.image.float(), dim=-1).cpu().double().numpy()
        return x, data.labels.cpu().numpy(), xv, data.val.labels(clean=clean).numpy()

    def fit(self) -> CSearch:
        """Run the search, set W and b to the classifier at the chosen C; return the trace."""
        x, y, xv, yv = self._arrays()
        fitted: dict[float, tuple[np.ndarray, np.ndarray]] = {}

        def score(c: float) -> float:
            if c not in fitted:
                w, b, ok = fit_logistic(x, y, c, self.num_classes, self.config.max_iter)
                self.fits += 1
                self.not_converged += int(not ok)
                fitted[c] = (w, b)
            return _accuracy(*fitted[c], xv, yv)

        search = lpclip_search(score, self.config.c_grid, self.config.search_steps)
        w, b = fitted[search.chosen]
        with torch.no_grad():
            self.weight.copy_(torch.as_tensor(w, dtype=self.weight.dtype))
            self.bias.copy_(torch.as_tensor(b, dtype=self.bias.dtype))
        self.search = search
        return search

    def forward(
        self, features: FeatureBatch, text_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = F.normalize(features.image.float(), dim=-1)
        return x @ self.weight.t() + self.bias

    def start_epoch(self, ctx: EpochContext) -> EpochPlan:
        if self.search is None:
            self.fit()
        n = ctx.labels.numel()
        # the fitted classifier on the training set, as the epoch's training numbers
        probs = ctx.predict_train().float().cpu()
        labels = ctx.labels.cpu()
        pred = probs.argmax(dim=1)
        stats = {
            "train_loss": float(F.nll_loss(probs.clamp_min(1e-12).log(), labels)),
            "train_acc": 100.0 * float((pred == labels).float().mean()),
            "train_samples": n,
            "lp_C": self.search.chosen,
            "lp_val_acc": 100.0 * self.search.accuracy,
        }
        if ctx.true_labels is not None:
            stats["train_acc_true"] = 100.0 * float((pred == ctx.true_labels.cpu()).float().mean())
        return EpochPlan(batches=[], group=torch.zeros(n, dtype=torch.long), stats=stats)

    def fit_record(self) -> dict[str, Any]:
        if self.search is None:
            return {}
        clean = self.config.val_labels == "clean"
        val = self._data.val.record(clean=clean) if self._data and self._data.val else {}
        return {
            "fit": {
                "what": "linear-probe C (lpclip search on val)",
                "C": self.search.chosen,
                "val_accuracy": 100.0 * self.search.accuracy,
                "fits": self.fits,
                "not_converged": self.not_converged,
                **val,
            }
        }

    def extra_state(self) -> dict[str, Any]:
        if self.search is None:
            return {}
        s = self.search
        return {
            "coarse": [list(p) for p in s.coarse],
            "steps": [list(p) for p in s.steps],
            "chosen": s.chosen,
            "accuracy": s.accuracy,
            "fits": self.fits,
            "not_converged": self.not_converged,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if not state:
            self.search = None
            return
        self.search = CSearch(
            coarse=[tuple(p) for p in state["coarse"]],
            steps=[tuple(p) for p in state["steps"]],
            chosen=float(state["chosen"]),
            accuracy=float(state["accuracy"]),
        )
        self.fits, self.not_converged = int(state["fits"]), int(state["not_converged"])
