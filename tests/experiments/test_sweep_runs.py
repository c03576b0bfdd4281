"""Sweeps for real: 2 worker processes, skipping done runs, SIGKILL and resume, failures."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    TINY_SWEEP,
    cache_entries,
    db_rows,
    processes_with_env,
    sweep_args,
    wait_until,
)

from visprompt.cli import main
from visprompt.config import validate_run_config
from visprompt.engine.run import train_run
from visprompt.engine.run_folder import read_metrics
from visprompt.experiments.store import ResultsStore
from visprompt.experiments.sweep import load_sweep

#: Every test here runs sweeps with worker processes (some SIGKILLed): ``make test`` only.
pytestmark = pytest.mark.slow

NO_TIME = ("seconds",)


def strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in NO_TIME} for r in rows]


def runs_by_id(db: Path) -> dict[str, dict]:
    return {r["id"]: r for r in db_rows(db, "SELECT * FROM runs")}


def epochs_of(db: Path, run_id: str) -> list[dict]:
    rows = db_rows(db, "SELECT metrics FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,))
    return [json.loads(r["metrics"]) for r in rows]


def test_sweep_with_two_workers_fills_the_database(tiny_sweep):
    assert tiny_sweep.exit_code == 0
    runs = runs_by_id(tiny_sweep.db)
    expected = {
        r.run_id: r.config for r in load_sweep(TINY_SWEEP, [f"data.root={tiny_sweep.root}"]).runs
    }
    assert set(runs) == set(expected) and len(runs) == 8
    for run_id, row in runs.items():
        folder = tiny_sweep.runs_dir / run_id
        result = json.loads((folder / "result.json").read_text())
        assert row["status"] == "done" and row["error"] is None
        assert row["run_dir"] == str(folder) and row["attempts"] == 1 and row["resumed"] == 0
        assert row["test_accuracy"] == result["test_accuracy"]
        assert json.loads(row["result"]) == result
        assert row["host"] and json.loads(row["versions"])["torch"]
        assert (row["method"], row["noise_rate"], row["seed"]) == (
            result["method"],
            result["noise_rate"],
            result["seed"],
        )
        # per-epoch rows are the run folder's metrics.jsonl, exactly
        assert epochs_of(tiny_sweep.db, run_id) == read_metrics(folder)
        assert len(read_metrics(folder)) == (3 if row["method"] == "coop" else 0)
    # the image encoder ran once per cache entry: per data seed the clean and the augmented
    # training features, and once the test features shared by both seeds - never twice
    misses = sum(r["cache_misses"] for r in runs.values())
    assert misses == 2 * 2 + 1 == len(cache_entries(tiny_sweep.cache))


def test_rerunning_the_sweep_does_no_work(tiny_sweep, capsys):
    before = runs_by_id(tiny_sweep.db)
    folders = sorted(p.name for p in tiny_sweep.runs_dir.iterdir())
    code = main(sweep_args(tiny_sweep.db, tiny_sweep.root, "--jobs", "2", cache=tiny_sweep.cache))
    out = capsys.readouterr().out
    assert code == 0
    assert "sweep tiny: 8 runs - 0 new, 8 done, 0 failed" in out and "nothing to run" in out
    assert runs_by_id(tiny_sweep.db) == before
    assert sorted(p.name for p in tiny_sweep.runs_dir.iterdir()) == folders


def test_runs_list_and_show(tiny_sweep, capsys):
    db = str(tiny_sweep.db)
    assert main(["runs", "list", "--db", db]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("ID") and lines[-1] == "8 runs (8 done)" and len(lines) == 10
    assert main(["runs", "list", "--db", db, "--status", "failed", "--method", "coop"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "0 runs (none)"
    coop = next(r for r in runs_by_id(tiny_sweep.db).values() if r["method"] == "coop")
    assert main(["runs", "show", coop["id"][:6], "--db", db]) == 0
    out = capsys.readouterr().out
    assert f"run {coop['id']}  (done)" in out and f"{coop['test_accuracy']:.2f}%" in out
    assert "epochs:" in out and "config:" in out and "tiny-vit" in out
    assert main(["runs", "show", coop["id"], "--db", db, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == coop["id"] and [e["epoch"] for e in shown["epochs"]] == [1, 2, 3]
    assert main(["runs", "show", "ffffffffff", "--db", db]) == 2
    assert capsys.readouterr().err.startswith("error: no run with id 'ffffffffff'")
    assert main(["runs", "list", "--db", str(tiny_sweep.db.parent / "none.sqlite")]) == 2
    assert "not found" in capsys.readouterr().err


def test_sigkill_mid_sweep_loses_nothing_and_the_rerun_resumes(tiny_sweep, tmp_path, capsys):
    import os

    db, cache = tmp_path / "killed.sqlite", tmp_path / "feature-cache"
    runs_dir = tmp_path / "killed-runs"
    marker = os.environ["VISPROMPT_CACHE"]  # unique to this test: finds its processes
    # 12 epochs: long enough to kill a run mid-way, after it wrote a few epochs
    args = sweep_args(db, tiny_sweep.root, "--jobs", "2", "--set", "optim.epochs=12", cache=cache)
    proc = subprocess.Popen(
        [sys.executable, "-m", "visprompt", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def in_flight() -> list[str]:
        try:
            done = db_rows(db, "SELECT COUNT(*) AS n FROM runs WHERE status = 'done'")[0]["n"]
            rows = db_rows(
                db,
                "SELECT id FROM runs WHERE status = 'running' AND "
                "(SELECT COUNT(*) FROM epochs WHERE run_id = runs.id) >= 2",
            )
        except sqlite3.Error:  # not created yet
            return []
        return [r["id"] for r in rows] if done >= 1 else []

    try:
        wait_until(lambda: bool(in_flight()) or proc.poll() is not None, timeout=240, every=0.02)
        assert proc.poll() is None, "the sweep ended before a run was in flight"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = {r["id"]: r for r in db_rows(db, "SELECT * FROM runs WHERE status = 'done'")}
    running = [r["id"] for r in db_rows(db, "SELECT id FROM runs WHERE status = 'running'")]
    assert before and running and len(before) + len(running) < 8
    # a run killed after its first checkpoint resumes; one killed earlier simply restarts
    interrupted = [run_id for run_id in running if epochs_of(db, run_id)]
    assert interrupted
    before_epochs = {run_id: epochs_of(db, run_id) for run_id in before}
    # the workers (and the forkserver) notice and exit: nothing keeps running
    assert wait_until(lambda: not processes_with_env(marker), timeout=30, every=0.1)

    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"8 runs - {8 - len(before)} new, {len(before)} done" in out
    after = runs_by_id(db)
    assert len(after) == 8 and {r["status"] for r in after.values()} == {"done"}
    for run_id, row in after.items():
        if run_id in before:  # rows written before the kill are untouched
            assert row == before[run_id] and epochs_of(db, run_id) == before_epochs[run_id]
        epochs = epochs_of(db, run_id)
        assert epochs == read_metrics(runs_dir / run_id)
        assert [e["epoch"] for e in epochs] == (
            list(range(1, 13)) if row["method"] == "coop" else []
        )
    # the runs killed mid-way resumed from their checkpoints and ended exactly where an
    # uninterrupted run ends (same thread count as the workers: bit-identical)
    torch.set_num_threads(1)
    for run_id in interrupted:
        assert after[run_id]["resumed"] == 1
        cfg = validate_run_config(yaml.safe_load((runs_dir / run_id / "config.yaml").read_text()))
        fresh = train_run(cfg, tmp_path / "fresh" / run_id, progress=False, log=lambda m: None)
        assert after[run_id]["test_accuracy"] == fresh["test_accuracy"]
        assert strip(epochs_of(db, run_id)) == strip(read_metrics(tmp_path / "fresh" / run_id))


def test_failed_runs_are_recorded_and_retried_and_stale_runs_resume(tiny_sweep, tmp_path, capsys):
    later = tmp_path / "later"  # the data folder of the bad run does not exist yet
    base = yaml.safe_load(TINY_SWEEP.read_text())["base"]
    base["data"]["root"] = str(tiny_sweep.root)
    fixed = {"method.name": "coop", "noise.rate": 0.25, "data.seed": 1}
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "name": "mixed",
                "base": base,
                "grids": [
                    {"name": "good", "set": fixed, "grid": {"optim.epochs": [3]}},
                    {
                        "name": "bad",
                        "set": {**fixed, "data.root": str(later)},
                        "grid": {"optim.epochs": [3]},
                    },
                ],
            }
        )
    )
    db, runs_dir = tmp_path / "r.sqlite", tmp_path / "r-runs"
    good, bad = load_sweep(sweep_file).runs
    assert good.run_id in runs_by_id(tiny_sweep.db)  # the same run as in the tiny sweep

    # a sweep killed during epoch 3 of the good run: its folder holds epochs 1-2, the
    # database heard of epoch 1 only, and its row still says running for a dead process
    class Killed(Exception):
        pass

    def kill_at_epoch_2(metrics: dict) -> None:
        if metrics["epoch"] == 2:
            raise Killed

    torch.set_num_threads(1)  # as in the sweep's workers: bit-identical sums
    with pytest.raises(Killed):
        train_run(
            good.config,
            runs_dir / good.run_id,
            progress=False,
            log=lambda m: None,
            on_epoch=kill_at_epoch_2,
        )
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with ResultsStore(db) as store:
        store.claim(
            good.run_id,
            good.config.to_dict(),
            "mixed",
            str(runs_dir / good.run_id),
            owner_pid=dead.pid,
        )
        store.mark_started(good.run_id, worker_pid=dead.pid, resumed=False)
        store.record_epoch(good.run_id, read_metrics(runs_dir / good.run_id)[0])

    args = ["sweep", "--config", str(sweep_file), "--db", str(db), "--quiet", "--threads", "1"]
    assert main(args) == 1  # one run failed; the sweep went on
    captured = capsys.readouterr()
    assert "2 runs - 2 new, 0 done, 0 failed (1 of the new continue from their run folder)" in (
        captured.out
    )
    assert f"failed {bad.run_id} (coop folder sym 0.25 seed 1 data.root={later} " in captured.err
    rows = runs_by_id(db)
    assert rows[bad.run_id]["status"] == "failed" and str(later) in rows[bad.run_id]["error"]
    assert "\n" not in rows[bad.run_id]["error"]
    # the failed run's log stays in the store (its train.log, whatever happens to the folder)
    assert f"run {bad.run_id} (fresh)" in rows[bad.run_id]["log_tail"]
    resumed = rows[good.run_id]
    assert resumed["status"] == "done" and resumed["resumed"] == 1 and resumed["attempts"] == 2
    assert "resuming" in (runs_dir / good.run_id / "train.log").read_text()
    reference = runs_by_id(tiny_sweep.db)[good.run_id]
    assert resumed["test_accuracy"] == reference["test_accuracy"]
    assert strip(epochs_of(db, good.run_id)) == strip(epochs_of(tiny_sweep.db, good.run_id))

    assert main(args) == 1  # failed runs are skipped without --retry-failed
    out = capsys.readouterr().out
    assert "2 runs - 0 new, 1 done, 1 failed" in out and "nothing to run" in out
    shutil.copytree(tiny_sweep.root, later)  # fix the cause, then retry
    assert main([*args, "--retry-failed"]) == 0
    assert "2 runs - 1 new, 1 done, 0 failed (1 failed to retry" in capsys.readouterr().out
    row = runs_by_id(db)[bad.run_id]
    assert row["status"] == "done" and row["error"] is None and row["attempts"] == 2
    assert len(epochs_of(db, bad.run_id)) == 3
