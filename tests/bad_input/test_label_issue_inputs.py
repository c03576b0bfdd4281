"""Bad input to ``visprompt label-issues``: fold counts, detectors, --compare, --export.

Each row: the arguments, the fragment the one-line ``error: ...`` must contain;
every refused command exits 2 and leaves the run folder exactly as it was.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from vp_testing import run_overrides, tree_snapshot

from visprompt.cli import main
from visprompt.config import load_run_config
from visprompt.engine.run import train_run

QUIET = {"progress": False, "log": lambda message: None}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, colour_dataset) -> Path:
    """``synthetic``: coop under 50% symmetric noise (truth known); ``real``: labels as given."""
    base = tmp_path_factory.mktemp("label_issue_inputs")
    common = {"optim.epochs": 1, "data.cache_dir": str(base / "cache")}
    over = run_overrides(colour_dataset, "coop", **common, **{"noise.type": "sym"})
    train_run(load_run_config(None, [*over, "noise.rate=0.5"]), base / "synthetic", **QUIET)
    over = run_overrides(colour_dataset, "coop", **common, **{"noise.type": "real"})
    train_run(load_run_config(None, over), base / "real", **QUIET)
    (base / "a-file").write_text("not a folder\n")
    return base


def _smallest_class(run: Path) -> int:
    import json
    from collections import Counter

    given = json.loads((run / "trainset.json").read_text())["given_labels"]
    return min(Counter(given).values())


CASES = [
    ("cross-fit-one", ["--cross-fit", "1"], "needs at least 2 folds; give --cross-fit 2 or more"),
    ("cross-fit-zero", ["--cross-fit", "0"], "needs at least 2 folds"),
    ("cross-fit-negative", ["--cross-fit", "-3"], "needs at least 2 folds"),
    ("cross-fit-above-smallest-class", ["--cross-fit", "{smallest+1}"],
     "more folds than the smallest class has samples"),
    ("detector-unknown", ["--detector", "knn"], "unknown detector 'knn'; choose one of: cleanlab"),
    ("compare-without-truth", ["--compare"], "--compare needs the true labels"),
    ("export-onto-a-file", ["--export", "{base}/a-file"], "is a file; give a folder"),
]  # fmt: skip


@pytest.mark.parametrize("argv", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_label_issue_input_is_one_line_exit_2_and_harms_nothing(runs, argv, capsys):
    fragment = dict((tuple(c[1]), c[2]) for c in CASES)[tuple(argv)]
    run = runs / ("real" if "--compare" in argv else "synthetic")
    smallest = _smallest_class(run)
    argv = [a.format(base=runs, **{"smallest+1": smallest + 1}) for a in argv]
    before = tree_snapshot(runs / "synthetic", runs / "real")
    code = main(["label-issues", "--run", str(run), "--quiet", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err and err[-1].startswith("error: ") and fragment in err[-1], err
    assert ";" in err[-1], "the message names the fix after a ';'"
    if "smallest class" in fragment:
        assert f"give --cross-fit {smallest} or fewer" in err[-1]
    assert tree_snapshot(runs / "synthetic", runs / "real") == before


def test_cleanlab_detector_without_the_extra_says_how_to_install(runs, monkeypatch, capsys):
    # a missing package: its import raises ImportError (None in sys.modules does exactly that)
    for name in [m for m in sys.modules if m == "cleanlab" or m.startswith("cleanlab.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cleanlab", None)
    before = tree_snapshot(runs / "synthetic")
    code = main(["label-issues", "--run", str(runs / "synthetic"), "--detector", "cleanlab", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == (
        "error: detector 'cleanlab' needs the cleanlab package, which is not installed; "
        "install it with pip install 'visprompt[cleanlab]'"
    )
    assert tree_snapshot(runs / "synthetic") == before
    # --compare still compares the others, and says which one it could not run
    argv = ["label-issues", "--run", str(runs / "synthetic"), "--cross-fit", "2", "--compare"]
    assert main([*argv, "-q"]) == 0
    assert "| cleanlab | out-of-sample | not installed |" in capsys.readouterr().out


def test_cross_fit_and_in_sample_together_are_refused(runs, capsys):
    argv = ["label-issues", "--run", str(runs / "synthetic"), "--cross-fit", "2", "--in-sample"]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
