"""Every registered method keeps the engine's contract (parametrised over the registry).

A method registered anywhere - a new file in ``visprompt/methods/`` or a user's
module - is collected here without any edit to this file. The checks live in
``method_contract.py``; the toy-method test applies the same ones.
"""

from __future__ import annotations

import pytest
from method_contract import (
    check_checkpoint_holds_the_trainable_weights,
    check_interrupted_run_resumes_to_the_same_run,
    check_one_epoch_trains,
    check_sigkilled_run_resumes_to_the_same_run,
    contract_overrides,
    method_names,
    shortest_epochs,
    trainable_method_names,
)

from visprompt.config import load_run_config


def test_the_registry_is_what_is_parametrised():
    # guards the parametrisation itself: an empty or partial list would pass vacuously
    assert {"zeroshot", "coop", "nlprompt", "visprompt"} <= set(method_names())
    assert "zeroshot" not in trainable_method_names()


@pytest.mark.parametrize("name", method_names())
def test_one_epoch_trains_and_checkpoints_only_trainable_weights(name, colour_dataset, tmp_path):
    cfg = load_run_config(None, contract_overrides(colour_dataset, name))
    check_one_epoch_trains(cfg, tmp_path / "run")
    check_checkpoint_holds_the_trainable_weights(cfg, tmp_path / "run")


@pytest.mark.parametrize("name", trainable_method_names())
def test_interrupted_run_resumes_to_the_same_run(name, colour_dataset, tmp_path):
    epochs = max(2, shortest_epochs(name))
    check_interrupted_run_resumes_to_the_same_run(
        contract_overrides(colour_dataset, name, epochs=epochs), tmp_path
    )


#: One method per kind of state a killed process must get back: the plain loop (coop),
#: per-image prompts + OT + dropout's RNG (visprompt), a stateful purifier + mixup's RNG
#: (joapr), extra state computed before the first epoch (clap). Every registered method's
#: own state round trip is the in-process resume test above; the process-level path
#: (files on disk, a fresh interpreter) is the same engine code for all of them.
SIGKILL_METHODS = ("coop", "visprompt", "joapr", "clap")


def test_the_sigkill_sample_is_registered():
    assert set(SIGKILL_METHODS) <= set(trainable_method_names())


@pytest.mark.slow  # three `visprompt train` processes, one of them SIGKILLed
@pytest.mark.parametrize("name", SIGKILL_METHODS)
def test_sigkilled_run_resumes_to_the_same_run(name, colour_dataset, tmp_path):
    # enough epochs that the kill (after epoch 2) lands before the run ends
    epochs = 10
    check_sigkilled_run_resumes_to_the_same_run(
        contract_overrides(colour_dataset, name, epochs=epochs), tmp_path, epochs
    )
