"""Each epoch's batches drop the last partial batch where the references' loaders do.

Facts restated here, from reading the released code:

* Dassl (KaiyangZhou/Dassl.pytorch 27eb2f4, ``dassl/data/data_manager.py``,
  vendored by NLPrompt, JoAPR, PTNL and CoOp's forks): a train loader is a torch
  ``DataLoader`` with ``drop_last = len(data_source) >= batch_size``, decided
  when the loader is built.
* NLPrompt (qunovo/NLPrompt 6266a82, ``trainers/nlprompt.py``): the clean and the
  noisy loader of an epoch are deep copies of the full train loader with the
  other part's samples deleted, so both keep the full set's ``drop_last`` (a part
  smaller than one batch yields no batch at all).
* JoAPR (yunncheng/JoAPR a1f0b1b, ``datasets/data_manager.py``): one Dassl
  loader per part, each with the rule on its own size; an epoch takes as many
  steps as the longer loader, restarting the shorter one when it runs out.
"""

from __future__ import annotations

import pytest
import torch
from vp_testing import run_overrides

from visprompt.config import load_run_config
from visprompt.engine.run import train_run
from visprompt.engine.run_folder import read_metrics
from visprompt.methods import METHOD_REGISTRY
from visprompt.methods.base import EpochContext, PromptMethod
from visprompt.methods.joapr import paired_batches
from visprompt.methods.nlprompt import NLPromptConfig
from visprompt.methods.ot_training import CLEAN, NOISY, ot_epoch_plan


def dataloader_sizes(num_samples: int, batch_size: int, drop_last: bool) -> list[int]:
    """Batch sizes a torch DataLoader yields over ``num_samples`` samples."""
    loader = torch.utils.data.DataLoader(range(num_samples), batch_size, drop_last=drop_last)
    return [len(batch) for batch in loader]


def context(labels, batch_size, probs=None, drop_last=True):
    return EpochContext(
        epoch=0,
        num_epochs=1,
        batch_size=batch_size,
        labels=labels,
        true_labels=None,
        generator=torch.Generator().manual_seed(0),
        predict_train=lambda: probs,
        drop_last=drop_last,
    )


#: Methods whose reference loader keeps the last partial batch: Tip-Adapter's
#: ``build_data_loader`` (Tip-Adapter d0e2d6f, datasets/utils.py) passes drop_last=False.
KEEP_LAST = {"tip-adapter-f"}


@pytest.mark.parametrize("method", [m for m in METHOD_REGISTRY.names() if m != "zeroshot"])
def test_reference_methods_drop_by_default(method):
    cfg = load_run_config(
        None,
        [f"method.name={method}", "backbone.name=tiny-vit", "data.dataset=folder", "data.root=/x"],
    )
    assert cfg.optim.drop_last is (method not in KEEP_LAST)


@pytest.mark.parametrize(("n", "batch"), [(30, 8), (32, 8), (5, 8), (8, 8)])
@pytest.mark.parametrize("enabled", [True, False])
def test_one_loader_follows_dassl(n, batch, enabled):
    plan = PromptMethod.start_epoch(None, context(torch.arange(n) % 3, batch, drop_last=enabled))
    expected = dataloader_sizes(n, batch, drop_last=enabled and n >= batch)
    assert [len(b) for b in plan.batches] == expected
    assert len(torch.cat(plan.batches).unique()) == sum(expected)


def nlprompt_problem(n: int, noisy: int, k: int = 4):
    """Probabilities under which exactly the first ``noisy`` samples are noisy."""
    labels = torch.arange(n) % k
    probs = torch.full((n, k), 0.05)
    probs[torch.arange(n), labels] = 0.85
    probs[:noisy] = 0.05
    probs[torch.arange(noisy), (labels[:noisy] + 1) % k] = 0.85
    return labels, probs


@pytest.mark.parametrize(("n", "noisy"), [(40, 12), (40, 5), (44, 14)])
def test_nlprompt_parts_keep_the_full_sets_drop_last(n, noisy):
    labels, probs = nlprompt_problem(n, noisy)
    plan = ot_epoch_plan(NLPromptConfig(), context(labels, 8, probs))
    assert int(plan.group.eq(NOISY).sum()) == noisy
    sizes = {g: [len(b) for b in plan.batches if plan.group[b[0]] == g] for g in (CLEAN, NOISY)}
    assert sizes[CLEAN] == dataloader_sizes(n - noisy, 8, drop_last=True)
    assert sizes[NOISY] == dataloader_sizes(noisy, 8, drop_last=True)  # 5 noisy: no batch


def test_nlprompt_on_a_set_smaller_than_a_batch_keeps_everything():
    labels, probs = nlprompt_problem(6, 2)
    plan = ot_epoch_plan(NLPromptConfig(), context(labels, 8, probs))
    assert sorted(torch.cat(plan.batches).tolist()) == list(range(6))


@pytest.mark.parametrize(("clean", "noisy"), [(20, 5), (5, 20), (17, 17), (3, 2)])
def test_joapr_parts_follow_dassl_by_their_own_size(clean, noisy):
    x, u = torch.arange(clean), torch.arange(clean, clean + noisy)
    steps = paired_batches(x, u, 8, torch.Generator().manual_seed(0), drop_last=True)
    xs = dataloader_sizes(clean, 8, clean >= 8)
    us = dataloader_sizes(noisy, 8, noisy >= 8)
    assert len(steps) == max(len(xs), len(us))
    for s, step in enumerate(steps):
        n_clean = int((step < clean).sum())
        assert n_clean == xs[s % len(xs)] and len(step) - n_clean == us[s % len(us)]


def test_a_run_trains_on_what_the_loader_keeps(colour_dataset, tmp_path):
    # 32 training images (4 classes x 8 shots) in batches of 12: 24 kept, or all 32.
    for drop, seen in (("true", 24), ("false", 32)):
        over = run_overrides(
            colour_dataset, "coop", **{"optim.epochs": 1, "optim.batch_size": 12}
        ) + [f"optim.drop_last={drop}"]
        train_run(load_run_config(None, over), tmp_path / drop, progress=False, log=lambda m: None)
        assert read_metrics(tmp_path / drop)[0]["train_samples"] == seen
