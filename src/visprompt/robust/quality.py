"""How well a clean/noisy split matches the truth, and the ``purify_*`` numbers logged per epoch.

Every purifier's split is scored here and nowhere else: the training loop logs
:func:`purify_metrics` each epoch (through :meth:`visprompt.robust.split.Split.metrics`),
the results store keeps the :data:`PURIFY_COLUMNS` as columns, and reports,
``label-issues`` and the demo read those keys.

This module imports torch only inside its functions: the results store imports it
for :data:`PURIFY_COLUMNS`, and the commands that only read the store (``report``,
``sweep`` planning) do not load torch at all.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from visprompt.errors import VispromptError

if TYPE_CHECKING:
    import numpy as np
    import torch

#: Prefix of every per-epoch purification metric key.
PURIFY_PREFIX = "purify_"
#: ``purify_<name>`` epoch metrics, in the order they are logged and stored.
PURIFY_COLUMNS = (
    "clean_fraction",
    "precision",
    "recall",
    "noisy_precision",
    "noisy_recall",
    "pseudo_acc",
)
#: :func:`split_quality` key behind each column after ``clean_fraction``.
_QUALITY_OF_COLUMN = {
    "precision": "precision",
    "recall": "recall",
    "noisy_precision": "noisy_precision",
    "noisy_recall": "noisy_recall",
    "pseudo_acc": "pseudo_label_accuracy",
}


def _ratio(num: int, den: int) -> float:
    return num / den if den > 0 else float("nan")


def _cpu_tensor(x: Any, name: str) -> torch.Tensor:
    import numpy as np
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise VispromptError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}")


def split_quality(
    clean_mask: torch.Tensor | np.ndarray,
    given_labels: torch.Tensor | np.ndarray,
    true_labels: torch.Tensor | np.ndarray,
    pseudo_labels: torch.Tensor | np.ndarray | None = None,
) -> dict[str, float]:
    """How well a clean/noisy split matches the truth (when true labels are known).

    A sample is *correct* when its given label equals its true label.

    Returns a dict with:

    - ``n``, ``clean_size`` (ints as floats are avoided: these two are ints);
    - ``clean_fraction``: clean_size / n;
    - ``noise_rate``: fraction of samples whose given label is wrong;
    - ``precision``: of the samples marked clean, the fraction that are correct;
    - ``recall``: of the correct samples, the fraction marked clean;
    - ``noisy_precision``: of the samples marked noisy, the fraction truly wrong;
    - ``noisy_recall``: of the truly wrong samples, the fraction marked noisy;
    - ``verdict_accuracy``: fraction of samples whose verdict is right;
    - ``pseudo_label_accuracy``: fraction of pseudo-labels equal to the true
      label (only when ``pseudo_labels`` is given).

    A ratio whose denominator is empty (e.g. precision when nothing is marked
    clean) is ``float("nan")``, returned explicitly and without a warning.
    """
    clean = _cpu_tensor(clean_mask, "clean_mask").bool()
    given = _cpu_tensor(given_labels, "given_labels").long()
    true = _cpu_tensor(true_labels, "true_labels").long()
    if not (clean.shape == given.shape == true.shape) or clean.dim() != 1:
        raise VispromptError(
            f"clean_mask {tuple(clean.shape)}, given_labels {tuple(given.shape)} and "
            f"true_labels {tuple(true.shape)} must be 1-D of the same length; pass one entry "
            "per sample"
        )
    correct = given == true
    n = int(clean.numel())
    n_clean = int(clean.sum())
    n_correct = int(correct.sum())
    tp = int((clean & correct).sum())
    tn = int((~clean & ~correct).sum())
    out: dict[str, float] = {
        "n": n,
        "clean_size": n_clean,
        "clean_fraction": _ratio(n_clean, n),
        "noise_rate": _ratio(n - n_correct, n),
        "precision": _ratio(tp, n_clean),
        "recall": _ratio(tp, n_correct),
        "noisy_precision": _ratio(tn, n - n_clean),
        "noisy_recall": _ratio(tn, n - n_correct),
        "verdict_accuracy": _ratio(tp + tn, n),
    }
    if pseudo_labels is not None:
        pseudo = _cpu_tensor(pseudo_labels, "pseudo_labels").long()
        if pseudo.shape != true.shape:
            raise VispromptError(
                f"pseudo_labels {tuple(pseudo.shape)} must match true_labels "
                f"{tuple(true.shape)}; pass one pseudo-label per sample"
            )
        out["pseudo_label_accuracy"] = _ratio(int((pseudo == true).sum()), n)
    return out


def purify_metrics(
    clean_mask: torch.Tensor,
    given_labels: torch.Tensor,
    true_labels: torch.Tensor | None = None,
    pseudo_labels: torch.Tensor | None = None,
    *,
    skip_undefined: bool = False,
) -> dict[str, float]:
    """The ``purify_*`` numbers of one epoch's split, keyed as :data:`PURIFY_COLUMNS`.

    ``purify_clean_fraction`` always; with ``true_labels`` also the clean and
    noisy sides' precision and recall, and ``purify_pseudo_acc`` when the split
    has pseudo-labels. ``skip_undefined`` leaves out a ratio whose side is empty
    (NaN) instead of logging NaN: JoAPR's log has always done so, the OT
    methods' has not (the demo and the store read NaN there), and both stay as
    they were.
    """
    clean = _cpu_tensor(clean_mask, "clean_mask").bool()
    n = int(clean.numel())
    out = {PURIFY_PREFIX + "clean_fraction": _ratio(int(clean.sum()), n)}
    if true_labels is None:
        return out
    quality = split_quality(clean, given_labels, true_labels, pseudo_labels)
    for column, key in _QUALITY_OF_COLUMN.items():
        if key not in quality:  # no pseudo-labels
            continue
        value = float(quality[key])
        if skip_undefined and not math.isfinite(value):
            continue
        out[PURIFY_PREFIX + column] = value
    return out


__all__ = ["PURIFY_COLUMNS", "PURIFY_PREFIX", "purify_metrics", "split_quality"]
