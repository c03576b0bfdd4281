"""OT purification: recovery of injected noise, agreement with direct Sinkhorn and POT."""

from __future__ import annotations

import importlib
import math
import warnings

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F
from vp_testing import rel_err

from visprompt.errors import VispromptError
from visprompt.robust import budget_at, purify, sinkhorn_log, split_quality


def synthetic(
    n: int, k: int, rate: float, seed: int, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Model probabilities peaked on the true class (with a confusable neighbour)
    and given labels of which floor(rate * n) are flipped to another class."""
    g = torch.Generator().manual_seed(seed)
    true = torch.randint(0, k, (n,), generator=g)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64)
    rows = torch.arange(n)
    logits[rows, true] += 3.0 + torch.rand(n, generator=g, dtype=torch.float64)
    logits[rows, (true + 1) % k] += 1.5
    given = true.clone()
    flip = torch.randperm(n, generator=g)[: int(rate * n)]
    given[flip] = (true[flip] + torch.randint(1, k, (len(flip),), generator=g)) % k
    return torch.softmax(logits, dim=1).to(dtype), given, true


def direct_log_sinkhorn(cost: np.ndarray, reg: float, n_iter: int) -> np.ndarray:
    """Textbook log-domain Sinkhorn with uniform marginals (v-update first, like POT)."""
    n, k = cost.shape
    log_a, log_b = np.full(n, -math.log(n)), np.full(k, -math.log(k))
    f, g = np.zeros(n), np.zeros(k)
    m = -cost / reg

    def lse(x: np.ndarray, axis: int) -> np.ndarray:
        mx = x.max(axis=axis, keepdims=True)
        return (mx + np.log(np.exp(x - mx).sum(axis=axis, keepdims=True))).squeeze(axis)

    for _ in range(n_iter):
        g = log_b - lse(m + f[:, None], 0)
        f = log_a - lse(m + g[None, :], 1)
    return np.exp(m + f[:, None] + g[None, :])


def pot_log(cost: torch.Tensor, reg: float, b: torch.Tensor | None = None, **kw) -> torch.Tensor:
    n, k = cost.shape
    a = torch.full((n,), 1.0 / n, dtype=cost.dtype)
    b = torch.full((k,), 1.0 / k, dtype=cost.dtype) if b is None else b
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "did not converge" is expected with reg 0.01
        return ot.sinkhorn(a, b, cost, reg, method="sinkhorn_log", **kw)


def assert_top_rows(selected: torch.Tensor, conf: torch.Tensor, count: int) -> None:
    """``selected`` holds ``count`` rows and none is less confident than a left-out row
    (ties may be broken either way)."""
    assert int(selected.sum()) == count
    if 0 < count < len(conf):
        assert conf[selected].min() >= conf[~selected].max() - 1e-12


# ----------------------------------------------------------------------------- (a)


def test_recovers_injected_noise_far_better_than_chance():
    probs, given, true = synthetic(2000, 10, 0.4, seed=0, dtype=torch.float32)
    res = purify(probs, given)
    q = split_quality(res.clean_mask, given, true, res.pseudo_labels)
    assert q["noise_rate"] == pytest.approx(0.4)
    # Chance: a random verdict has noisy precision 0.4 (the base rate).
    assert q["noisy_precision"] > 0.8
    assert q["noisy_recall"] > 0.9
    assert q["precision"] > 0.95
    assert q["recall"] > 0.8
    assert q["pseudo_label_accuracy"] > 0.85
    assert res.clean_fraction == pytest.approx(q["clean_fraction"])
    assert res.selected.all()  # budget 1 selects everything
    assert res.pseudo_labels.dtype == torch.int64 and res.clean_mask.dtype == torch.bool
    assert torch.equal(res.clean_mask, res.pseudo_labels == given)
    assert ((res.confidence >= 0.1 - 1e-6) & (res.confidence <= 1 + 1e-6)).all()


# ----------------------------------------------------------------------------- (b)


@pytest.mark.parametrize("reg", [0.5, 0.05, 0.01])
def test_global_plan_matches_direct_log_domain_sinkhorn(reg):
    probs, given, _ = synthetic(40, 5, 0.3, seed=1)
    n_iter = 120
    res = purify(probs, given, reg=reg, num_iter_max=n_iter, tol=0.0, return_plan=True)
    expected = direct_log_sinkhorn(-np.log(probs.numpy() + 1e-8), reg, n_iter)
    assert res.num_iter == n_iter
    np.testing.assert_allclose(res.plan.numpy(), expected, rtol=1e-9, atol=1e-15)
    assert torch.equal(res.pseudo_labels, torch.from_numpy(expected.argmax(1)))
    conf = expected.max(1) / expected.sum(1)
    np.testing.assert_allclose(res.confidence.numpy(), conf, rtol=1e-9)


@pytest.mark.parametrize("reg", [0.1, 0.01, 0.001])
def test_solver_agrees_with_pot_sinkhorn_log_including_stopping(reg):
    probs, _, _ = synthetic(60, 7, 0.0, seed=2)
    cost = -torch.log(probs + 1e-8)
    expected = pot_log(cost, reg, numItermax=1000, stopThr=1e-6)
    got = sinkhorn_log(cost, reg)
    np.testing.assert_allclose(got.plan.numpy(), expected.numpy(), rtol=1e-8, atol=1e-14)
    assert got.plan.shape == cost.shape


def test_solver_stops_on_tol_like_pot():
    probs, _, _ = synthetic(50, 4, 0.0, seed=3)
    cost = -torch.log(probs + 1e-8)
    _, log = ot.sinkhorn(
        torch.full((50,), 0.02, dtype=torch.float64),
        torch.full((4,), 0.25, dtype=torch.float64),
        cost,
        1.0,
        method="sinkhorn_log",
        stopThr=1e-9,
        log=True,
    )
    got = sinkhorn_log(cost, 1.0, tol=1e-9)
    assert got.converged and got.num_iter == log["niter"] + 1 < 1000
    assert float(got.marginal_error.max()) < 1e-9


def test_budget_scaled_class_marginal_gives_the_balanced_plan():
    # NLPrompt passes b = budget / K with a = 1 / N to POT's balanced Sinkhorn;
    # every iterate's plan equals the one for b = 1 / K (see the module docstring).
    probs, given, _ = synthetic(80, 6, 0.3, seed=4)
    n, k = probs.shape
    budget, n_iter = 0.5, 40
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = ot.sinkhorn(
            torch.full((n,), 1.0 / n, dtype=torch.float64),
            torch.full((k,), budget / k, dtype=torch.float64),
            -torch.log(probs + 1e-8),
            0.1,
            numItermax=n_iter,
            stopThr=1e-6,
        )
    res = purify(
        probs, given, reg=0.1, budget=budget, num_iter_max=n_iter, tol=0.0, return_plan=True
    )
    np.testing.assert_allclose(res.plan.numpy(), reference.numpy(), rtol=1e-9, atol=1e-15)
    # The reference then keeps the top int(N * budget) rows by plan row maximum.
    assert_top_rows(res.selected, reference.max(1).values, int(n * budget))
    assert torch.equal(res.clean_mask, res.selected & (reference.argmax(1) == given))


def test_selection_takes_the_most_confident_rows():
    probs, given, _ = synthetic(101, 5, 0.2, seed=5)
    res = purify(probs, given, budget=0.29)
    assert int(res.selected.sum()) == 29  # floor(101 * 0.29), despite float rounding
    assert res.confidence[res.selected].min() >= res.confidence[~res.selected].max()
    assert not (res.clean_mask & ~res.selected).any()


# ----------------------------------------------------------------------------- (c)


@pytest.mark.parametrize("cost", ["neg_log_prob", "neg_prob"])
def test_batch_scope_equals_solving_each_batch_in_a_loop(cost):
    n = 16 * 5 + 7  # 5 full batches and a remainder
    probs, given, _ = synthetic(n, 6, 0.4, seed=6)
    budget = 0.5
    res = purify(
        probs,
        given,
        scope="batch",
        budget=budget,
        cost=cost,
        return_plan=True,
        generator=torch.Generator().manual_seed(2),
    )
    # the blocks are consecutive slices of randperm(N) drawn from the generator
    order = torch.randperm(n, generator=torch.Generator().manual_seed(2))
    plans = torch.empty(n, 6, dtype=probs.dtype)
    for index in order.split(16):
        block = probs[index]
        c = -torch.log(block + 1e-8) if cost == "neg_log_prob" else -F.log_softmax(block, 1)
        plan = pot_log(c, 0.01, numItermax=1000, stopThr=1e-6)
        plans[index] = plan
        assert torch.equal(res.pseudo_labels[index], plan.argmax(1))
        conf = plan.max(1).values / plan.sum(1)
        np.testing.assert_allclose(res.confidence[index], conf, rtol=1e-7)
        # the reference keeps the int(B * budget) most confident rows of each batch
        assert_top_rows(res.selected[index], conf, int(len(block) * budget))
    assert rel_err(res.plan, plans) < 1e-7
    assert int(res.selected[order[-7:]].sum()) == 3  # floor(7 * 0.5) within the last block
    # a given permutation cuts the blocks from it instead
    fixed = purify(probs, given, scope="batch", cost=cost, permutation=torch.arange(n))
    first = probs[:16]
    c = -torch.log(first + 1e-8) if cost == "neg_log_prob" else -F.log_softmax(first, 1)
    assert torch.equal(fixed.pseudo_labels[:16], pot_log(c, 0.01, stopThr=1e-6).argmax(1))


def test_batch_scope_permutation_errors():
    probs, given, _ = synthetic(20, 4, 0.2, seed=8)
    for bad in (torch.arange(19), torch.zeros(20, dtype=torch.long), torch.arange(20.0)):
        with pytest.raises(VispromptError, match="permutation must hold each sample index"):
            purify(probs, given, scope="batch", permutation=bad)
    with pytest.raises(VispromptError, match="not both"):
        purify(
            probs, given, scope="batch", permutation=torch.arange(20), generator=torch.Generator()
        )


def test_batch_scope_differs_from_global():
    probs, given, _ = synthetic(160, 10, 0.4, seed=7)
    g = purify(probs, given)
    b = purify(probs, given, scope="batch")
    # 16 samples spread over 10 classes with uniform marginals force unlike labels.
    assert not torch.equal(g.pseudo_labels, b.pseudo_labels)


# ----------------------------------------------------------------------------- (d)


def test_small_epsilon_plain_sinkhorn_underflows_and_ours_does_not():
    probs, given, true = synthetic(60, 6, 0.4, seed=1)
    n, k = probs.shape
    a = torch.full((n,), 1.0 / n, dtype=torch.float64)
    b = torch.full((k,), 1.0 / k, dtype=torch.float64)
    # NLPrompt's effective cost, exactly as its code builds it: -log_softmax(P).
    ref_cost = -F.log_softmax(probs, dim=1)
    with pytest.warns(UserWarning, match="numerical errors"):
        plain = ot.sinkhorn(a, b, ref_cost, 0.001, method="sinkhorn", numItermax=1000)
    assert float(plain.sum()) == 0.0  # all-zero plan: every pseudo-label becomes class 0
    assert plain.argmax(1).unique().tolist() == [0]

    res = purify(probs, given, reg=0.001, cost="neg_prob", return_plan=True)
    np.testing.assert_allclose(res.plan.sum(1).numpy(), np.full(n, 1.0 / n), rtol=1e-10)
    np.testing.assert_allclose(
        res.plan.numpy(),
        pot_log(-F.log_softmax(probs, 1), 0.001, numItermax=1000).numpy(),
        rtol=1e-7,
        atol=1e-14,
    )
    assert (res.pseudo_labels == probs.argmax(1)).float().mean() > 0.9

    res_log = purify(probs, given, reg=0.001, return_plan=True)
    assert torch.isfinite(res_log.plan).all()
    np.testing.assert_allclose(res_log.plan.sum(1).numpy(), np.full(n, 1.0 / n), rtol=1e-10)
    assert split_quality(res_log.clean_mask, given, true)["noisy_recall"] > 0.9


# ----------------------------------------------------------------------------- (e)


def test_neg_prob_is_nlprompt_released_cost_and_differs_from_neg_log_prob():
    probs, given, _ = synthetic(120, 8, 0.4, seed=8)
    n, k = probs.shape
    a = torch.full((n,), 1.0 / n, dtype=torch.float64)
    b = torch.full((k,), 1.0 / k, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the released trainer: plain Sinkhorn on -log_softmax(P), 1000 iterations
        reference = ot.sinkhorn(a, b, -F.log_softmax(probs, 1), 0.01, numItermax=1000)
    neg_prob = purify(probs, given, cost="neg_prob", return_plan=True)
    neg_log = purify(probs, given, cost="neg_log_prob", return_plan=True)
    np.testing.assert_allclose(neg_prob.plan.numpy(), reference.numpy(), rtol=1e-8, atol=1e-15)
    assert not torch.allclose(neg_prob.plan, neg_log.plan, rtol=1e-3)

    # -log_softmax(P) is -P plus a row constant: the converged plans are the same.
    converged = purify(probs, given, cost="neg_prob", reg=0.2, tol=1e-12, return_plan=True)
    assert converged.marginal_error < 1e-12
    np.testing.assert_allclose(
        converged.plan.numpy(),
        pot_log(-probs, 0.2, numItermax=5000, stopThr=1e-12).numpy(),
        rtol=1e-6,
        atol=1e-15,
    )

    def plan_entropy(plan: torch.Tensor) -> float:
        return float(-(plan * torch.log(plan.clamp_min(1e-300))).sum())

    # -P lies in [-1, 0] while -log P is unbounded: at the same epsilon the
    # neg_prob plan is the smoother one.
    assert plan_entropy(neg_prob.plan) > plan_entropy(neg_log.plan)


# ----------------------------------------------------------------------------- (f)


def test_argument_errors():
    probs, given, _ = synthetic(20, 4, 0.2, seed=9)
    for budget in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(VispromptError, match=r"budget must be in \(0, 1\]"):
            purify(probs, given, budget=budget)
    for reg in (0.0, -0.01, float("nan"), float("inf")):
        with pytest.raises(VispromptError, match="reg .* must be a positive number"):
            purify(probs, given, reg=reg)
    with pytest.raises(VispromptError, match="reg"):
        sinkhorn_log(-torch.log(probs), 0.0)
    with pytest.raises(VispromptError, match="unknown OT cost"):
        purify(probs, given, cost="log")
    with pytest.raises(VispromptError, match="unknown OT scope"):
        purify(probs, given, scope="local")
    with pytest.raises(VispromptError, match="batch_size"):
        purify(probs, given, scope="batch", batch_size=0)


def test_input_errors():
    probs, given, _ = synthetic(20, 4, 0.2, seed=9)
    with pytest.raises(VispromptError, match="labels has shape"):
        purify(probs, given[:19])
    with pytest.raises(VispromptError, match="labels has shape"):
        purify(probs, given.reshape(4, 5))
    with pytest.raises(VispromptError, match=r"lie in \[0, 3\]"):
        purify(probs, torch.where(given == 0, 4, given))
    with pytest.raises(VispromptError, match=r"lie in \[0, 3\]"):
        purify(probs, torch.where(given == 0, -1, given))
    with pytest.raises(VispromptError, match="integer"):
        purify(probs, given.double())
    with pytest.raises(VispromptError, match="not logits"):
        purify(torch.log(probs), given)  # logits / log-probabilities
    with pytest.raises(VispromptError, match="sum to 1"):
        purify(probs * 2, given)
    with pytest.raises(VispromptError, match="floating"):
        purify(probs[0], given)
    with pytest.raises(VispromptError, match="two classes"):
        purify(torch.ones(3, 1), torch.zeros(3, dtype=torch.long))


# ----------------------------------------------------------------------------- (g)


def test_budget_schedules():
    assert budget_at(0, 50) == 1.0
    assert budget_at(3, 50, "none", curriculum_epochs=10) == 1.0
    # linear: start + (1 - start) t / T, then 1 from t = T on.
    assert budget_at(0, 50, "linear", start=0.3, curriculum_epochs=10) == pytest.approx(0.3)
    assert budget_at(5, 50, "linear", start=0.3, curriculum_epochs=10) == pytest.approx(0.65)
    assert budget_at(10, 50, "linear", start=0.3, curriculum_epochs=10) == 1.0
    assert budget_at(49, 50, "linear", start=0.3) == pytest.approx(0.3 + 0.7 * 49 / 50)
    # exp: start + (1 - start)(1 - exp(-4 t / T)).
    expected = 0.3 + 0.7 * (1 - math.exp(-4 * 5 / 20))
    assert budget_at(5, 100, "exp", start=0.3, curriculum_epochs=20) == pytest.approx(expected)
    assert budget_at(20, 100, "exp", start=0.3, curriculum_epochs=20) == 1.0
    assert budget_at(0, 100, "exp", curriculum_epochs=0) == 1.0
    values = [budget_at(t, 30, "exp") for t in range(30)]
    assert all(0.3 <= a < b <= 1.0 for a, b in zip(values, values[1:], strict=False))


def test_budget_schedule_errors():
    with pytest.raises(VispromptError, match="unknown budget schedule"):
        budget_at(0, 10, "cosine")
    with pytest.raises(VispromptError, match="start"):
        budget_at(0, 10, "linear", start=0.0)
    with pytest.raises(VispromptError, match="epoch"):
        budget_at(-1, 10, "linear")
    with pytest.raises(VispromptError, match="curriculum_epochs"):
        budget_at(0, 10, "linear", curriculum_epochs=-2)


# ----------------------------------------------------------------------------- metrics


def test_split_quality_counts():
    given = torch.tensor([0, 1, 2, 0, 1, 2])
    true = torch.tensor([0, 1, 0, 0, 2, 2])  # samples 2 and 4 are mislabelled
    clean = torch.tensor([True, True, False, False, True, True])
    pseudo = torch.tensor([0, 1, 0, 1, 2, 2])
    q = split_quality(clean, given, true, pseudo)
    assert q["n"] == 6 and q["clean_size"] == 4
    assert q["noise_rate"] == pytest.approx(2 / 6)
    assert q["precision"] == pytest.approx(3 / 4)  # sample 4 is marked clean wrongly
    assert q["recall"] == pytest.approx(3 / 4)  # sample 3 is correct but marked noisy
    assert q["noisy_precision"] == pytest.approx(1 / 2)
    assert q["noisy_recall"] == pytest.approx(1 / 2)
    assert q["verdict_accuracy"] == pytest.approx(4 / 6)
    assert q["pseudo_label_accuracy"] == pytest.approx(5 / 6)


def test_split_quality_empty_sets_are_nan_without_warnings():
    given = np.array([0, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = split_quality(np.zeros(3, dtype=bool), given, given)  # nothing clean, no noise
    assert math.isnan(q["precision"]) and math.isnan(q["noisy_recall"])
    assert q["recall"] == 0.0 and q["noisy_precision"] == 0.0
    assert "pseudo_label_accuracy" not in q
    with pytest.raises(VispromptError, match="same length"):
        split_quality(np.zeros(2, dtype=bool), given, given)


# ----------------------------------------------------------- precision, stopping, devices


def test_float32_gives_the_same_split_as_float64():
    probs, given, _ = synthetic(3000, 20, 0.4, seed=10)
    r64 = purify(probs, given)
    r32 = purify(probs.float(), given)
    assert r32.confidence.dtype == torch.float32
    assert int((r32.clean_mask != r64.clean_mask).sum()) <= 1
    assert int((r32.pseudo_labels != r64.pseudo_labels).sum()) <= 2


def test_label_patience_stops_early_and_keeps_the_split_when_long_enough():
    probs, given, _ = synthetic(400, 10, 0.4, seed=11)
    full = purify(probs, given, reg=0.03, tol=0.0)
    assert full.num_iter == 1000
    patient = purify(probs, given, reg=0.03, tol=0.0, label_patience=100)
    assert patient.num_iter < 1000
    assert torch.equal(patient.clean_mask, full.clean_mask)


def test_numpy_input_no_grad_and_device():
    probs, given, _ = synthetic(50, 5, 0.2, seed=12, dtype=torch.float32)
    leaf = probs.clone().requires_grad_(True)
    res = purify(leaf, given)
    assert not res.confidence.requires_grad
    res_np = purify(probs.numpy(), given.numpy())
    assert torch.equal(res.pseudo_labels, res_np.pseudo_labels)
    assert res.pseudo_labels.device == probs.device
    half = purify(probs.bfloat16(), given)  # e.g. autocast outputs: solved in float32
    assert half.confidence.dtype == torch.float32
    assert (half.pseudo_labels == res.pseudo_labels).float().mean() > 0.9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    probs, given, _ = synthetic(500, 10, 0.4, seed=13)
    cpu = purify(probs, given, return_plan=True)
    gpu = purify(probs.cuda(), given.cuda(), return_plan=True)
    assert gpu.pseudo_labels.is_cuda and gpu.clean_mask.is_cuda
    assert torch.equal(gpu.clean_mask.cpu(), cpu.clean_mask)
    torch.testing.assert_close(gpu.plan.cpu(), cpu.plan, rtol=1e-6, atol=1e-12)
    b_cpu = purify(probs, given, scope="batch")
    b_gpu = purify(probs.cuda(), given.cuda(), scope="batch")
    assert torch.equal(b_gpu.clean_mask.cpu(), b_cpu.clean_mask)


def test_overflow_fallback_keeps_the_plan_finite_and_correct(monkeypatch):
    # With absorption disabled the float32 scalings overflow; the solver must then
    # redo the iteration exactly in the log domain instead of returning inf/NaN.
    module = importlib.import_module("visprompt.robust.sinkhorn")
    monkeypatch.setattr(module, "_ABSORB_LOW", 0.0)
    monkeypatch.setattr(module, "_ABSORB_HIGH", float("inf"))
    calls = []
    log_step = module._log_step
    monkeypatch.setattr(module, "_log_step", lambda *a, **kw: calls.append(1) or log_step(*a, **kw))
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(60, 6, generator=g, dtype=torch.float64) * 5.0
    logits[:, -1] -= 40.0  # a class that no sample likes
    probs = torch.softmax(logits, 1)
    cost = -torch.log(probs + 1e-8)
    got = sinkhorn_log(cost.float(), 0.001)
    assert len(calls) > 1  # the first iteration plus at least one fallback
    assert torch.isfinite(got.plan).all()
    np.testing.assert_allclose(got.plan.sum(1).numpy(), np.full(60, 1 / 60), rtol=1e-4)
    expected = pot_log(cost, 0.001, numItermax=1000, stopThr=1e-6)
    assert torch.equal(got.plan.argmax(1), expected.argmax(1))
