"""One home per check: every public data function refuses a bad value with the same message.

Seeds and shots are checked by :mod:`visprompt.data.validation`, noise types and
rates by :func:`visprompt.data.noise.check_noise`; these tests call each public
entry point a user may call without a config and compare the messages, so a
copy of a check with its own wording (or a missing check) fails here.
"""

from __future__ import annotations

from typing import get_args

import pytest
from dataset_layouts import write_folder

from visprompt.config import NoiseConfig
from visprompt.data import DATASETS
from visprompt.data.fewshot import fewshot_splits, sample_few_shot
from visprompt.data.noise import NOISE_TYPES, inject_noise
from visprompt.data.protocols import balanced_noisy_fewshot
from visprompt.data.types import DatasetSplits, Sample
from visprompt.errors import VispromptError

K, PER_CLASS = 3, 20


def splits() -> DatasetSplits:
    names = tuple(f"c{k}" for k in range(K))

    def pool(prefix: str, n: int) -> tuple[Sample, ...]:
        return tuple(
            Sample(path=f"/d/{prefix}/{k}/{i:03d}.jpg", label=k, classname=names[k])
            for k in range(K)
            for i in range(n)
        )

    return DatasetSplits(
        name="fake", classnames=names, train=pool("tr", PER_CLASS), val=pool("va", 2), test=()
    )


def message(call) -> str:
    with pytest.raises(VispromptError) as exc:
        call()
    return str(exc.value)


LABELS = [s.label for s in splits().train]


@pytest.mark.parametrize("seed", [-1, 2.5, None, True])
def test_every_entry_point_refuses_a_bad_seed_alike(seed, tmp_path):
    folder = write_folder(tmp_path / "ds", train=5, test=2)  # no val folder: a seeded split
    calls = {
        "sample_few_shot": lambda: sample_few_shot(splits().train, 4, seed),
        "fewshot_splits": lambda: fewshot_splits(splits(), 4, seed),
        "inject_noise": lambda: inject_noise(LABELS, K, "sym", 0.25, seed),
        "balanced": lambda: balanced_noisy_fewshot(splits(), 4, "sym", 0.25, seed),
        "folder reader": lambda: DATASETS.get("folder").read(folder, seed=seed),
    }
    messages = {name: message(call) for name, call in calls.items()}
    expected = f"seed {seed!r} is not a whole number >= 0; set seed to e.g. 1"
    assert messages == dict.fromkeys(calls, expected)


@pytest.mark.parametrize("shots", [0, -2, 1.5, "4", True])
def test_every_sampler_refuses_bad_shots_alike(shots):
    calls = {
        "sample_few_shot": lambda: sample_few_shot(splits().train, shots, 1),
        "fewshot_splits": lambda: fewshot_splits(splits(), shots, 1),
        "balanced": lambda: balanced_noisy_fewshot(splits(), shots, "sym", 0.25, 1),
    }
    expected = f"data.shots is {shots!r}; set it to a positive whole number of images per class"
    assert {name: message(call) for name, call in calls.items()} == dict.fromkeys(calls, expected)


@pytest.mark.parametrize(
    ("noise_type", "rate", "fragment"),
    [
        ("pairflip", 0.25, "unknown noise type 'pairflip'; choose one of"),
        ("sym", 1.0, "noise rate 1.0 is outside [0, 1)"),
        ("sym", float("nan"), "noise rate nan is outside [0, 1)"),
        ("sym", "lots", "noise rate 'lots' is not a number"),
        ("none", 0.3, "noise type 'none' injects no noise, so its rate must be 0"),
        ("real", 0.3, "noise type 'real' injects no noise, so its rate must be 0"),
    ],
)
def test_noise_settings_are_refused_alike_by_both_protocols(noise_type, rate, fragment):
    relabel = message(lambda: inject_noise(LABELS, K, noise_type, rate, seed=1))
    balanced = message(lambda: balanced_noisy_fewshot(splits(), 4, noise_type, rate, seed=1))
    assert relabel == balanced and fragment in relabel


def test_the_balanced_protocol_adds_only_its_own_rule():
    assert "asym-semantic" in NOISE_TYPES  # valid in general ...
    with pytest.raises(VispromptError, match="not available with noise.protocol balanced"):
        balanced_noisy_fewshot(splits(), 4, "asym-semantic", 0.25, seed=1)  # ... not here


def test_the_config_layer_offers_the_noise_types_of_the_data_layer():
    # the list is written once (data.noise); the config's typed field must be that list
    assert get_args(NoiseConfig.model_fields["type"].annotation) == NOISE_TYPES
