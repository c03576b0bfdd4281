"""Sweep files: expansion into validated runs, per-dataset grids, overrides, bad files."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from visprompt.cli import main
from visprompt.errors import VispromptError
from visprompt.experiments.sweep import load_sweep, parse_sweep
from visprompt.methods import METHOD_REGISTRY

SWEEPS = REPO / "configs" / "sweeps"
PAPER_SETS = ["data.root=/nonexistent/data", "backbone.checkpoint=/nonexistent/RN50.pt"]

BASE = {
    "backbone": {"name": "tiny-vit", "device": "cpu"},
    "data": {"dataset": "folder", "root": "/nowhere", "shots": 4},
    "optim": {"epochs": 2},
}


def write(tmp_path: Path, content: dict | str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    )
    return path


def methods_in(path: Path) -> set[str]:
    sweep = yaml.safe_load(path.read_text())
    grids = sweep.get("grids") or [{"grid": sweep.get("grid", {})}]
    names = {str((sweep.get("base") or {}).get("method", {}).get("name"))} - {"None"}
    for g in grids:
        names |= set(g.get("grid", {}).get("method.name", []))
        if "method.name" in (g.get("set") or {}):
            names.add(g["set"]["method.name"])
    return names


def test_grid_is_the_cartesian_product_in_file_order(tmp_path):
    grid = {"method.name": ["zeroshot", "coop"], "noise.rate": [0.25, 0.5], "data.seed": [1, 2, 3]}
    sweep = load_sweep(write(tmp_path, {"base": {**BASE, "noise": {"type": "sym"}}, "grid": grid}))
    assert sweep.name == "s" and len(sweep.runs) == 12
    expected = list(itertools.product(*grid.values()))
    got = [(r.config.method.name, r.config.noise.rate, r.config.data.seed) for r in sweep.runs]
    assert got == expected
    assert len({r.run_id for r in sweep.runs}) == 12
    assert all(r.run_id == r.config.run_id() for r in sweep.runs)
    # method defaults still apply where the base sets nothing (coop's batch size 32)
    assert {r.config.optim.batch_size for r in sweep.runs} == {32}
    assert {r.config.optim.epochs for r in sweep.runs} == {2}


def test_several_grids_with_their_own_settings_and_base_config(tmp_path):
    write(tmp_path, BASE, "run.yaml")
    content = {
        "name": "mixed",
        "base_config": "run.yaml",
        "base": {"data": {"shots": 2}},
        "grids": [
            {
                "name": "noisy",
                "set": {"noise.type": "asym", "method.name": "coop"},
                "grid": {"noise.rate": [0.5]},
            },
            {
                "set": {"noise.type": "none", "data.shots": 8},
                "grid": {"method.name": ["coop", "zeroshot"]},
            },
            {"grid": {"noise.type": ["none"], "data.shots": [8], "method.name": ["coop"]}},
        ],
    }
    sweep = load_sweep(write(tmp_path, content))
    assert sweep.name == "mixed"
    assert [(r.grid, r.config.noise.type, r.config.data.shots) for r in sweep.runs] == [
        ("noisy", "asym", 2),
        ("2", "none", 8),
        ("2", "none", 8),
    ]
    assert sweep.duplicates == 1  # the third grid repeats a run of the second
    assert sweep.grids == [("noisy", 1), ("2", 2), ("3", 0)]


def test_set_overrides_fill_placeholders_and_cannot_clash_with_grids(tmp_path):
    content = {
        "base": {**BASE, "data": {**BASE["data"], "root": "???"}},
        "grid": {"method.name": ["coop"], "optim.lr": [0.1, 0.2]},
    }
    path = write(tmp_path, content)
    with pytest.raises(VispromptError, match=r"needs a value for data.root .*--set data.root="):
        load_sweep(path)
    sweep = load_sweep(path, ["data.root=/data/x", "optim.batch_size=4"])
    assert {r.config.data.root for r in sweep.runs} == {"/data/x"}
    assert {r.config.optim.batch_size for r in sweep.runs} == {4}
    with pytest.raises(VispromptError, match="--set optim.lr clashes with optim.lr"):
        load_sweep(path, ["data.root=/x", "optim.lr=0.5"])
    with pytest.raises(VispromptError, match="--set optim clashes"):
        load_sweep(path, ["data.root=/x", "optim={}"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"base": BASE, "grid": {"method.name": ["coop"]}, "grdi": {}}, "unknown key 'grdi'"),
        ({"base": BASE, "grid": {}}, "grid of grid in sweep file .* is empty"),
        ({"base": BASE, "grid": None}, "is empty"),
        ({"base": BASE, "grid": {"method.name": []}}, "has an empty list"),
        ({"base": BASE, "grid": {"method.name": "coop"}}, r"must map to a list .*\[coop\]"),
        ({"base": BASE}, "has no grid"),
        ({"base": BASE, "grids": []}, "grids in sweep file .* is empty"),
        ({"base": BASE, "grids": [{"grid": {"a.b": [1]}, "sett": {}}]}, "unknown key 'sett'"),
        ({"base": BASE, "grid": {"a": [1]}, "grids": [{"grid": {"a": [1]}}]}, "both grid"),
        ({"base": [1], "grid": {"method.name": ["coop"]}}, "base in sweep file .* mapping"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_bad_sweep_files_are_one_line_errors(tmp_path, content, message):
    with pytest.raises(VispromptError, match=message) as info:
        load_sweep(write(tmp_path, content))
    assert "\n" not in str(info.value)


def test_invalid_expanded_run_names_its_grid_point(tmp_path):
    content = {"base": BASE, "grid": {"method.name": ["coop", "nosuchmethod"]}}
    with pytest.raises(VispromptError, match=r"grid grid, run \[method.name=nosuchmethod\]"):
        load_sweep(write(tmp_path, content))
    content = {"base": BASE, "grid": {"method.name": ["coop"], "optim.lrr": [1.0]}}
    with pytest.raises(VispromptError, match="unknown option 'optim.lrr'"):
        load_sweep(write(tmp_path, content))
    content = {"base": BASE, "grid": {"method.name": ["coop"], "data.dataset": ["nope"]}}
    with pytest.raises(VispromptError, match="unknown dataset 'nope'"):
        load_sweep(write(tmp_path, content))
    content = {"base": BASE, "grid": {"method.name": ["coop"], "noise.rate": [1.5]}}
    with pytest.raises(VispromptError, match=r"noise.rate.* \[0, 1\)"):
        load_sweep(write(tmp_path, content))
    with pytest.raises(VispromptError, match="sweep file not found"):
        load_sweep(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("grid: [1,\n")
    with pytest.raises(VispromptError, match="not valid YAML"):
        load_sweep(tmp_path / "broken.yaml")
    assert parse_sweep({"base": BASE, "grid": {"method.name": ["coop"]}}).name == "sweep"


def test_cli_dry_run_validates_and_writes_nothing(tmp_path, capsys, colour_dataset):
    db = tmp_path / "r.sqlite"
    args = ["sweep", "--config", str(SWEEPS / "tiny.yaml"), "--db", str(db), "--dry-run"]
    assert main([*args, "--set", f"data.root={colour_dataset}", "--list"]) == 0
    out = capsys.readouterr().out
    assert "sweep tiny: 8 runs - 8 new, 0 done, 0 failed" in out
    assert out.count(" new ") == 8 and "nothing was run" in out
    assert not db.exists() and not (tmp_path / "r-runs").exists()
    assert main(args) == 2  # data.root is ??? in the file
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: sweep tiny needs a value for data.root (??? in the sweep file); "
        "pass --set data.root=VALUE"
    ]
    missing = ["sweep", "--config", str(SWEEPS / "tiny.yaml"), "--db", "/nonexistent/dir/r.sqlite"]
    assert main([*missing, "--dry-run", "--set", f"data.root={colour_dataset}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "folder /nonexistent/dir of the results database does not exist" in err[0]
    )


@pytest.mark.skipif(
    not methods_in(SWEEPS / "paper-rn50.yaml") <= set(METHOD_REGISTRY.names()),
    reason="a method of the paper sweep is not registered yet",
)
def test_paper_sweep_expands_to_the_protocol():
    sweep = load_sweep(SWEEPS / "paper-rn50.yaml", PAPER_SETS)
    assert len(sweep.runs) == 6 * 2 * 6 * 4 * 3 + 4 * 3
    synthetic = [r.config for r in sweep.runs if r.config.data.dataset != "food101n"]
    assert {c.noise.rate for c in synthetic} == {0.125, 0.25, 0.375, 0.5, 0.625, 0.75}
    assert {c.noise.type for c in synthetic} == {"sym", "asym"}
    food = [r.config for r in sweep.runs if r.config.data.dataset == "food101n"]
    assert len(food) == 12 and {(c.noise.type, c.noise.rate) for c in food} == {("real", 0.0)}
    for cfg in (r.config for r in sweep.runs):
        assert cfg.data.shots == 16 and cfg.data.seed in (1, 2, 3)
        assert cfg.backbone.arch == "RN50" and cfg.optim.lr == 0.002
        assert cfg.optim.name == "sgd" and cfg.optim.warmup_epochs == 1
        entry = METHOD_REGISTRY.get(cfg.method.name)
        for key in ("optim.epochs", "optim.batch_size"):  # each method's reference values
            if key in entry.defaults:
                assert getattr(cfg.optim, key.split(".")[1]) == entry.defaults[key]
    with pytest.raises(VispromptError, match="needs a value for"):
        load_sweep(SWEEPS / "paper-rn50.yaml")


@pytest.mark.skipif(
    not methods_in(SWEEPS / "ablation.yaml") <= set(METHOD_REGISTRY.names()),
    reason="visprompt is not registered yet",
)
def test_ablation_sweep_switches_one_part_at_a_time():
    sweep = load_sweep(SWEEPS / "ablation.yaml", PAPER_SETS)
    assert len(sweep.runs) == 5 * 2 * 3 * 3
    switched = {r.grid: r.config.method.model_dump() for r in sweep.runs}
    full = switched.pop("full")
    for grid, method in switched.items():
        changed = [k for k in method if method[k] != full[k]]
        assert len(changed) == 1, (grid, changed)


def test_demo_sweep_is_valid():
    sweep = load_sweep(SWEEPS / "demo.yaml")
    # the demo's default mode: zero-shot once, coop/nlprompt/visprompt clean and at sym 50%
    assert len(sweep.runs) == 7
    assert {r.config.data.dataset for r in sweep.runs} == {"synthetic-shapes"}


def test_baselines_demo_sweep_covers_every_baseline_under_their_settings():
    sweep = load_sweep(SWEEPS / "baselines-demo.yaml")
    methods = {r.config.method.name for r in sweep.runs}
    assert methods == {
        "zeroshot", "coop", "nlprompt", "visprompt", "kgcoop", "prograd",
        "clip-adapter", "taskres", "zs-lp", "clap", "linear-probe", "tip-adapter",
        "tip-adapter-f",
    }  # fmt: skip
    assert len(sweep.runs) == 3 + 6 * 9 + 9 + 2 * 9 + 9 + 2 * 2 * 9
    assert {r.config.method.purify for r in sweep.runs if "tip" in r.config.method.name} == {
        "none",
        "ot",
    }
    by_method = {r.config.method.name: r.config.optim for r in sweep.runs}
    assert (by_method["clap"].name, by_method["clap"].lr, by_method["clap"].epochs) == (
        "sgd",
        0.1,
        300,
    )
    assert by_method["taskres"].name == "adam" and by_method["coop"].epochs == 30
    assert by_method["linear-probe"].epochs == 1
    assert (by_method["tip-adapter-f"].name, by_method["tip-adapter-f"].epochs) == ("adamw", 20)


def test_baselines_sweep_expands_to_the_paper_grid():
    sweep = load_sweep(SWEEPS / "baselines.yaml", PAPER_SETS)
    assert len(sweep.runs) == 6 * 2 * 6 * 9 * 3 + 9 * 3
    synthetic = [r.config for r in sweep.runs if r.config.data.dataset != "food101n"]
    assert {c.noise.rate for c in synthetic} == {0.125, 0.25, 0.375, 0.5, 0.625, 0.75}
    per_method: dict[str, int] = {}
    for cfg in (r.config for r in sweep.runs):
        per_method[cfg.method.name] = per_method.get(cfg.method.name, 0) + 1
        entry = METHOD_REGISTRY.get(cfg.method.name)
        for key, value in entry.defaults.items():  # each method's reference optimiser
            section, name = key.split(".")
            if section == "optim" and not (cfg.data.dataset == "eurosat" and name == "epochs"):
                assert getattr(cfg.optim, name) == value, (cfg.method.name, key)
    assert set(per_method.values()) == {6 * 2 * 6 * 3 + 3}  # every method on every setting
    tip_f = {
        r.config.data.dataset: r.config
        for r in sweep.runs
        if r.config.method.name == "tip-adapter-f"
    }
    assert (
        tip_f["eurosat"].optim.epochs == 100 and tip_f["oxford_flowers"].method.init_alpha == 10.0
    )
