"""The PURIFIERS registry: every purifier returns a well-formed Split (a new one is covered
the moment it is registered); ot and gmm agree with direct computations; methods declare
the purifiers they support."""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest
import torch
from scipy.special import xlogy

from visprompt.config import load_run_config
from visprompt.errors import VispromptError
from visprompt.experiments import store
from visprompt.methods import METHOD_REGISTRY
from visprompt.robust import quality
from visprompt.robust.gmm import fit_two_gaussians
from visprompt.robust.ot_purify import purify
from visprompt.robust.purifier import (
    PURIFIERS,
    PurifierChoice,
    build_purifier,
    purifier_for,
    supported_purifiers,
)
from visprompt.robust.purifiers.gmm import GMMOptions, GMMPurifier
from visprompt.robust.purifiers.ot import OTOptions, OTPurifier
from visprompt.robust.split import CLEAN, NOISY, Split

N, K = 120, 6


def noisy_problem(seed: int = 0, n: int = N, k: int = K, rate: float = 0.4):
    """Probabilities peaked on the true class and given labels with ``rate`` flipped."""
    g = torch.Generator().manual_seed(seed)
    true = torch.randint(0, k, (n,), generator=g)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64)
    logits[torch.arange(n), true] += 2.5
    given = true.clone()
    flip = torch.randperm(n, generator=g)[: int(rate * n)]
    given[flip] = (true[flip] + torch.randint(1, k, (len(flip),), generator=g)) % k
    return logits.softmax(dim=1), given, true


def test_registry_lists_the_shipped_purifiers():
    assert {"ot", "gmm", "none"} <= set(PURIFIERS.names())
    assert PURIFIERS.get("ot") is OTPurifier and PURIFIERS.get("gmm") is GMMPurifier
    with pytest.raises(VispromptError, match="unknown purifier 'nope'; choose one of: .*gmm"):
        PURIFIERS.get("nope")


@pytest.mark.parametrize("name", PURIFIERS.names())
def test_every_purifier_returns_a_well_formed_split(name):
    check_split_contract(name)


TOY_PURIFIER = """
import torch
from visprompt.options import Section
from visprompt.robust.purifier import Purifier, register_purifier
from visprompt.robust.split import Split


class ToyOptions(Section):
    toy_cut: float = 0.5


@register_purifier("toy-confidence")
class ToyPurifier(Purifier):
    options_model = ToyOptions
    description = "given label's probability above toy_cut"

    def split(self, probs, labels, *, epoch, num_epochs, generator=None):
        p_given = probs.gather(1, labels.long().view(-1, 1)).squeeze(1).float()
        return Split(clean=p_given > self.options.toy_cut, scores=p_given)
"""


def test_a_purifier_in_one_new_file_is_registered_built_and_contract_checked(tmp_path):
    import importlib.util

    path = tmp_path / "toy_purifier.py"
    path.write_text(TOY_PURIFIER)
    with PURIFIERS.scoped():
        spec = importlib.util.spec_from_file_location("toy_purifier", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert "toy-confidence" in PURIFIERS.names()
        check_split_contract("toy-confidence")
        # its options come from a method config that mixes them in, by key
        options = module.ToyOptions(toy_cut=0.9)
        assert build_purifier("toy-confidence", options).options.toy_cut == 0.9
    assert "toy-confidence" not in PURIFIERS.names()


def check_split_contract(name: str) -> None:
    """What every purifier must do, on a small noisy problem."""
    probs, given, true = noisy_problem()
    purifier = build_purifier(name)
    assert purifier.name == name and purifier.description
    split = purifier.split(probs, given, epoch=2, num_epochs=5, generator=torch.Generator())
    assert isinstance(split, Split) and split.size == N
    assert split.clean.dtype == torch.bool and split.clean.shape == (N,)
    assert split.scores.dtype.is_floating_point and bool(torch.isfinite(split.scores).all())
    if split.pseudo_labels is not None:
        assert split.pseudo_labels.dtype == torch.long
        assert int(split.pseudo_labels.min()) >= 0 and int(split.pseudo_labels.max()) < K
    assert torch.equal(split.noisy, ~split.clean)
    assert torch.equal(split.group(), torch.where(split.clean, CLEAN, NOISY))
    if not purifier.judges_labels:
        assert bool(split.clean.all())
    # Higher scores mean "more likely clean": clean samples score higher on average.
    if purifier.judges_labels and bool(split.clean.any()) and bool(split.noisy.any()):
        assert split.scores[split.clean].mean() > split.scores[split.noisy].mean()

    # The logged numbers: the split's stats, then purify_* keys of the shared columns.
    logged = purifier.metrics(split, given, true)
    purify_keys = [k for k in logged if k.startswith(quality.PURIFY_PREFIX)]
    assert set(logged) - set(purify_keys) == set(split.stats)
    assert all(k.removeprefix(quality.PURIFY_PREFIX) in quality.PURIFY_COLUMNS for k in purify_keys)
    assert logged["purify_clean_fraction"] == int(split.clean.sum()) / N
    q = split.quality(given, true)
    assert logged["purify_precision"] == q["precision"] and logged["purify_recall"] == q["recall"]
    assert purifier.metrics(split, given, None) == {
        **split.stats,
        "purify_clean_fraction": logged["purify_clean_fraction"],
    }


@pytest.mark.parametrize("name", PURIFIERS.names())
def test_state_round_trip_continues_like_the_original(name):
    """A purifier rebuilt from its state_dict splits the next epoch exactly as the original."""
    probs, given, _ = noisy_problem(seed=3)
    first = build_purifier(name)
    for epoch in range(3):
        first.split(probs.roll(epoch, 1), given, epoch=epoch, num_epochs=6)
    second = build_purifier(name)
    second.load_state_dict(first.state_dict())
    a = first.split(probs, given, epoch=3, num_epochs=6, generator=torch.Generator().manual_seed(7))
    b = second.split(
        probs, given, epoch=3, num_epochs=6, generator=torch.Generator().manual_seed(7)
    )
    assert torch.equal(a.clean, b.clean) and torch.equal(a.scores, b.scores)
    assert a.stats == b.stats


def test_ot_purifier_is_purify_with_the_options_and_scores_the_given_label_share():
    probs, given, _ = noisy_problem(seed=1)
    options = OTOptions(ot_scope="batch", ot_batch_size=16, budget=0.8)
    purifier = OTPurifier(options)
    split = purifier.split(
        probs, given, epoch=0, num_epochs=3, generator=torch.Generator().manual_seed(4)
    )
    direct = purify(
        probs,
        given,
        scope="batch",
        batch_size=16,
        budget=0.8,
        return_plan=True,
        generator=torch.Generator().manual_seed(4),
    )
    assert torch.equal(split.clean, direct.clean_mask)
    assert torch.equal(split.pseudo_labels, direct.pseudo_labels)
    share = direct.plan[torch.arange(N), given] / direct.plan.sum(dim=1)
    torch.testing.assert_close(split.scores, share, rtol=1e-12, atol=0)
    # the curriculum scales the budget by the schedule
    scheduled = OTPurifier(OTOptions(budget=0.5, budget_schedule="linear", budget_start=0.2))
    assert scheduled.budget(0, 10) == pytest.approx(0.5 * 0.2)
    assert scheduled.budget(10, 10) == 0.5


def old_joapr_partition(history, probs, labels, threshold, seed, options):
    """JoAPR's partition as its method computed it before the purifier existed,
    restated from the paper's formulas (numpy for the loss and the rule)."""
    p = probs.double().numpy()
    y = labels.numpy()
    ce = -np.log(np.maximum(p[np.arange(len(y)), y], np.finfo(np.float64).tiny))
    loss = ce - xlogy(p, p).sum(axis=1)
    span = loss.max() - loss.min()
    loss = (loss - loss.min()) / span if span > 0 else np.zeros_like(loss)
    history = [*history, loss][-options.loss_history :]
    avg = np.mean(history, axis=0)
    mixture = fit_two_gaussians(
        torch.from_numpy(avg),
        seed,
        max_iter=options.gmm_max_iter,
        tol=options.gmm_tol,
        reg_covar=options.gmm_reg_covar,
    )
    # clean posterior: the lower-mean component's share of the density
    m, v, w = (np.asarray(x) for x in (mixture.means, mixture.variances, mixture.weights))
    dens = w * np.exp(-0.5 * (avg[:, None] - m) ** 2 / v) / np.sqrt(2 * np.pi * v)
    post = dens[:, 0] / dens.sum(axis=1)
    new_threshold = float(np.mean(post <= threshold))
    clean = (avg < mixture.crossing_point()) | (post > new_threshold)
    return history, new_threshold, clean, post


def test_gmm_purifier_gives_the_old_in_method_partition():
    options = GMMOptions(loss_history=2)
    purifier = GMMPurifier(options)
    history, threshold = [], options.initial_threshold
    for epoch in range(4):  # history 2: the third call drops the first loss vector
        probs, given, true = noisy_problem(seed=10 + epoch, n=80)
        gen = torch.Generator().manual_seed(epoch)
        split = purifier.split(probs, given, epoch=epoch, num_epochs=4, generator=gen)
        seed = int(
            torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(epoch))
        )
        history, threshold, clean, post = old_joapr_partition(
            history, probs, given, threshold, seed, options
        )
        assert split.clean.tolist() == clean.tolist()
        np.testing.assert_allclose(split.scores.numpy(), post, rtol=1e-9, atol=1e-12)
        assert split.stats["joapr_threshold"] == threshold == purifier.threshold
        assert math.isfinite(split.stats["joapr_crossing"])
        assert split.pseudo_labels is None
        assert purifier.partitions == epoch + 1 and len(purifier.history) == min(epoch + 1, 2)
    # JoAPR's log leaves out the ratio of an empty side instead of logging NaN
    everything_clean = Split(clean=torch.ones(80, dtype=torch.bool), scores=torch.ones(80))
    logged = purifier.metrics(everything_clean, given, true)
    assert "purify_noisy_precision" not in logged and "purify_precision" in logged
    assert math.isnan(OTPurifier().metrics(everything_clean, given, true)["purify_noisy_precision"])
    with pytest.raises(ValueError, match="lacks"):
        purifier.load_state_dict({"threshold": 0.5})


@pytest.mark.parametrize("method", METHOD_REGISTRY.names())
def test_methods_declare_registered_purifiers(method):
    config_cls = METHOD_REGISTRY.get(method).config_cls
    if not issubclass(config_cls, PurifierChoice):
        return  # no purifier: label-issues judges by the predictions
    allowed = supported_purifiers(config_cls)
    assert allowed and all(name in PURIFIERS for name in allowed)
    assert typing.get_origin(config_cls.model_fields["purify"].annotation) is typing.Literal
    default = config_cls.model_fields["purify"].default
    assert default in allowed
    # each allowed purifier builds from the method's options alone
    for name in allowed:
        cfg = config_cls(purify=name)
        assert purifier_for(cfg).name == name


def test_a_bad_purifier_for_a_method_is_a_one_line_error_naming_the_allowed():
    base = ["backbone.name=tiny-vit", "data.dataset=folder", "data.root=/nowhere"]
    with pytest.raises(VispromptError, match="method joapr supports the purifier.* gmm, got 'ot'"):
        load_run_config(None, [*base, "method.name=joapr", "method.purify=ot"])
    with pytest.raises(VispromptError, match="supports the purifier.* ot, none, got 'gmm'") as e:
        load_run_config(None, [*base, "method.name=nlprompt", "method.purify=gmm"])
    assert "\n" not in str(e.value)
    # JoAPR's default purifier stays out of its saved config (its run ids predate the key)
    cfg = load_run_config(None, [*base, "method.name=joapr"])
    assert cfg.method.purify == "gmm" and "purify" not in cfg.to_dict()["method"]
    assert cfg.to_dict()["method"]["loss_history"] == 5


def test_split_checks_its_shapes_and_the_store_shares_the_metric_names():
    with pytest.raises(VispromptError, match="bool"):
        Split(clean=torch.ones(3), scores=torch.ones(3))
    with pytest.raises(VispromptError, match="scores"):
        Split(clean=torch.ones(3, dtype=torch.bool), scores=torch.ones(4))
    with pytest.raises(VispromptError, match="pseudo_labels"):
        Split(
            clean=torch.ones(3, dtype=torch.bool),
            scores=torch.ones(3),
            pseudo_labels=torch.zeros(3, dtype=torch.int32),
        )
    assert store.PURIFY_COLUMNS is quality.PURIFY_COLUMNS
