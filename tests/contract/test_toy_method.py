"""Adding a method is one new file: a toy method written to a temporary folder and imported.

The module below uses only the public names of :mod:`visprompt.methods`. Once
imported it trains through the normal ``train_run``, is listed by
``visprompt methods``, is part of what the contract tests are parametrised
over, and passes the same contract checks, with no file of the package
touched. The registry is scoped, so no other test ever sees the toy.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from method_contract import (
    check_checkpoint_holds_the_trainable_weights,
    check_interrupted_run_resumes_to_the_same_run,
    check_one_epoch_trains,
    contract_overrides,
    method_names,
    trainable_method_names,
)
from vp_testing import tree_snapshot

import visprompt
from visprompt.cli import main
from visprompt.config import load_run_config
from visprompt.methods import METHOD_REGISTRY

TOY_MODULE = "visprompt_toy_probe"
TOY_SOURCE = '''"""A toy method: one learnable weight vector per class on the frozen image features."""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from visprompt.methods import FeatureBatch, MethodConfig, PromptMethod, register_method


class ToyProbeConfig(MethodConfig):
    name: Literal["toy-probe"] = "toy-probe"
    init_std: float = Field(0.02, gt=0)


@register_method("toy-probe", config=ToyProbeConfig, description="toy probe: a weight per class")
class ToyProbe(PromptMethod):
    def __init__(self, backbone, classnames, config, templates=()):
        super().__init__(backbone, classnames, config, templates)
        dim = backbone.embed_dim
        self.weight = nn.Parameter(torch.randn(len(self.classnames), dim) * config.init_std)

    def forward(self, features: FeatureBatch, text_features=None) -> torch.Tensor:
        image = F.normalize(features.image.float(), dim=-1)
        return self.logit_scale * image @ F.normalize(self.weight, dim=-1).t()
'''


def test_a_method_in_one_new_file_is_trainable_listed_and_covered(
    colour_dataset, tmp_path, monkeypatch, capsys
):
    package = Path(visprompt.__file__).parent
    before = tree_snapshot(package, ignore=("__pycache__",))
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / f"{TOY_MODULE}.py").write_text(TOY_SOURCE)
    monkeypatch.syspath_prepend(str(plugin))
    assert "toy-probe" not in METHOD_REGISTRY
    with METHOD_REGISTRY.scoped():
        try:
            importlib.import_module(TOY_MODULE)
            # the contract tests' parametrisation now includes it
            assert "toy-probe" in method_names() and "toy-probe" in trainable_method_names()

            assert main(["methods"]) == 0
            listed = [
                line.split()[0] for line in capsys.readouterr().out.splitlines() if line[:1].strip()
            ]
            assert "toy-probe" in listed and "coop" in listed

            cfg = load_run_config(None, contract_overrides(colour_dataset, "toy-probe"))
            result = check_one_epoch_trains(cfg, tmp_path / "run")
            assert result["method"] == "toy-probe" and result["trainable_params"] == 4 * 32
            check_checkpoint_holds_the_trainable_weights(cfg, tmp_path / "run")
            check_interrupted_run_resumes_to_the_same_run(
                contract_overrides(colour_dataset, "toy-probe", epochs=2), tmp_path / "resume"
            )
        finally:
            sys.modules.pop(TOY_MODULE, None)
    assert "toy-probe" not in METHOD_REGISTRY and "toy-probe" not in method_names()
    assert tree_snapshot(package, ignore=("__pycache__",)) == before  # no file touched
