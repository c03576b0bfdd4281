"""Each loss against a direct numeric computation of its formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

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
    # a label out of range: torch's own CPU index error, translated (no per-step sync)
    for loss in (L.cross_entropy, L.gce_loss, L.mae_loss):
        for bad in (torch.tensor([0, 1, 2, 3]), torch.tensor([0, -1, 2, 1])):
            with pytest.raises(VispromptError, match=r"lie in \[0, 2\]"):
                loss(logits, bad)
    with pytest.raises(VispromptError, match=r"lie in \[0, 2\], got \[0, 3\]"):
        L.check_labels(torch.tensor([0, 1, 2, 3]), 3)
    L.check_labels(target, 3)  # in range: no error
    with pytest.raises(VispromptError, match="integer"):
        L.gce_loss(logits, target.double())
    with pytest.raises(VispromptError, match="2-D"):
        L.entropy(logits[0])
    with pytest.raises(VispromptError, match="soft targets"):
        L.soft_cross_entropy(logits, torch.ones(4, 2))


def test_losses_do_not_read_labels_back_to_the_host(monkeypatch):
    # The training step calls these every batch: no .item()/int() of the labels
    # (a device synchronisation on a GPU). Tensor.__int__ and .item are the ways
    # a value reaches the host, so the losses must run with both disabled.
    logits, target = _data()

    def refuse(*args, **kwargs):
        raise AssertionError("a loss read a tensor value back to the host")

    monkeypatch.setattr(torch.Tensor, "__int__", refuse)
    monkeypatch.setattr(torch.Tensor, "item", refuse)
    for loss in (L.cross_entropy, L.gce_loss, L.mae_loss):
        loss(logits, target)
        loss(logits, target, reduction="none")
    L.soft_cross_entropy(logits, torch.softmax(logits, 1))
    L.confidence_penalty(logits)
