"""Report plots: the accuracy bands are the cells' 95% intervals; ``report --run DIR`` gives
per-class accuracy that adds up to the run's own test accuracy."""

from __future__ import annotations

import csv

import pytest
from matplotlib.figure import Figure
from vp_testing import run_overrides

from visprompt.cli import main
from visprompt.config import load_run_config
from visprompt.engine.checkpoint import WEIGHTS_FILE, load_weights
from visprompt.engine.run import train_run
from visprompt.experiments.report.plots import _draw_accuracy
from visprompt.experiments.report.tables import Cell, Table


def cell(values: list[float]) -> Cell:
    return Cell(
        values=values, run_ids=[f"r{i}" for i in range(len(values))], seeds=[1, 2, 3][: len(values)]
    )


def test_accuracy_band_is_the_interval_of_each_point():
    cells = {
        (("dtd", "sym"), (0.25, "coop")): cell([70.0, 72.0, 74.0]),
        (("dtd", "sym"), (0.5, "coop")): cell([60.0, 61.0, 65.0]),
        (("dtd", "sym"), (0.75, "coop")): cell([40.0]),  # one run: a point, no band there
    }
    table = Table(
        "t", ("RN50", 16, "relabel"), [("dtd", "sym")], sorted({c for _, c in cells}), cells
    )
    ax = Figure().subplots()
    _draw_accuracy(ax, table, "dtd", "sym")
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "coop"]
    assert list(line.get_xdata()) == [25.0, 50.0, 75.0]
    assert list(line.get_ydata()) == pytest.approx([72.0, 62.0, 40.0])
    from matplotlib.collections import LineCollection, PolyCollection

    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    (caps,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    segments = {tuple(seg[0]): tuple(seg[1]) for seg in caps.get_segments()}
    verts = band.get_paths()[0].vertices
    expected = {
        25.0: cells[(("dtd", "sym"), (0.25, "coop"))].ci,
        50.0: cells[(("dtd", "sym"), (0.5, "coop"))].ci,
    }
    for x, (low, high) in expected.items():
        ys = sorted(y for vx, y in verts if vx == x)
        assert ys[0] == pytest.approx(low) and ys[-1] == pytest.approx(high)
        assert segments[(x, low)] == pytest.approx((x, high))  # the error bar: the same interval
    assert 75.0 not in {vx for vx, _ in verts}
    assert len(segments) == 2  # the point of one run has no interval


def test_report_run_gives_per_class_accuracy(colour_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = load_run_config(None, run_overrides(colour_dataset, "coop", **{"optim.epochs": 2}))
    result = train_run(cfg, run, progress=False)
    out = tmp_path / "per-class"
    assert main(["report", "--run", str(run), "--out", str(out)]) == 0
    assert "per-class report of" in capsys.readouterr().out
    with (out / "per_class.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    _, meta = load_weights(run / WEIGHTS_FILE)
    assert [r["class"] for r in rows] == meta["classnames"]  # names, in class order
    images = sum(int(r["images"]) for r in rows)
    correct = sum(int(r["correct"]) for r in rows)
    assert images == result["num_test"]
    # the per-class counts add up to the accuracy the run itself reported at training time
    assert 100 * correct / images == pytest.approx(result["test_accuracy"], rel=1e-9)
    macro = sum(float(r["accuracy"]) for r in rows) / len(rows)
    assert macro == pytest.approx(result["test_macro_accuracy"], rel=1e-6)
    for r in rows:
        assert float(r["accuracy"]) == pytest.approx(100 * int(r["correct"]) / int(r["images"]))
    assert (out / "per_class.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = (out / "index.md").read_text()
    assert "model selection: last" in index and "(per_class.png)" in index

    # bad input: options of a database report, a missing run folder
    assert main(["report", "--run", str(run), "--out", str(tmp_path / "x"), "--latex"]) == 2
    assert "--latex apply to a results database, not to --run" in capsys.readouterr().err
    assert main(["report", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "y")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
