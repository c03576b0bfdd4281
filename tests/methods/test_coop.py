"""CoOp: the shared learnable context."""

from __future__ import annotations

from vp_testing import run_overrides

from visprompt.config import load_run_config
from visprompt.engine.run import train_run


def test_class_specific_context_trains(colour_dataset, tmp_path):
    over = run_overrides(
        colour_dataset, "coop", **{"method.class_specific": "true", "optim.epochs": 2}
    )
    result = train_run(
        load_run_config(None, over), tmp_path / "csc", progress=False, log=lambda m: None
    )
    assert result["trainable_params"] == 4 * 16 * 64  # K x M x d
