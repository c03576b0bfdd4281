"""`visprompt demo`: shipped sweep files run by the sweep runner, the store and the report writer."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from visprompt.cli import main
from visprompt.demo import MODES, load_demo_sweep, sweep_files
from visprompt.experiments.store import ResultsStore
from visprompt.experiments.sweep import load_sweep

REPO = Path(__file__).resolve().parents[2]
METHODS = ["zeroshot", "coop", "nlprompt", "visprompt"]


def points(sweep) -> set[tuple]:
    return {
        (r.config.method.name, r.config.noise.type, r.config.noise.rate, r.config.data.seed)
        for r in sweep.runs
    }


def test_demo_modes_are_shipped_sweep_files():
    for mode in MODES:
        for path in sweep_files(mode):  # package data: pyproject ships demo/*.yaml
            assert path.is_file() and path.parent.name == "demo" and path.suffix == ".yaml"
    default = load_demo_sweep("default")
    assert default.name == "demo" and len(default.runs) == 1 + 3 * 2  # zero-shot runs once
    assert {p[0] for p in points(default)} == set(METHODS)
    assert {(p[1], p[2]) for p in points(default)} == {("none", 0.0), ("sym", 0.5)}
    # quick: the same runs at 10 epochs instead of 30, nothing else changed
    quick = load_demo_sweep("quick")
    assert points(quick) == points(default)
    for a, b in zip(default.runs, quick.runs, strict=True):
        assert (a.config.optim.epochs, b.config.optim.epochs) == (30, 10)
        assert b.config.model_copy(update={"optim": a.config.optim}).run_id() == a.run_id
    smoke = load_demo_sweep("smoke")
    assert len(smoke.runs) == 4 and {r.config.data.shots for r in smoke.runs} == {4}
    full = load_demo_sweep("full")
    # seeds x (zero-shot + 3 methods x 7 settings), and 11 baseline runs per sym rate and seed
    assert len(full.runs) == 3 * (1 + 3 * 7) + 3 * 3 * 11
    baselines = load_sweep(REPO / "configs" / "sweeps" / "baselines-demo.yaml")
    assert {r.run_id for r in baselines.runs} <= {r.run_id for r in full.runs}  # one database
    assert {(p[1], p[2]) for p in points(full)} >= {("asym", 0.25), ("sym", 0.75)}
    assert {p[3] for p in points(full)} == {1, 2, 3}
    # one home: the repo's demo sweep is the package's file, so `visprompt sweep` runs the same
    assert [r.run_id for r in load_sweep(REPO / "configs" / "sweeps" / "demo.yaml").runs] == [
        r.run_id for r in default.runs
    ]


def test_bad_demo_arguments_are_one_line_errors(tmp_path, capsys):
    out = tmp_path / "demo"
    for args, says in [
        (["--set", "optim.epochs=abc"], "bad value for 'optim.epochs'"),
        (["--set", "optim.epochs"], "has no '='"),
        (["--set", "method.name=coop"], "clashes with method.name"),
        (["--set", "nosuch.key=1"], "unknown option 'nosuch'"),
        (["--quick"], "choose at most one of --quick, --smoke and --full"),
    ]:
        assert main(["demo", "--smoke", "--out", str(out), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
        assert not out.exists()  # nothing written
    (tmp_path / "file").write_text("x")
    assert main(["demo", "--smoke", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def _table(printed: str) -> list[str]:
    return [line for line in printed.splitlines() if line.startswith("|")]


@pytest.mark.slow  # worker processes
def test_demo_smoke_runs_through_the_sweep_runner_and_reuses_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--smoke", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "sweep demo-smoke: 4 runs - 4 new, 0 done, 0 failed" in printed
    table = _table(printed)
    assert table[0] == "| method | acc sym 50% | clean-split prec/rec sym 50% |"
    for name in ("results.md", "results.csv", "accuracy_vs_noise.png", "label_issues.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert (out / "report" / "index.md").is_file() and (out / "report" / "table.md").is_file()

    # every run is in the store, done, with its folder under runs/; the table shows their numbers
    with ResultsStore(out / "results.sqlite", create=False) as store:
        runs = {r["method"]: r for r in store.list_runs()}
        final = {m: (store.purification(r["id"]) or [None])[-1] for m, r in runs.items()}
    assert sorted(runs) == sorted(METHODS)
    rows = list(csv.reader((out / "results.csv").open()))
    assert [r[0] for r in rows[1:]] == METHODS
    for method, line in zip(METHODS, rows[1:], strict=True):
        run = runs[method]
        assert run["status"] == "done" and run["sweep"] == "demo-smoke"
        assert Path(run["run_dir"]) == out / "runs" / run["id"]
        result = json.loads((out / "runs" / run["id"] / "result.json").read_text())
        assert line[1] == f"{result['test_accuracy']:.1f}"
        assert f"| {method} | {line[1]} | {line[2]} |" in table
        if method in ("nlprompt", "visprompt"):  # the last epoch's clean split, in %
            p, r = final[method]["precision"], final[method]["recall"]
            assert line[2] == f"{100 * p:.1f} / {100 * r:.1f}"
        else:
            assert final[method] is None and line[2] == "-"
    issues = list(csv.DictReader((out / "label_issues.csv").open()))
    assert len(issues) == 14 * 4  # 4 shots x 14 classes in smoke mode

    # a second call reuses every finished run: nothing trains, the same table
    logs = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/train.log")}
    assert main(["demo", "--smoke", "--out", str(out), "--quiet"]) == 0
    again = capsys.readouterr().out
    assert "4 runs - 0 new, 4 done" in again and again.count("(reused)") == 4
    assert _table(again) == table
    assert {p: p.stat().st_mtime_ns for p in logs} == logs

    # the database lost and one run killed after its last checkpoint, before its result: the
    # sweep runner imports the finished folders and resumes that run, to the same table
    vp = runs["visprompt"]
    (out / "runs" / vp["id"] / "result.json").unlink()
    for db_file in out.glob("results.sqlite*"):
        db_file.unlink()
    assert main(["demo", "--smoke", "--out", str(out), "--quiet"]) == 0
    resumed = capsys.readouterr().out
    assert "4 runs - 4 new, 0 done" in resumed and "4 of the new continue" in resumed
    assert "resuming" in (out / "runs" / vp["id"] / "train.log").read_text()
    assert "(import)" in (out / "runs" / runs["coop"]["id"] / "train.log").read_text()
    assert _table(resumed) == table
