"""`visprompt demo --smoke`: the whole demo pipeline on the shipped backbone, in seconds."""

from __future__ import annotations

import csv

from visprompt.cli import main
from visprompt.demo import MODES, planned_runs


def test_demo_plan_covers_methods_and_noise_settings():
    default = planned_runs(MODES["default"])
    assert {m for m, *_ in default} == {"zeroshot", "coop", "nlprompt", "visprompt"}
    assert len(default) == 1 + 3 * 2  # zero-shot once; three trained methods x (clean, 50%)
    full = planned_runs(MODES["full"])
    assert {(n, r) for _, n, r, _ in full} >= {("asym", 0.25), ("sym", 0.75)}
    assert {s for *_, s in full} == {1, 2, 3}


def test_demo_smoke_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--smoke", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| visprompt |" in printed and "OT prec/rec" in printed
    for name in ("results.md", "results.csv", "accuracy_vs_noise.png", "label_issues.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    rows = list(csv.reader((out / "results.csv").open()))
    assert [r[0] for r in rows[1:]] == ["zeroshot", "coop", "nlprompt", "visprompt"]
    issues = list(csv.DictReader((out / "label_issues.csv").open()))
    assert len(issues) == 14 * 4  # 4 shots x 14 classes in smoke mode
    # a second call reuses every finished run
    assert main(["demo", "--smoke", "--out", str(out), "--quiet"]) == 0
    assert "test accuracy" in capsys.readouterr().out
