"""Reports for a paper: intervals over seeds, the "clearly best" rule, Average rows, LaTeX,
published numbers next to ours, and the one-line refusals of a bad --paper file.

Every expected number is recomputed here from the values put into the store, with
scipy's own ``t.interval`` (not the report's code path).
"""

from __future__ import annotations

import csv
import re
import statistics
from pathlib import Path

import pytest
from scipy.stats import sem
from scipy.stats import t as scipy_t

from visprompt.cli import main
from visprompt.experiments.report import write_report
from visprompt.experiments.report.published import SHIPPED, load_published
from visprompt.experiments.store import ResultsStore


def read_csv(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def interval(values: list[float]) -> tuple[float, float]:
    return scipy_t.interval(0.95, len(values) - 1, loc=statistics.fmean(values), scale=sem(values))


def assert_rows_fill_the_tabular(tex: str) -> None:
    """Every row of every tabular has as many cells as its column spec (unescaped ``&`` + 1)."""
    for block in tex.split(r"\begin{tabular}{")[1:]:
        spec, body = block.split("}", 1)
        rows = [ln for ln in body.split(r"\end{tabular}")[0].splitlines() if ln.endswith(r"\\")]
        assert rows
        for row in rows:
            width = sum(int(w) for w in re.findall(r"\\multicolumn\{(\d+)\}", row))
            cells = len(re.findall(r"(?<!\\)&", row)) + 1
            multi = len(re.findall(r"\\multicolumn", row))
            assert cells - multi + width == len(spec), row


def add_run(store, run_id, method, dataset, rate, seed, accuracy, select=None, noise="sym"):
    config = {
        "backbone": {"arch": "RN50"},
        "data": {"dataset": dataset, "root": "/data", "shots": 16, "seed": seed},
        "noise": {"type": noise, "rate": rate, "protocol": "relabel"},
        "method": {"name": method},
        "eval": {"every": 0, **({"select": select} if select else {})},
    }
    store.add_pending([(run_id, config, "handmade", f"/runs/{run_id}")])
    result = {"test_accuracy": accuracy, "backbone": "RN50"}
    if select:
        result["selection"] = select
    store.finish(run_id, result, [])


#: (method, dataset, rate) -> accuracy per seed 1, 2, 3
VALUES = {
    # rate 0.5: nlprompt far above coop on both datasets (intervals apart)
    ("coop", "dtd", 0.5): [70.0, 71.0, 72.0],
    ("nlprompt", "dtd", 0.5): [80.0, 81.0, 82.0],
    ("coop", "oxford_pets", 0.5): [60.0, 62.0, 61.0],
    ("nlprompt", "oxford_pets", 0.5): [75.0, 77.0, 79.0],
    # rate 0.25: nlprompt's mean higher, but the intervals overlap -> nothing bold
    ("coop", "dtd", 0.25): [70.0, 75.0, 80.0],
    ("nlprompt", "dtd", 0.25): [72.0, 76.0, 81.0],
    ("coop", "oxford_pets", 0.25): [66.0, 67.0, 68.0],
    # nlprompt has no oxford_pets 0.25 run: no Average cell for nlprompt at 0.25
}


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        for (method, dataset, rate), values in VALUES.items():
            for seed, acc in enumerate(values, start=1):
                add_run(
                    store, f"{method}-{dataset}-{rate}-{seed}", method, dataset, rate, seed, acc
                )
    return path


def test_intervals_best_rule_and_average_rows(db, tmp_path):
    out = write_report(db, tmp_path / "report", latex=True).folder
    rows = {
        (r["dataset"], float(r["noise_rate"]), r["method"]): r for r in read_csv(out / "table.csv")
    }
    for key, values in VALUES.items():
        row = rows[(key[1], key[2], key[0])]
        low, high = interval(values)
        assert float(row["ci_low"]) == pytest.approx(low, rel=1e-6)
        assert float(row["ci_high"]) == pytest.approx(high, rel=1e-6)
        assert [float(v) for v in row["values"].split(";")] == values
        assert row["seeds"] == "1;2;3" and int(row["n"]) == 3
    best = {k for k, r in rows.items() if r["best"] == "1"}
    # 0.5: nlprompt's interval [77.5, 84.5] above coop's [68.5, 73.5] on dtd, [70.0, 84.0] above
    # [58.5, 63.5] on pets; 0.25: overlapping intervals (dtd), a lone cell (pets): no mark
    assert best == {
        ("dtd", 0.5, "nlprompt"),
        ("oxford_pets", 0.5, "nlprompt"),
        ("Average", 0.5, "nlprompt"),
    }
    # Average: per seed the mean over the two datasets, then over seeds
    for method in ("coop", "nlprompt"):
        per_seed = [
            statistics.fmean(
                [VALUES[(method, "dtd", 0.5)][s], VALUES[(method, "oxford_pets", 0.5)][s]]
            )
            for s in range(3)
        ]
        avg = rows[("Average", 0.5, method)]
        assert [float(v) for v in avg["values"].split(";")] == pytest.approx(per_seed)
        assert float(avg["mean"]) == pytest.approx(statistics.fmean(per_seed))
        assert float(avg["std"]) == pytest.approx(statistics.stdev(per_seed))
        assert float(avg["ci_low"]) == pytest.approx(interval(per_seed)[0], rel=1e-6)
        assert len(avg["run_ids"].split(";")) == 6
    assert ("Average", 0.25, "coop") in rows
    assert ("Average", 0.25, "nlprompt") not in rows  # oxford_pets has no such run

    md = (out / "table.md").read_text()
    assert "wholly above the runner-up's" in md
    dtd_nl = VALUES[("nlprompt", "dtd", 0.5)]
    lo, hi = interval(dtd_nl)
    assert f"**81.00 ± 1.00 [{lo:.1f}, {hi:.1f}]**" in md
    assert "| Average | sym |" in md
    assert "Model selection: the last epoch" in md

    tex = (out / "table.tex").read_text()
    for piece in (r"\toprule", r"\midrule", r"\bottomrule", r"\cmidrule(lr){3-4}",
                  r"\multicolumn{2}{c}{50\%}", r"oxford\_pets", r"\textbf{81.00 $\pm$ 1.00}",
                  rf"{{\scriptsize [{lo:.1f}, {hi:.1f}]}}", "Average"):  # fmt: skip
        assert piece in tex, piece
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 1
    assert_rows_fill_the_tabular(tex)
    assert_rows_fill_the_tabular((out / "methods.tex").read_text())
    assert (out / "methods.tex").read_text().count(r"\begin{tabular}") == 2  # one per dataset
    index = (out / "index.md").read_text()
    assert "[table.tex](table.tex)" in index and "[methods.tex](methods.tex)" in index


def test_published_numbers_next_to_ours(db, tmp_path):
    paper = tmp_path / "paper.csv"
    paper.write_text(
        "# a comment citing the table\n"
        "method,dataset,noise_type,rate,accuracy,backbone,shots,source\n"
        "nlprompt,dtd,sym,0.5,79.5,rn50,16,Table 1\n"
        "nlprompt,oxford_pets,sym,0.5,70.0,RN50,,Table 1\n"
        "coop,dtd,sym,0.5,65.0,,,Table 1\n"
        "coop,eurosat,sym,0.5,50.0,RN50,16,Table 1\n"  # no run of ours: left out
        "nlprompt,dtd,sym,0.25,90.0,ViT-B/16,16,Table 2\n"  # another backbone: left out
        "coop,dtd,sym,0.25,90.0,RN50,4,Table 3\n"  # other shots: left out
    )
    out = write_report(db, tmp_path / "report", paper=paper, latex=True).folder
    compared = {(r["dataset"], r["method"]): r for r in read_csv(out / "published.csv")}
    assert set(compared) == {
        ("dtd", "nlprompt"), ("oxford_pets", "nlprompt"), ("dtd", "coop"), ("Average", "nlprompt")
    }  # fmt: skip
    row = compared[("dtd", "nlprompt")]
    assert float(row["published"]) == 79.5
    assert float(row["diff"]) == pytest.approx(81.0 - 79.5)
    assert row["published_in_ci"] == "1"  # 79.5 in [78.5, 83.5]
    assert compared[("oxford_pets", "nlprompt")]["published_in_ci"] == "0"  # 70.0 < 72.0
    assert compared[("dtd", "coop")]["published_in_ci"] == "0"
    # the Average's published number: the mean of the datasets' published numbers
    avg = compared[("Average", "nlprompt")]
    assert float(avg["published"]) == pytest.approx((79.5 + 70.0) / 2)
    assert float(avg["diff"]) == pytest.approx(statistics.fmean([81.0, 77.0]) - 74.75)
    table = {
        (r["dataset"], float(r["noise_rate"]), r["method"]): r for r in read_csv(out / "table.csv")
    }
    assert table[("dtd", 0.5, "coop")]["published"] == "65.000000"
    assert table[("dtd", 0.25, "coop")]["published"] == ""
    assert table[("dtd", 0.25, "nlprompt")]["published"] == ""
    md = (out / "published.md").read_text()
    assert "| dtd | sym | 50% | nlprompt | 81.00 ± 1.00 |" in md and "| +1.50 | yes |" in md
    assert r"\bottomrule" in (out / "published.tex").read_text()
    assert "[published.md](published.md)" in (out / "index.md").read_text()


def test_shipped_published_file_reads_and_cites_its_source():
    published = load_published(SHIPPED)
    header = [line for line in SHIPPED.read_text().splitlines() if line.startswith("#")]
    assert any("arXiv:2603.11617" in line for line in header)
    assert published.get("dtd", "sym", 0.5, "nlprompt").accuracy == 55.17
    assert published.get("caltech101", "asym", 0.25, "coop").accuracy == 75.23
    assert all(
        n.source and n.backbone == "RN50" and n.shots == 16
        for ns in published.numbers.values()
        for n in ns
    )


def test_selection_is_stated_and_separates_runs(tmp_path):
    db = tmp_path / "sel.sqlite"
    with ResultsStore(db) as store:
        for seed in (1, 2):
            add_run(store, f"l{seed}", "coop", "dtd", 0.5, seed, 60.0 + seed)
            add_run(store, f"b{seed}", "coop", "dtd", 0.5, seed, 62.0 + seed, select="best-val")
    out = write_report(db, tmp_path / "report").folder
    labels = {r["method"] for r in read_csv(out / "table.csv")}
    assert labels == {"coop (select=last)", "coop (select=best-val)"}  # 2 and 2: both named
    index = (out / "index.md").read_text()
    assert "the epoch best on the validation split with its noisy labels in 2 runs" in index
    assert "the last epoch (as CoOp and the noisy-label papers report) in 2 runs" in index


BAD_PAPERS = [
    ("unknown-column", "dataset,noise_type,rate,method,accuracy,year\ndtd,sym,0.5,coop,1,2024\n",
     "has unknown column(s) 'year'"),
    ("missing-column", "dataset,noise_type,rate,accuracy\ndtd,sym,0.5,1\n",
     "lacks the column(s) method"),
    ("unknown-method", "dataset,noise_type,rate,method,accuracy\ndtd,sym,0.5,CoOp,60\n",
     "line 2: unknown method 'CoOp'"),
    ("unknown-dataset", "dataset,noise_type,rate,method,accuracy\nDTD,sym,0.5,coop,60\n",
     "line 2: unknown dataset 'DTD'"),
    ("rate-as-percent", "dataset,noise_type,rate,method,accuracy\ndtd,sym,50,coop,60\n",
     "rate '50' is not a number in [0, 1)"),
    ("accuracy-not-number", "# c\ndataset,noise_type,rate,method,accuracy\ndtd,sym,0.5,coop,n/a\n",
     "line 3: accuracy 'n/a' is not a number"),
    ("two-numbers", "dataset,noise_type,rate,method,accuracy\ndtd,sym,0.5,coop,60\n"
     "dtd,sym,0.50,coop,61\n", "a second number"),
    ("shots-not-whole", "dataset,noise_type,rate,method,accuracy,shots\ndtd,sym,0.5,coop,60,1.5\n",
     "shots '1.5' is not a positive whole number"),
    ("header-only", "dataset,noise_type,rate,method,accuracy\n", "holds a header but no numbers"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "fragment"), [b[1:] for b in BAD_PAPERS], ids=[b[0] for b in BAD_PAPERS]
)
def test_bad_paper_file_is_one_line_and_writes_nothing(db, tmp_path, capsys, text, fragment):
    paper = tmp_path / "paper.csv"
    paper.write_text(text)
    out = tmp_path / "report"
    assert main(["report", "--db", str(db), "--out", str(out), "--paper", str(paper)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert ";" in err[0]  # the fix follows
    assert not out.exists()


def test_latex_on_an_empty_store_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.sqlite"
    ResultsStore(empty).close()
    out = tmp_path / "report"
    assert main(["report", "--db", str(empty), "--out", str(out), "--latex"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: results database {empty} holds no finished runs; run a sweep into it first"
    ]
    assert not out.exists()


def test_missing_or_non_utf8_paper_file_is_one_line(db, tmp_path, capsys):
    out = tmp_path / "report"
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("dataset,noise_type,rate,method,accuracy\n# caf\xe9\n".encode("latin-1"))
    for paper, fragment in ((tmp_path / "nope.csv", "not found"), (latin1, "is not UTF-8 text")):
        assert main(["report", "--db", str(db), "--out", str(out), "--paper", str(paper)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0] and ";" in err[0], err
    assert not out.exists()
