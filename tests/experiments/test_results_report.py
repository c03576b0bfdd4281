"""Reports: the paper table equals numbers recomputed from run folders; ablations; curves."""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

import pytest
from scipy.stats import sem
from scipy.stats import t as scipy_t

from visprompt.cli import main
from visprompt.errors import VispromptError
from visprompt.experiments.report import write_report
from visprompt.experiments.store import ResultsStore


def read_csv(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def t_interval(values: list[float]) -> tuple[float, float] | None:
    """The 95% Student t interval of the mean, through scipy's own interval and sem."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    if sem(values) == 0:  # every seed the same (zero-shot): a point; scipy gives nan
        return (mean, mean)
    return scipy_t.interval(0.95, len(values) - 1, loc=mean, scale=sem(values))


def cell_text(values: list[float]) -> str:
    text = f"{statistics.fmean(values):.2f}"
    ci = t_interval(values)
    if ci is None:
        return text
    return text + f" ± {statistics.stdev(values):.2f} [{ci[0]:.1f}, {ci[1]:.1f}]"


def clearly_best(values: list[float], others: list[list[float]]) -> bool:
    """Highest mean, and its interval wholly above the runner-up's."""
    ranked = sorted([values, *others], key=statistics.fmean, reverse=True)
    if ranked[0] is not values or len(ranked) < 2:
        return False
    a, b = t_interval(ranked[0]), t_interval(ranked[1])
    return a is not None and b is not None and a[0] > b[1]


@pytest.mark.slow  # the tiny sweep: worker processes
def test_report_table_equals_numbers_recomputed_from_run_folders(tiny_sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", "--db", str(tiny_sweep.db), "--out", str(out)]) == 0
    assert "report of 8 runs written to" in capsys.readouterr().out
    for name in ("index.md", "table.md", "table.csv", "table_wide.csv"):
        assert (out / name).is_file()
    plot = out / "plots" / "accuracy-folder-sym.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = (out / "index.md").read_text()
    for link in (
        "(table.md)",
        "(table.csv)",
        "(table_wide.csv)",
        "(plots/accuracy-folder-sym.png)",
    ):
        assert link in index

    # recompute every cell from the result.json files of the run folders
    groups: dict[tuple, list[float]] = defaultdict(list)
    for result_file in tiny_sweep.runs_dir.glob("*/result.json"):
        r = json.loads(result_file.read_text())
        key = (r["dataset"], r["noise_type"], r["noise_rate"], r["method"])
        groups[key].append(r["test_accuracy"])
    rows = read_csv(out / "table.csv")
    assert len(rows) == len(groups) == 4
    for row in rows:
        values = groups[
            (row["dataset"], row["noise_type"], float(row["noise_rate"]), row["method"])
        ]
        assert int(row["n"]) == len(values) == 2
        assert float(row["mean"]) == pytest.approx(statistics.fmean(values), abs=1e-6)
        assert float(row["std"]) == pytest.approx(statistics.stdev(values), abs=1e-6)
        low, high = t_interval(values)
        assert float(row["ci_low"]) == pytest.approx(low, abs=1e-5)
        assert float(row["ci_high"]) == pytest.approx(high, abs=1e-5)
        # the per-seed values, in the order of the seeds and run ids
        assert sorted(float(v) for v in row["values"].split(";")) == pytest.approx(sorted(values))
        assert sorted(row["seeds"].split(";")) == ["1", "2"]
        others = [
            v
            for k, v in groups.items()
            if k[:3] == (row["dataset"], row["noise_type"], float(row["noise_rate"]))
            and k[3] != row["method"]
        ]
        assert row["best"] == str(int(clearly_best(values, others)))
    # the Markdown cells show the same numbers, the best bold
    table = (out / "table.md").read_text()
    wide = read_csv(out / "table_wide.csv")[0]
    for (_, _, rate, method), values in groups.items():
        text = cell_text(values)
        is_best = next(
            r["best"] == "1"
            for r in rows
            if (float(r["noise_rate"]), r["method"]) == (rate, method)
        )
        assert (f"**{text}**" if is_best else f"| {text} |") in table
        assert wide[f"{rate * 100:g}% {method}"] == text + ("*" if is_best else "")


def _finished_run(
    store: ResultsStore,
    run_id: str,
    method: dict,
    dataset: str,
    rate: float,
    seed: int,
    accuracy: float,
    purify: list[tuple[float, float]] = (),
) -> None:
    config = {
        "backbone": {"arch": "RN50", "checkpoint": "/ckpt/RN50.pt"},
        "data": {"dataset": dataset, "root": "/data", "shots": 16, "seed": seed},
        "noise": {"type": "sym", "rate": rate, "protocol": "relabel"},
        "method": method,
        "optim": {"lr": 0.002},
    }
    store.add_pending([(run_id, config, "handmade", f"/runs/{run_id}")])
    epochs = [
        {"epoch": e, "train_loss": 1.0, "purify_precision": p, "purify_recall": r}
        for e, (p, r) in enumerate(purify, start=1)
    ]
    store.finish(run_id, {"test_accuracy": accuracy, "backbone": "RN50"}, epochs)


def test_ablation_table_and_purification_curves(tmp_path):
    db = tmp_path / "r.sqlite"
    full = {"name": "visprompt", "attention": True, "film": True}
    no_attention = {**full, "attention": False}
    no_film = {**full, "film": False}
    with ResultsStore(db) as store:
        for seed, (a, b, c) in enumerate([(70.0, 60.0, 50.0), (72.0, 61.0, 53.0)], start=1):
            _finished_run(
                store,
                f"f{seed}",
                full,
                "dtd",
                0.5,
                seed,
                a,
                [(0.80 + seed / 100, 0.70), (0.90, 0.75 + seed / 100)],
            )
            _finished_run(
                store, f"n{seed}", no_attention, "dtd", 0.5, seed, b, [(0.60, 0.50), (0.65, 0.55)]
            )
            _finished_run(store, f"g{seed}", no_film, "dtd", 0.5, seed, 64.0 + seed)
            _finished_run(store, f"c{seed}", {"name": "coop"}, "dtd", 0.5, seed, c)
        _finished_run(store, "c3", {"name": "coop"}, "dtd", 0.5, 3, 40.0)
        store.add_pending([("x", {"method": {"name": "coop"}}, "handmade", "/x")])
        store.fail("x", "RuntimeError: boom")
    written = write_report(db, tmp_path / "report")
    out = written.folder
    assert written.runs == 9
    rows = {r["method"]: r for r in read_csv(out / "table.csv")}
    # labels name the settings that differ between the runs, by how a run departs from the
    # value most of the method's runs share (attention and film: on in 4 of 6 runs)
    assert set(rows) == {"coop", "visprompt", "visprompt (attention=off)", "visprompt (film=off)"}
    assert float(rows["coop"]["mean"]) == pytest.approx(statistics.fmean([50.0, 53.0, 40.0]))
    # visprompt's mean is highest, but 2 seeds give a wide interval [58.3, 83.7] that overlaps
    # the runner-up's (film=off, [59.2, 71.9]): nothing is bold
    assert {r["best"] for r in rows.values()} == {"0"}
    table = (out / "table.md").read_text()
    assert "| 71.00 ± 1.41 [58.3, 83.7] (n=2) |" in table  # fewer seeds than the coop cell (3)
    ablation = read_csv(out / "ablation.csv")
    assert [(r["setting"], float(r["mean"]), r["best"]) for r in ablation] == [
        ("attention=off, film=on", 60.5, "0"),
        ("attention=on, film=off", 65.5, "0"),
        ("attention=on, film=on", 71.0, "0"),
    ]
    assert "| dtd | on | on | 71.00 ± 1.41 [58.3, 83.7] |" in (out / "ablation.md").read_text()
    # methods x noise settings: accuracy, then the last epoch's clean split (in %)
    methods = {r["method"]: r for r in read_csv(out / "methods.csv")}
    assert methods["visprompt"]["acc sym 50%"] == "71.00 ± 1.41 (n=2)"
    assert methods["visprompt"]["clean-split prec/rec sym 50%"] == (
        "90.00 ± 0.00 (n=2) / 76.50 ± 0.71 (n=2)"
    )
    assert methods["coop"]["acc sym 50%"] == "47.67 ± 6.81"
    assert methods["coop"]["clean-split prec/rec sym 50%"] == "-"
    assert methods["visprompt (film=off)"]["clean-split prec/rec sym 50%"] == "-"
    curves = read_csv(out / "purification.csv")
    full_curve = [r for r in curves if r["method"] == "visprompt"]
    assert [(int(r["epoch"]), int(r["n"])) for r in full_curve] == [(1, 2), (2, 2)]
    assert float(full_curve[0]["precision"]) == pytest.approx((0.81 + 0.82) / 2)
    assert float(full_curve[1]["recall"]) == pytest.approx((0.76 + 0.77) / 2)
    assert not any(r["method"] == "coop" for r in curves)  # no purification, no curve
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert plots == [
        "accuracy-dtd-sym.png",
        "purification-dtd-sym-visprompt-attention-off.png",
        "purification-dtd-sym-visprompt.png",
    ]
    index = (out / "index.md").read_text()
    assert "(ablation.md)" in index and "(purification.csv)" in index
    assert "1 failed runs are not shown" in index and "(methods.md)" in index
    # filters, and a second report replaces the first in place
    again = write_report(db, out, methods=["coop"], backbones=["rn50"])
    assert again.runs == 3 and not (out / "ablation.md").exists()
    # one sweep's runs of a shared database: only those, labelled among themselves
    some = write_report(db, tmp_path / "some", run_ids=["f1", "f2", "n1", "n2"])
    assert some.runs == 4
    labels = {r["method"] for r in read_csv(some.folder / "table.csv")}
    assert labels == {"visprompt (attention=on)", "visprompt (attention=off)"}  # a tie: both named
    with pytest.raises(VispromptError, match="no finished run in .* matches --dataset caltech101"):
        write_report(db, tmp_path / "empty-report", datasets=["caltech101"])
    assert not (tmp_path / "empty-report").exists()


def test_report_bad_inputs_are_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty.sqlite"
    ResultsStore(empty).close()
    out = tmp_path / "report"
    assert main(["report", "--db", str(empty), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: results database {empty} holds no finished runs; run a sweep into it first"
    ]
    assert not out.exists()
    assert main(["report", "--db", str(tmp_path / "nope.sqlite"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    with ResultsStore(empty) as store:
        _finished_run(store, "a", {"name": "coop"}, "dtd", 0.25, 1, 50.0)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["report", "--db", str(empty), "--out", str(tmp_path / "busy")]) == 2
    assert "not empty and holds no earlier report" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
