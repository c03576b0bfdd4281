"""The run's validation split: lazy (a run that never reads it extracts nothing), and its
labels carry the run's noise on a seed stream of their own."""

from __future__ import annotations

import numpy as np
import torch
from vp_testing import run_overrides

from visprompt.config import load_run_config
from visprompt.data.noise import inject_noise
from visprompt.data.validation_split import val_noise_seed
from visprompt.engine.assembly import prepare_run

QUIET = {"progress": False, "log": lambda message: None}


def test_val_is_lazy_and_read_through_the_cache(colour_dataset):
    cfg = load_run_config(None, run_overrides(colour_dataset, "coop", **{"data.shots": 4}))
    prep = prepare_run(cfg, **QUIET)
    val = prep.validation
    before = (prep.cache.hits, prep.cache.misses)
    assert not val.loaded and len(val) > 0  # nothing read by a method that does not ask
    feats = val.features
    assert val.loaded and prep.cache.misses == before[1] + 1
    assert feats.image.shape == (len(val), prep.train_features.image.shape[1])
    # the same images' features, as the cache gives them to anyone else
    again = prep.cache.get(list(val.samples), 0)
    assert prep.cache.hits == before[0] + 1
    assert torch.equal(again.image, feats.image)


def test_val_labels_carry_the_runs_noise_on_their_own_seed_stream(colour_dataset):
    extra = {"data.shots": 4, "noise.type": "sym", "noise.rate": 0.5, "data.seed": 3}
    prep = prepare_run(
        load_run_config(None, run_overrides(colour_dataset, "coop", **extra)), **QUIET
    )
    val = prep.validation
    true = [s.label for s in val.samples]
    expected = inject_noise(true, 4, "sym", 0.5, seed=val_noise_seed(3))
    assert val.labels().tolist() == expected.noisy.tolist()
    assert val.true_labels().tolist() == true
    assert int((val.labels() != val.true_labels()).sum()) == len(true) // 2
    assert val.labels(clean=True).tolist() == true
    # a stream apart from the training noise's seed (3 itself)
    assert val_noise_seed(3) != 3 and val_noise_seed(3) != val_noise_seed(4)
    record = val.record()
    assert record == {
        "val_images": len(true),
        "val_labels": "noisy",
        "val_noise": "sym",
        "val_num_noisy": len(true) // 2,
    }
    assert val.record(clean=True)["val_num_noisy"] == 0


def test_clean_runs_have_clean_val_labels(colour_dataset):
    prep = prepare_run(
        load_run_config(None, run_overrides(colour_dataset, "coop", **{"data.shots": 4})), **QUIET
    )
    val = prep.validation
    assert np.array_equal(val.labels().numpy(), val.true_labels().numpy())
    assert val.record()["val_noise"] == "none"
