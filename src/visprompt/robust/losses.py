"""Classification losses used by the noise-robust methods.

Every loss takes raw ``logits`` (N, K) and returns either the per-sample values
(``reduction="none"``, shape (N,)) or their ``"mean"`` / ``"sum"``. Writing
p = softmax(logits) and y for the given label of a sample:

=====================  ===========================================================
``cross_entropy``      CE = -log p_y
``gce_loss``           GCE_q = (1 - p_y^q) / q,  q in (0, 1]  (Zhang & Sabuncu 2018)
``mae_loss``           MAE = 1 - p_y  (= GCE with q = 1; NLPrompt's noisy-set loss)
``sce_loss``           SCE = alpha * CE + beta * RCE,  RCE = -A (1 - p_y)  (Wang et al. 2019)
``soft_cross_entropy`` -sum_k t_k log p_k  for a target distribution t
``entropy``            H(p) = -sum_k p_k log p_k  (always per sample)
``confidence_penalty`` sum_k p_k log p_k = -H(p)  (Pereyra et al. 2017; JoAPR's warm-up term)
=====================  ===========================================================

All probabilities are computed from ``log_softmax`` so that no loss takes the
log of an underflowed probability and every gradient stays finite, also for
p_y -> 0 (where the textbook form of GCE has an infinite derivative in p).
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


def _check(logits: torch.Tensor, target: torch.Tensor, reduction: str) -> None:
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
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= logits.shape[1]):
        raise VispromptError(
            f"target labels must lie in [0, {logits.shape[1] - 1}]; "
            "check that the labels and the logits use the same class list"
        )


def _log_p_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log p_y per sample, computed stably."""
    return F.log_softmax(logits, dim=1).gather(1, target.long().unsqueeze(1)).squeeze(1)


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
    return F.cross_entropy(logits, target.long(), reduction=reduction)


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


def sce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.5,
    beta: float = 1.0,
    log_clamp: float = -4.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Symmetric cross-entropy alpha * CE + beta * RCE.

    The reverse cross-entropy swaps prediction and target:
    RCE = -sum_k p_k log q_k with q = onehot(y) and log 0 replaced by
    ``log_clamp`` = A, which gives RCE = -A (1 - p_y) (A = -4 in Wang et al.,
    ICCV 2019). Defaults alpha = 0.5, beta = 1.0 are VisPrompt's. VisPrompt's
    released class instead smooths the one-hot target with 1e-6
    (q = onehot * (1 - 1e-6) + 1e-6 / K), i.e. A = log(1e-6 / K) plus a term
    below 1e-6; pass ``log_clamp=math.log(1e-6 / K)`` to reproduce it.

    Args:
        logits: (N, K) raw class scores.
        target: (N,) integer labels in [0, K).
        alpha: weight of CE.
        beta: weight of RCE.
        log_clamp: A, the value that stands for log 0 (must be < 0).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        The reduced loss (scalar) or the (N,) per-sample losses.

    Raises:
        VispromptError: if ``log_clamp`` is not negative or the inputs are malformed.
    """
    if not float(log_clamp) < 0.0:
        raise VispromptError(
            f"SCE log_clamp (the value standing for log 0) must be negative, got {log_clamp}; "
            "use e.g. -4.0"
        )
    _check(logits, target, reduction)
    log_p_y = _log_p_target(logits, target)
    ce = -log_p_y
    rce = -float(log_clamp) * (1.0 - torch.exp(log_p_y))
    return _reduce(alpha * ce + beta * rce, reduction)


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
    "confidence_penalty",
    "cross_entropy",
    "entropy",
    "gce_loss",
    "mae_loss",
    "sce_loss",
    "soft_cross_entropy",
]
