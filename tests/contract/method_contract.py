"""What every registered method promises the engine, as check functions.

The parametrised contract tests (``test_method_contract.py``) call these for
every name in :data:`visprompt.methods.METHOD_REGISTRY`, and the toy-method
test calls the same functions for a method defined in a temporary file, so a
method is covered the moment it is registered. Each check runs the real
engine (``train_run``) on the colour dataset with the tiny ViT backbone:

* :func:`check_one_epoch_trains` - the shortest run the method allows trains,
  writes its epochs, and moves its weights; a method without parameters
  (zero-shot) trains nothing and is only evaluated;
* :func:`check_checkpoint_holds_the_trainable_weights` - the method's
  ``state_dict`` and the saved ``prompt.safetensors`` hold exactly its
  trainable parameters (never the frozen backbone);
* :func:`check_interrupted_run_resumes_to_the_same_run` - a run stopped after
  its first epoch and resumed ends exactly as an uninterrupted run;
* :func:`check_sigkilled_run_resumes_to_the_same_run` - the same after SIGKILL
  of a ``visprompt train`` process (slow: three processes).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from vp_testing import assert_same_run, kill_then_resume, run_overrides, train_command

from visprompt.config import RunConfig, load_run_config
from visprompt.engine import checkpoint as ckpt
from visprompt.engine.assembly import build_backbone, build_method, read_dataset
from visprompt.engine.run import train_run
from visprompt.engine.run_folder import RESULT_FILE, read_metrics
from visprompt.methods import METHOD_REGISTRY, PromptMethod

QUIET = {"progress": False, "log": lambda message: None}


def method_names() -> list[str]:
    """Every registered method: what the contract tests are parametrised over."""
    return METHOD_REGISTRY.names()


def trainable_method_names() -> list[str]:
    return [n for n in method_names() if METHOD_REGISTRY.get(n).cls.trainable]


def shortest_epochs(name: str) -> int:
    """One epoch, or the fewest the method declares it needs (JoAPR: warm-up + 1)."""
    entry = METHOD_REGISTRY.get(name)
    needs = entry.config_cls(name=name).requirements().min_epochs
    return max(1, needs[0] if needs else 1)


def contract_overrides(dataset_root: Path, name: str, epochs: int | None = None) -> list[str]:
    """A small run of method ``name``: 4 shots x 4 classes, one cached view, 25% sym noise.

    Noise makes the robust methods' purifiers split the set for real; a method
    whose paper uses the balanced protocol gets it (its declared default).
    """
    return run_overrides(
        dataset_root,
        name,
        **{
            "optim.epochs": epochs or shortest_epochs(name),
            "data.shots": 4,
            "data.num_views": 1,
            "optim.batch_size": 8,
            "noise.type": "sym",
            "noise.rate": 0.25,
        },
    )


def fresh_method(cfg: RunConfig) -> PromptMethod:
    """The method as ``train_run`` initialises it (same seed), before any step."""
    spec, splits = read_dataset(cfg)
    return build_method(cfg, build_backbone(cfg), splits.classnames, spec.templates)


def trainable_names(method: PromptMethod) -> set[str]:
    return {n for n, p in method.named_parameters() if p.requires_grad}


def check_checkpoint_holds_the_trainable_weights(cfg: RunConfig, out: Path) -> None:
    """``state_dict`` == trainable parameters == the tensors in ``prompt.safetensors``."""
    method = fresh_method(cfg)
    trainable = trainable_names(method)
    assert set(method.state_dict()) == trainable, (
        f"{cfg.method.name}'s state_dict holds more than its trainable parameters: "
        f"{sorted(set(method.state_dict()) - trainable)}"
    )
    assert not any(p.requires_grad for p in method.backbone.parameters())  # frozen means frozen
    saved, meta = ckpt.load_weights(out / ckpt.WEIGHTS_FILE)
    assert set(saved) == trainable
    for name, tensor in method.state_dict().items():
        assert saved[name].shape == tensor.shape and saved[name].dtype == tensor.dtype
    assert meta  # method, backbone and classes travel with the weights


def check_one_epoch_trains(cfg: RunConfig, out: Path) -> dict:
    """The shortest run trains and writes a finished run folder; returns its result."""
    entry = METHOD_REGISTRY.get(cfg.method.name)
    before = fresh_method(cfg).state_dict()
    result = train_run(cfg, out, **QUIET)
    assert (out / RESULT_FILE).is_file()
    assert 0.0 <= result["test_accuracy"] <= 100.0
    n_trainable = sum(t.numel() for t in before.values())
    assert result["trainable_params"] == n_trainable
    if not entry.cls.trainable:
        assert n_trainable == 0 and result["epochs"] == 0
        assert not (out / ckpt.STATE_FILE).exists() and read_metrics(out) == []
        return result
    assert n_trainable > 0, f"{cfg.method.name} is trainable but has no trainable parameters"
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == list(range(1, cfg.optim.epochs + 1))
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    after, _ = ckpt.load_weights(out / ckpt.WEIGHTS_FILE)
    moved = [n for n, t in before.items() if not torch.equal(after[n], t)]
    assert moved, f"{cfg.method.name}: no weight changed in {cfg.optim.epochs} epoch(s)"
    return result


class _Stop(Exception):
    """Raised from ``on_epoch`` to interrupt a run after a checkpoint was written."""


def check_interrupted_run_resumes_to_the_same_run(overrides: list[str], tmp: Path) -> None:
    """Stopped after epoch 1 and resumed (in this process): the same metrics and weights."""
    train_run(load_run_config(None, overrides), tmp / "full", **QUIET)

    def stop(metrics: dict) -> None:
        if metrics["epoch"] == 1:
            raise _Stop

    with pytest.raises(_Stop):
        train_run(load_run_config(None, overrides), tmp / "cut", on_epoch=stop, **QUIET)
    assert len(read_metrics(tmp / "cut")) == 1 and not (tmp / "cut" / RESULT_FILE).exists()
    train_run(load_run_config(None, overrides), tmp / "cut", resume=True, **QUIET)
    assert_same_run(tmp / "full", tmp / "cut")


def check_sigkilled_run_resumes_to_the_same_run(
    overrides: list[str], tmp: Path, epochs: int
) -> None:
    """A ``visprompt train`` process SIGKILLed mid-run and resumed ends the same.

    Killed once 2 epochs are in ``metrics.jsonl`` (each epoch's line is written
    after its ``state.pt``, so there is always a checkpoint to resume from), with
    epochs still to go.
    """
    full, killed = kill_then_resume(
        lambda out, *extra: train_command(out, overrides, *extra), tmp, 2, epochs
    )
    assert_same_run(full, killed)
