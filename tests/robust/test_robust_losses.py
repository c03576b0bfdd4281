"""Each loss against a direct numeric computation of its formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from vp_testing import rel_err

from visprompt.errors import VispromptError
from visprompt.robust import losses as L


def _data(n: int = 12, k: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 3.0
    target = torch.randint(0, k, (n,), generator=g)
    return logits, target


def _np_softmax(logits: torch.Tensor) -> np.ndarray:
    z = logits.detach().numpy()
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _p_y(logits: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    return _np_softmax(logits)[np.arange(len(target)), target.numpy()]


def _check_reductions(fn, expected: np.ndarray, *args, **kwargs) -> None:
    per = fn(*args, reduction="none", **kwargs)
    assert per.shape == (len(expected),)
    np.testing.assert_allclose(per.detach().numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fn(*args, reduction="sum", **kwargs).item(), expected.sum(), 1e-10)
    np.testing.assert_allclose(fn(*args, **kwargs).item(), expected.mean(), rtol=1e-10)


def test_cross_entropy_is_minus_log_p_y():
    logits, target = _data()
    _check_reductions(L.cross_entropy, -np.log(_p_y(logits, target)), logits, target)


@pytest.mark.parametrize("q", [0.1, 0.5, 0.7, 1.0])
def test_gce_matches_formula(q):
    logits, target = _data()
    expected = (1.0 - _p_y(logits, target) ** q) / q
    _check_reductions(L.gce_loss, expected, logits, target, q=q)


def test_gce_q1_equals_mae_and_small_q_approaches_ce():
    logits, target = _data()
    mae = L.mae_loss(logits, target, reduction="none")
    np.testing.assert_allclose(L.gce_loss(logits, target, q=1.0, reduction="none"), mae, 1e-12)
    ce = L.cross_entropy(logits, target, reduction="none")
    gce = L.gce_loss(logits, target, q=1e-6, reduction="none")
    np.testing.assert_allclose(gce.numpy(), ce.numpy(), rtol=1e-4)


def test_mae_is_one_minus_p_y():
    logits, target = _data()
    _check_reductions(L.mae_loss, 1.0 - _p_y(logits, target), logits, target)


def test_gce_gradient_finite_when_target_probability_underflows():
    logits = torch.tensor([[0.0, 900.0, -50.0]], dtype=torch.float32, requires_grad=True)
    loss = L.gce_loss(logits, torch.tensor([0]), q=0.7)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    assert loss.item() == pytest.approx(1.0 / 0.7)


@pytest.mark.parametrize(("alpha", "beta", "a"), [(0.5, 1.0, -4.0), (1.0, 0.3, -2.0)])
def test_sce_matches_alpha_ce_plus_beta_rce(alpha, beta, a):
    logits, target = _data()
    p = _np_softmax(logits)
    onehot = np.eye(p.shape[1])[target.numpy()]
    log_q = np.where(onehot > 0, 0.0, a)  # log of the one-hot target with log 0 := A
    rce = -(p * log_q).sum(axis=1)
    ce = -np.log(p[np.arange(len(target)), target.numpy()])
    expected = alpha * ce + beta * rce
    _check_reductions(L.sce_loss, expected, logits, target, alpha=alpha, beta=beta, log_clamp=a)


def test_sce_reproduces_visprompt_smoothed_target_form():
    # VisPrompt's class smooths the one-hot target with eps = 1e-6 instead of clamping.
    logits, target = _data(k=7)
    k, eps = 7, 1e-6
    p = _np_softmax(logits)
    q = np.eye(k)[target.numpy()] * (1 - eps) + eps / k
    ce = -np.log(p[np.arange(len(target)), target.numpy()])
    expected = 0.5 * ce - (p * np.log(q)).sum(axis=1)
    got = L.sce_loss(logits, target, log_clamp=math.log(eps / k), reduction="none")
    assert rel_err(got, expected) <= 1e-6


def test_soft_cross_entropy_matches_formula_and_one_hot_is_ce():
    logits, target = _data()
    g = torch.Generator().manual_seed(3)
    t = torch.softmax(torch.randn(logits.shape, generator=g, dtype=torch.float64), 1)
    expected = -(t.numpy() * np.log(_np_softmax(logits))).sum(axis=1)
    _check_reductions(L.soft_cross_entropy, expected, logits, t)
    onehot = torch.nn.functional.one_hot(target, logits.shape[1]).double()
    np.testing.assert_allclose(
        L.soft_cross_entropy(logits, onehot, reduction="none"),
        L.cross_entropy(logits, target, reduction="none"),
        rtol=1e-12,
    )


def test_entropy_and_confidence_penalty():
    logits, _ = _data()
    p = _np_softmax(logits)
    h = -(p * np.log(p)).sum(axis=1)
    np.testing.assert_allclose(L.entropy(logits).numpy(), h, rtol=1e-10)
    assert L.entropy(torch.zeros(2, 8)).tolist() == pytest.approx([math.log(8)] * 2)
    # A one-hot-like row has entropy 0, not NaN, even though some p underflow to 0.
    assert L.entropy(torch.tensor([[0.0, 2000.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(L.confidence_penalty(logits).item(), -h.mean(), rtol=1e-10)
    np.testing.assert_allclose(
        L.confidence_penalty(logits, reduction="sum").item(), -h.sum(), rtol=1e-10
    )


def test_losses_backpropagate():
    logits, target = _data()
    logits.requires_grad_(True)
    total = (
        L.cross_entropy(logits, target)
        + L.gce_loss(logits, target)
        + L.mae_loss(logits, target)
        + L.sce_loss(logits, target)
        + L.confidence_penalty(logits)
    )
    total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("q", [0.0, -0.1, 1.5, float("nan")])
def test_gce_rejects_q_outside_unit_interval(q):
    logits, target = _data()
    with pytest.raises(VispromptError, match=r"q must be in \(0, 1\]"):
        L.gce_loss(logits, target, q=q)


def test_bad_inputs_raise_one_line_errors():
    logits, target = _data(n=4, k=3)
    with pytest.raises(VispromptError, match="reduction"):
        L.cross_entropy(logits, target, reduction="avg")
    with pytest.raises(VispromptError, match="does not match"):
        L.mae_loss(logits, target[:3])
    with pytest.raises(VispromptError, match=r"lie in \[0, 2\]"):
        L.sce_loss(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(VispromptError, match="integer"):
        L.gce_loss(logits, target.double())
    with pytest.raises(VispromptError, match="2-D"):
        L.entropy(logits[0])
    with pytest.raises(VispromptError, match="negative"):
        L.sce_loss(logits, target, log_clamp=0.0)
    with pytest.raises(VispromptError, match="soft targets"):
        L.soft_cross_entropy(logits, torch.ones(4, 2))
