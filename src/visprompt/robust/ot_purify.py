"""NLPrompt's optimal-transport purification of a noisily labelled training set.

NLPrompt (and VisPrompt, which trains on the same framework) split the training
set before every epoch: the current model's class probabilities P (N x K) are
transported onto the classes by entropic optimal transport,

    plan = argmin_{T >= 0, T 1 = a, T^T 1 = b} <T, C> - reg * H(T),

with a uniform sample marginal a = 1/N, a uniform class marginal b = 1/K and
cost C = -log(P + 1e-8). The plan's row argmax is a pseudo-label that respects
the class balance; a sample is *clean* when it is selected (see the budget
below) and its pseudo-label equals its given label, and *noisy* otherwise.

How the budget enters (read from NLPrompt's released ``utils.py``): the
reference passes a = 1/N and b = budget/K to POT's balanced ``ot.sinkhorn``
and then selects the floor(N * budget) rows with the largest plan row maximum.
With unequal masses the balanced Sinkhorn iteration does not solve a partial
problem: after t iterations v carries an extra factor budget^t and u its
inverse, so every iterate's plan diag(u) K diag(v) is *exactly* the plan for
b = 1/K (``tests/robust`` checks this against POT); the mismatch only keeps
the stopping test from ever firing (and, for small budgets, ends the loop once
v underflows). The budget therefore acts through the selection alone, and this
module does just that: it solves the balanced problem (so ``tol`` works) and
keeps the floor(N * budget) most confident rows. ``budget = 1`` (NLPrompt's
default; the curriculum is off) selects every sample.

Cost options: ``"neg_log_prob"`` is C = -log(P + 1e-8), what the NLPrompt paper
and VisPrompt's per-batch utility use. ``"neg_prob"`` is what NLPrompt's
released trainer computes: it applies ``log_softmax`` to the probabilities, so
C = -log_softmax(P) = -P + logsumexp_k P, i.e. C = -P up to a per-row constant.
That constant leaves the OT solution unchanged but not the Sinkhorn iterates
(the first update is the column one), and 1000 iterations rarely converge at
reg = 0.01, so we keep it and reproduce the reference's plan exactly.

Scopes: ``"global"`` solves one problem over all N samples (NLPrompt);
``"batch"`` solves blocks of ``batch_size`` samples alone, each against the K
classes with uniform marginals 1/B and 1/K (VisPrompt's released utility,
which selects the floor(B * budget) most confident rows *within* each block;
so do we). The reference's blocks are the batches of its *shuffled* train
loader, so each block mixes classes. Our training set is ordered by label, and
blocks cut from it in that order would each hold a single given class, which
the uniform class marginal then spreads over all K classes (on a label-sorted
synthetic set with 60% correct labels: 9% judged clean, against 46% for
shuffled blocks and 60% for the global problem). So the blocks are consecutive
slices of a permutation of the samples: ``torch.randperm(N,
generator=generator)`` (the training loop passes its per-epoch generator, so the
blocks are the same in a resumed run), or one given as ``permutation``; the
last block may be smaller. Every result is returned in the original sample
order. With blocks smaller than the class count (B = 16 < K = 101) each row
must spread its mass 1/B over several classes of mass 1/K, so the row's
largest entries are near-ties: on the benchmark's 1,600 compared rows every
one had its top two entries within 1e-4 (relative), and two correct solvers
(ours, POT's per-block ``sinkhorn_log``) broke 665 of those ties differently,
flipping 223 clean verdicts. The batch-scope verdicts are therefore decided
partly by rounding (as in the reference, which uses POT); the global problem
had no such ties.

The transport problems are solved by :mod:`visprompt.robust.sinkhorn`; the
split is scored by :mod:`visprompt.robust.quality`; the ``ot`` purifier
(:mod:`visprompt.robust.purifiers.ot`) turns a :class:`PurifyResult` into the
:class:`~visprompt.robust.split.Split` every method consumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from visprompt.errors import VispromptError
from visprompt.robust.sinkhorn import check_reg, solve_log_kernel

COSTS = ("neg_log_prob", "neg_prob")
SCOPES = ("global", "batch")
SCHEDULES = ("none", "linear", "exp")

# Added to P before the log, as in the reference utilities, so that a zero
# probability costs -log(1e-8) ~ 18.4 instead of infinity.
LOG_EPS = 1e-8


@dataclass(frozen=True)
class PurifyResult:
    """The clean/noisy split of one purification step.

    Attributes:
        pseudo_labels: (N,) int64, argmax of each row of the transport plan.
        clean_mask: (N,) bool, ``selected & (pseudo_labels == labels)``.
        confidence: (N,) the plan's row maximum as a probability
            (row max / row sum, in [1/K, 1]).
        given_mass: (N,) the plan's mass on the sample's *given* label as a
            probability (plan[i, y_i] / row sum, in [0, 1]): how strongly the
            transport keeps the label, the ``ot`` purifier's clean score.
        selected: (N,) bool, the floor(N * budget) most confident rows (per
            block of ``batch_size`` in batch scope).
        clean_fraction: ``clean_mask.mean()`` as a float.
        budget: the budget used.
        num_iter: Sinkhorn iterations run (largest over blocks in batch scope).
        marginal_error: largest L2 class-marginal violation at the stop.
        plan: the (N, K) plan when ``return_plan=True``, else ``None``. In batch
            scope each block's rows sum to 1/B_block, not 1/N.
    """

    pseudo_labels: torch.Tensor
    clean_mask: torch.Tensor
    confidence: torch.Tensor
    given_mass: torch.Tensor
    selected: torch.Tensor
    clean_fraction: float
    budget: float
    num_iter: int
    marginal_error: float
    plan: torch.Tensor | None = None

    @property
    def noisy_mask(self) -> torch.Tensor:
        """(N,) bool, the complement of ``clean_mask``."""
        return ~self.clean_mask


def _check_budget(budget: float) -> float:
    budget = float(budget)
    if not (0.0 < budget <= 1.0):
        raise VispromptError(
            f"OT budget must be in (0, 1], got {budget}; use 1.0 to select every sample "
            "or a curriculum value such as 0.3"
        )
    return budget


def _num_selected(n: int, budget: float) -> int:
    # floor(n * budget), guarded so that e.g. 0.29 * 100 = 28.999999999999996 gives 29.
    return min(n, math.floor(n * budget + 1e-9))


def _top_rows(confidence: torch.Tensor, count: int) -> torch.Tensor:
    """Bool mask of the ``count`` largest entries of each row of ``confidence`` (B, n).

    Ties go to the earlier sample (stable sort), the same on every device.
    """
    order = torch.sort(confidence, dim=1, descending=True, stable=True).indices
    mask = torch.zeros_like(confidence, dtype=torch.bool)
    mask.scatter_(1, order[:, :count], True)
    return mask


def _as_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise VispromptError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}")


def _validate_inputs(probs: torch.Tensor, labels: torch.Tensor) -> None:
    if probs.dim() != 2 or not probs.dtype.is_floating_point:
        raise VispromptError(
            f"probs must be a floating (N, K) matrix of class probabilities, got shape "
            f"{tuple(probs.shape)} and dtype {probs.dtype}; pass softmax outputs, "
            "one row per sample"
        )
    n, k = probs.shape
    if n < 1 or k < 2:
        raise VispromptError(
            f"probs has shape {(n, k)}; OT purification needs at least one sample and two classes"
        )
    if labels.dim() != 1 or labels.shape[0] != n:
        raise VispromptError(
            f"labels has shape {tuple(labels.shape)} but probs has {n} rows; "
            "pass one given label per sample, in the same order"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise VispromptError(
            f"labels must be integer class indices, got dtype {labels.dtype}; "
            "convert them with .long()"
        )
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise VispromptError(
            f"labels must lie in [0, {k - 1}] (K = {k} columns of probs), got "
            f"[{int(labels.min())}, {int(labels.max())}]; check the class list"
        )
    if not bool(torch.isfinite(probs).all()) or float(probs.min()) < 0.0:
        raise VispromptError(
            "probs has negative, NaN or infinite entries; pass softmax probabilities, not logits"
        )
    row_gap = float((probs.sum(dim=1, dtype=torch.float64) - 1.0).abs().max())
    if row_gap > 1e-2:  # loose enough for bfloat16 softmax outputs
        raise VispromptError(
            f"rows of probs must sum to 1 (largest deviation {row_gap:.3g}); "
            "pass softmax probabilities, not logits or unnormalised scores"
        )


def _solve_blocks(
    probs: torch.Tensor,
    *,
    reg: float,
    cost: str,
    dtype: torch.dtype,
    num_iter_max: int,
    tol: float,
    label_patience: int | None,
) -> tuple[torch.Tensor, int, float]:
    """Solve the uniform-marginal problems for probs (B, n, K); returns (plan, iters, err)."""
    if cost == "neg_log_prob":
        # log_k = -C / reg = log(P + 1e-8) / reg, built in place in one buffer.
        log_k = probs.to(dtype=dtype, copy=True).add_(LOG_EPS).log_().div_(reg)
    else:
        # -C / reg = log_softmax(P) / reg: -P plus a per-row constant, exactly the
        # released NLPrompt cost. The constant leaves the OT solution unchanged
        # but not the iterates (Sinkhorn starts with the column update), and
        # 1000 iterations rarely converge at reg = 0.01, so we keep it.
        p = probs.to(dtype=dtype)
        log_k = (p - torch.logsumexp(p, dim=-1, keepdim=True)).div_(reg)
    n_prob, n, k = log_k.shape
    log_a = torch.full((n_prob, n), -math.log(n), dtype=dtype, device=probs.device)
    log_b = torch.full((n_prob, k), -math.log(k), dtype=dtype, device=probs.device)
    plan, n_iter, err, _ = solve_log_kernel(
        log_k, log_a, log_b, num_iter_max, tol, label_patience=label_patience
    )
    return plan, n_iter, float(err.max())


def purify(
    probs: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    *,
    reg: float = 0.01,
    budget: float = 1.0,
    cost: str = "neg_log_prob",
    scope: str = "global",
    batch_size: int = 16,
    num_iter_max: int = 1000,
    tol: float = 1e-6,
    label_patience: int | None = None,
    dtype: torch.dtype | None = None,
    return_plan: bool = False,
    generator: torch.Generator | None = None,
    permutation: torch.Tensor | np.ndarray | None = None,
) -> PurifyResult:
    """Split samples into clean and noisy by entropic OT of the model's probabilities.

    See the module docstring for the problem, the cost options, the two scopes
    and how ``budget`` is applied (as NLPrompt's released code means it: the
    plan is the balanced one, the budget picks the most confident rows).

    Args:
        probs: (N, K) class probabilities of every training sample under the
            current model (rows sum to 1), on any device.
        labels: (N,) given (possibly noisy) integer labels.
        reg: entropic regularisation epsilon (> 0); NLPrompt uses 0.01.
        budget: fraction of samples that may be selected, in (0, 1].
        cost: ``"neg_log_prob"`` (C = -log(P + 1e-8)) or ``"neg_prob"``
            (C = -log_softmax(P), i.e. -P up to a row constant: NLPrompt's code).
        scope: ``"global"`` (one problem) or ``"batch"`` (blocks of ``batch_size``
            samples of a seeded shuffle solved alone, all blocks at once as a
            batched problem).
        batch_size: block size for ``scope="batch"`` (the last block may be smaller).
        num_iter_max: Sinkhorn iteration limit (per block in batch scope).
        tol: stop when the L2 class-marginal violation is below this.
        label_patience: also stop once no pseudo-label has changed for this many
            iterations (None, the default: only ``tol`` / ``num_iter_max``).
            Measured on synthetic K = 101 data at reg = 0.01, the labels keep
            changing slowly: 100 never triggered before 1000 iterations (N =
            10k to 310k), and at N = 30k patience 20 stopped at 401 iterations
            with 3 verdicts changed against the tol stop (891), 30 at 551 with
            none. So it is off by default; it pays at larger ``reg``.
        dtype: working precision; default float64 for float64 input, else
            float32, which gave the same split as float64 on the benchmark
            (0 of 50,000 verdicts differ; ``benchmarks/purify_scale.py``) at
            half the time and memory.
        return_plan: also return the (N, K) plan.
        generator: batch scope: the blocks are consecutive slices of
            ``torch.randperm(N, generator=generator)`` (one draw from it); None
            uses a generator seeded with 0. Not used in global scope.
        permutation: batch scope: the (N,) sample order to cut the blocks from,
            instead of drawing one (e.g. ``torch.arange(N)`` for blocks in the
            input order). Not used in global scope.

    Returns:
        A :class:`PurifyResult` on the device of ``probs``, in the input's
        sample order (whatever the block order).

    Raises:
        VispromptError: for a budget outside (0, 1], reg <= 0, an unknown cost or
            scope, mismatched shapes, labels out of range, probs that are not
            probabilities, or a ``permutation`` that is not one of 0..N-1 (or is
            given together with a ``generator``).
    """
    reg = check_reg(reg)
    budget = _check_budget(budget)
    if cost not in COSTS:
        raise VispromptError(f"unknown OT cost {cost!r}; use one of {', '.join(COSTS)}")
    if scope not in SCOPES:
        raise VispromptError(f"unknown OT scope {scope!r}; use one of {', '.join(SCOPES)}")
    if int(batch_size) < 1 or int(num_iter_max) < 1 or not float(tol) >= 0.0:
        raise VispromptError(
            f"batch_size ({batch_size}) and num_iter_max ({num_iter_max}) must be >= 1 and tol "
            f"({tol}) >= 0; use the defaults 16, 1000 and 1e-6"
        )
    if label_patience is not None and int(label_patience) < 1:
        raise VispromptError(
            f"label_patience must be a positive number of iterations or None, got {label_patience}"
        )
    probs_t = _as_tensor(probs, "probs")
    labels_t = _as_tensor(labels, "labels").to(probs_t.device)
    _validate_inputs(probs_t, labels_t)
    if dtype is None:
        dtype = torch.float64 if probs_t.dtype == torch.float64 else torch.float32
    n, k = probs_t.shape
    solve = {
        "reg": reg,
        "cost": cost,
        "dtype": dtype,
        "num_iter_max": int(num_iter_max),
        "tol": float(tol),
        "label_patience": label_patience,
    }

    order = None
    if scope == "batch":
        order = _block_order(n, generator, permutation).to(probs_t.device)
    elif permutation is not None and generator is not None:
        raise VispromptError("give purify a generator or a permutation, not both")

    with torch.no_grad():
        labels_long = labels_t.long()
        if order is None:
            blocks = [(probs_t.unsqueeze(0), labels_long.unsqueeze(0))]
        else:
            # All full blocks form one batched problem; the remainder is a second one.
            shuffled, shuffled_labels = probs_t[order], labels_long[order]
            bs = int(batch_size)
            n_full = (n // bs) * bs
            blocks = []
            if n_full:
                blocks.append(
                    (
                        shuffled[:n_full].reshape(n // bs, bs, k),
                        shuffled_labels[:n_full].reshape(n // bs, bs),
                    )
                )
            if n_full < n:
                blocks.append((shuffled[n_full:].unsqueeze(0), shuffled_labels[n_full:][None]))
        pseudo, conf, mass, sel, plans = [], [], [], [], []
        n_iter, err = 0, 0.0
        for block, block_labels in blocks:
            plan, it, e = _solve_blocks(block, **solve)
            n_iter, err = max(n_iter, it), max(err, e)
            row_max, arg = plan.max(dim=2)
            row_sum = plan.sum(dim=2)
            c = row_max / row_sum
            pseudo.append(arg.reshape(-1))
            conf.append(c.reshape(-1))
            mass.append(
                (plan.gather(2, block_labels.unsqueeze(2)).squeeze(2) / row_sum).reshape(-1)
            )
            sel.append(_top_rows(c, _num_selected(block.shape[1], budget)).reshape(-1))
            if return_plan:
                plans.append(plan.reshape(-1, k))
            del plan
        pseudo_labels = _unshuffle(torch.cat(pseudo), order)
        selected = _unshuffle(torch.cat(sel), order)
        confidence = _unshuffle(torch.cat(conf), order)
        given_mass = _unshuffle(torch.cat(mass), order)
        plan_out = _unshuffle(torch.cat(plans), order) if return_plan else None
        clean_mask = selected & (pseudo_labels == labels_long)
    return PurifyResult(
        pseudo_labels=pseudo_labels,
        clean_mask=clean_mask,
        confidence=confidence,
        given_mass=given_mass,
        selected=selected,
        clean_fraction=float(clean_mask.sum()) / n,
        budget=budget,
        num_iter=n_iter,
        marginal_error=err,
        plan=plan_out,
    )


def _block_order(
    n: int, generator: torch.Generator | None, permutation: torch.Tensor | np.ndarray | None
) -> torch.Tensor:
    """The sample order whose consecutive slices are the batch-scope blocks."""
    if permutation is None:
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        return torch.randperm(n, generator=generator, device=generator.device).cpu()
    if generator is not None:
        raise VispromptError("give purify a generator or a permutation, not both")
    perm = _as_tensor(permutation, "permutation").cpu()
    if (
        perm.dim() != 1
        or perm.dtype.is_floating_point
        or perm.dtype == torch.bool
        or perm.numel() != n
        or not torch.equal(torch.sort(perm.long()).values, torch.arange(n))
    ):
        raise VispromptError(
            f"permutation must hold each sample index 0..{n - 1} once (an (N,) integer tensor, "
            "e.g. torch.randperm(N)); it orders the samples into OT blocks"
        )
    return perm.long()


def _unshuffle(values: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """Rows given in ``order`` (row i belongs to sample ``order[i]``) back in sample order."""
    if order is None:
        return values
    out = torch.empty_like(values)
    out[order] = values
    return out


# --------------------------------------------------------------------------- schedule


def budget_at(
    epoch: int,
    num_epochs: int,
    schedule: str = "none",
    start: float = 0.3,
    curriculum_epochs: int | None = None,
) -> float:
    """The selection budget for a 0-based ``epoch`` (NLPrompt's curriculum).

    With T = ``curriculum_epochs`` (default ``num_epochs``) and t = epoch:

    - ``"none"``: 1.0 always (NLPrompt's default; the curriculum is off);
    - ``"linear"``: start + (1 - start) * t / T for t < T, then 1.0;
    - ``"exp"``: start + (1 - start) * (1 - exp(-4 t / T)) for t < T, then 1.0
      (the reference's schedule: it reaches ~0.98 of the way at t -> T and
      jumps to 1 at t = T).

    Args:
        epoch: 0-based epoch index, >= 0.
        num_epochs: total epochs, >= 1.
        schedule: ``"none"``, ``"linear"`` or ``"exp"``.
        start: budget at epoch 0, in (0, 1].
        curriculum_epochs: length T of the curriculum (>= 0; 0 turns it off).

    Returns:
        The budget, in (0, 1].

    Raises:
        VispromptError: on an unknown schedule or out-of-range arguments.
    """
    if schedule not in SCHEDULES:
        raise VispromptError(
            f"unknown budget schedule {schedule!r}; use one of {', '.join(SCHEDULES)}"
        )
    if int(num_epochs) < 1 or int(epoch) < 0:
        raise VispromptError(
            f"epoch ({epoch}) must be >= 0 and num_epochs ({num_epochs}) >= 1; "
            "pass the 0-based epoch and the run's epoch count"
        )
    if not 0.0 < float(start) <= 1.0:
        raise VispromptError(f"budget start must be in (0, 1], got {start}; use e.g. 0.3")
    if curriculum_epochs is not None and int(curriculum_epochs) < 0:
        raise VispromptError(
            f"curriculum_epochs must be >= 0, got {curriculum_epochs}; use 0 to turn it off"
        )
    if schedule == "none":
        return 1.0
    total = int(num_epochs if curriculum_epochs is None else curriculum_epochs)
    if epoch >= total:
        return 1.0
    t = epoch / total
    ratio = t if schedule == "linear" else 1.0 - math.exp(-4.0 * t)
    return float(start) + ratio * (1.0 - float(start))


__all__ = ["COSTS", "SCHEDULES", "SCOPES", "PurifyResult", "budget_at", "purify"]
