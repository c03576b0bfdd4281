"""Classification losses used by the noise-robust methods.

Every loss takes raw ``logits`` (N, K) and returns either the per-sample values
(``reduction="none"``, shape (N,)) or their ``"mean"`` / ``"sum"``. Writing
p = softmax(logits) and y for the given label of a sample:

=====================  ===========================================================
``cross_entropy``      CE = -log p_y
``gce_loss``           GCE_q = (1 - p_y^q) / q,  q in (0, 1]  (Zhang & Sabuncu 2018)
``mae_loss``           MAE = 1 - p_y  (= GCE with q = 1; NLPrompt's noisy-set loss)
``soft_cross_entropy`` -sum_k t_k log p_k  for a target distribution t
``entropy``            H(p) = -sum_k p_k log p_k  (always per sample)
``confidence_penalty`` sum_k p_k log p_k = -H(p)  (Pereyra et al. 2017; JoAPR's warm-up term)
=====================  ===========================================================

All probabilities are computed from ``log_softmax`` so that no loss takes the
log of an underflowed probability and every gradient stays finite, also for
p_y -> 0 (where the textbook form of GCE has an infinite derivative in p).

The losses run inside the training step, so they check only what costs no
device round trip (shapes, dtypes, the reduction name). Whether every label
lies in [0, K) needs the labels' min and max on the host - two synchronisations
per step on a GPU - so it is :func:`check_labels`, for the place where labels
enter (labels built from a dataset's class list are in range by construction,
and OT purification checks its labels once per epoch). A direct call
with a label out of range on the CPU still gets a one-line error: torch's own
index error is translated; on a GPU it surfaces as torch's device-side assert.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visprompt.errors import VispromptError

REDUCTIONS = ("mean", "sum", "none")


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def check_labels(target: torch.Tensor, num_classes: int) -> None:
    """Raise a one-line error unless every label in ``target`` lies in [0, num_classes).

    One host synchronisation: call it once where labels enter, not every step.
    """
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise VispromptError(
            f"target labels must lie in [0, {num_classes - 1}], got "
            f"[{int(target.min())}, {int(target.max())}]; check that the labels and the "
            "logits use the same class list"
        )


def _label_error(num_classes: int) -> VispromptError:
    return VispromptError(
        f"target labels must lie in [0, {num_classes - 1}]; "
        "check that the labels and the logits use the same class list"
    )


def _check(logits: torch.Tensor, target: torch.Tensor, reduction: str) -> None:
    """Shape, dtype and reduction checks: none of them waits for the device."""
    if reduction not in REDUCTIONS:
        raise VispromptError(
            f"unknown loss reduction {reduction!r}; use one of {', '.join(REDUCTIONS)}"
        )
    if logits.dim() != 2:
        raise VispromptError(
            f"logits must be a 2-D (N, K) tensor, got shape {tuple(logits.shape)}; "
            "pass one row of class scores per sample"
        )
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise VispromptError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}; "
            "pass one integer label per row of logits"
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise VispromptError(
            f"target must hold integer class indices, got dtype {target.dtype}; "
            "use soft_cross_entropy for probability targets"
        )


def _log_p_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log p_y per sample, computed stably."""
    log_p = F.log_softmax(logits, dim=1)
    try:
        return log_p.gather(1, target.long().unsqueeze(1)).squeeze(1)
    except RuntimeError as exc:  # the CPU's synchronous index check
        if "out of bounds" in str(exc):
            raise _label_error(logits.shape[1]) from None
        raise


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy -log p_y (a thin wrapper of ``F.cross_entropy`` for symmetry).

    Args:
        logits: (N, K) raw class scores.
        target: (N,) integer labels in [0, K).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample (N,) values).

    Returns:
        The reduced loss (scalar) or the (N,) per-sample losses.
    """
    _check(logits, target, reduction)
    try:
        return F.cross_entropy(logits, target.long(), reduction=reduction)
    except IndexError as exc:  # the CPU's synchronous target check
        if "out of bounds" in str(exc):
            raise _label_error(logits.shape[1]) from None
        raise


def gce_loss(
    logits: torch.Tensor, target: torch.Tensor, q: float = 0.7, reduction: str = "mean"
) -> torch.Tensor:
    """Generalised cross-entropy (1 - p_y^q) / q.

    q -> 0 recovers CE, q = 1 is MAE (1 - p_y). p_y^q is evaluated as
    exp(q * log p_y), so the gradient is finite even where p_y underflows. (The
    NLPrompt/VisPrompt reference classes add eps = 1e-6 to p_y for the same
    reason. That lowers their per-sample value by ((p_y + eps)^q - p_y^q) / q,
    which is at most eps^q / q, reached as p_y -> 0 because x^q is concave: at
    most 1e-6 only for q = 1 (MAE), but up to 9.0e-5 for q = 0.7 and 2.0e-3 for
    q = 0.5, where p_y is tiny.)

    Args:
        logits: (N, K) raw class scores.
        target: (N,) integer labels in [0, K).
        q: the Box-Cox exponent, in (0, 1].
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        The reduced loss (scalar) or the (N,) per-sample losses.

    Raises:
        VispromptError: if q is outside (0, 1] or the inputs are malformed.
    """
    if not 0.0 < float(q) <= 1.0:
        raise VispromptError(f"GCE q must be in (0, 1], got {q}; use e.g. q=0.7 (q=1 is MAE)")
    _check(logits, target, reduction)
    p_q = torch.exp(q * _log_p_target(logits, target))
    return _reduce((1.0 - p_q) / q, reduction)


def mae_loss(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean absolute error between softmax and one-hot target, in NLPrompt's form 1 - p_y.

    (The L1 distance ||onehot(y) - p||_1 is exactly twice this.) Equals
    ``gce_loss(..., q=1)``; NLPrompt trains the samples its OT step judges noisy
    with it.

    Args:
        logits: (N, K) raw class scores.
        target: (N,) integer labels in [0, K).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        The reduced loss (scalar) or the (N,) per-sample losses.
    """
    _check(logits, target, reduction)
    return _reduce(1.0 - torch.exp(_log_p_target(logits, target)), reduction)


def soft_cross_entropy(
    logits: torch.Tensor, target_probs: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy against soft targets, -sum_k t_k log p_k.

    Used with sharpened / mixed-up targets (JoAPR). The targets are not
    renormalised; rows that do not sum to 1 give a proportionally scaled loss.

    Args:
        logits: (N, K) raw class scores.
        target_probs: (N, K) non-negative target weights (normally rows summing to 1).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        The reduced loss (scalar) or the (N,) per-sample losses.
    """
    if reduction not in REDUCTIONS:
        raise VispromptError(
            f"unknown loss reduction {reduction!r}; use one of {', '.join(REDUCTIONS)}"
        )
    if logits.dim() != 2 or target_probs.shape != logits.shape:
        raise VispromptError(
            f"soft targets of shape {tuple(target_probs.shape)} do not match logits "
            f"{tuple(logits.shape)}; pass one (N, K) target distribution per row of logits"
        )
    values = -(target_probs * F.log_softmax(logits, dim=1)).sum(dim=1)
    return _reduce(values, reduction)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy H(softmax(logits)) = -sum_k p_k log p_k, shape (N,), in nats."""
    if logits.dim() != 2:
        raise VispromptError(
            f"logits must be a 2-D (N, K) tensor, got shape {tuple(logits.shape)}; "
            "pass one row of class scores per sample"
        )
    log_p = F.log_softmax(logits, dim=1)
    # p * log p -> 0 as p -> 0; exp(log_p) * log_p is exactly 0 there, never NaN.
    return -(torch.exp(log_p) * log_p).sum(dim=1)


def confidence_penalty(logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Negative entropy sum_k p_k log p_k (<= 0).

    Adding ``weight * confidence_penalty`` to a loss rewards high-entropy
    predictions, i.e. penalises over-confidence (Pereyra et al. 2017); JoAPR's
    warm-up adds it with weight alpha_1.

    Args:
        logits: (N, K) raw class scores.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        The reduced value (scalar) or the (N,) per-sample values.
    """
    if reduction not in REDUCTIONS:
        raise VispromptError(
            f"unknown loss reduction {reduction!r}; use one of {', '.join(REDUCTIONS)}"
        )
    return _reduce(-entropy(logits), reduction)


__all__ = [
    "REDUCTIONS",
    "check_labels",
    "confidence_penalty",
    "cross_entropy",
    "entropy",
    "gce_loss",
    "mae_loss",
    "soft_cross_entropy",
]
