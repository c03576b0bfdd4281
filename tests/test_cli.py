"""The `visprompt` command: help everywhere, one-line errors, run-folder checks."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from vp_testing import run_overrides

from visprompt.cli import build_parser, main
from visprompt.config import load_run_config
from visprompt.engine.reload import evaluate_run
from visprompt.engine.run import train_run
from visprompt.errors import VispromptError


def subcommand_paths() -> list[list[str]]:
    paths = []

    def walk(parser, prefix):
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, sub in action.choices.items():
                    paths.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(build_parser(), [])
    return paths


def test_every_subcommand_has_help(capsys):
    paths = subcommand_paths()
    names = {" ".join(p) for p in paths}
    for expected in (
        "train",
        "eval",
        "predict",
        "label-issues",
        "sweep",
        "runs list",
        "report",
        "demo",
        "datasets list",
        "datasets check",
        "methods",
    ):
        assert expected in names
    for path in paths:
        with pytest.raises(SystemExit) as info:
            main([*path, "--help"])
        assert info.value.code == 0
        assert "usage: visprompt" in capsys.readouterr().out


@pytest.mark.slow  # a `visprompt` subprocess
def test_installed_entry_point_runs():
    done = subprocess.run(
        [sys.executable, "-m", "visprompt", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "train" in done.stdout


def test_errors_are_one_line_with_exit_status_2(capsys, tmp_path):
    assert (
        main(
            [
                "train",
                "--out",
                str(tmp_path / "r"),
                "--set",
                "backbone.name=tiny-vit",
                "--set",
                "data.dataset=nope",
                "--set",
                "method.name=coop",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown dataset 'nope'; choose one of:") and "\n" not in err
    assert not (tmp_path / "r").exists()
    assert main(["datasets", "check", "caltech101", "--root", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_eval_refuses_weights_of_another_backbone(colour_dataset, tmp_path):
    over = run_overrides(colour_dataset, "coop", **{"optim.epochs": 1})
    train_run(load_run_config(None, over), tmp_path / "run", progress=False, log=lambda m: None)
    cfg_path = tmp_path / "run" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["backbone"]["name"] = "tiny-rn"
    cfg_path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(VispromptError, match="trained on backbone 'tiny-vit'"):
        evaluate_run(tmp_path / "run", progress=False)
