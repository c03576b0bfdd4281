"""Scale-out (issue 15): GPU slots, submitit jobs, --collect, the progress line, schema 2.

Everything runs on a CPU: placement uses fake GPU ids (``VISPROMPT_FAKE_GPU_COUNT``
with runs on ``backbone.device: cpu``) and the SLURM path runs through
submitit's local executor, which is the same submit / watch / ingest code.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_SWEEP, db_rows, wait_until

from visprompt.cli import main
from visprompt.config import identity_dict
from visprompt.engine.run import train_run
from visprompt.engine.run_folder import read_metrics
from visprompt.experiments.runner.devices import FAKE_GPUS_ENV, gpu_slots, slot_order
from visprompt.experiments.runner.jobs import JOB_INFO
from visprompt.experiments.runner.progress import SweepProgress, estimate_eta, format_eta
from visprompt.experiments.store import SCHEMA_VERSION, V2_COLUMNS, ResultsStore
from visprompt.experiments.sweep import load_sweep

#: result.json keys that depend on the clock or on which process computed the features
VARYING = ("wall_seconds", "seconds_per_epoch", "feature_cache", "device")


def rows_by_id(db: Path) -> dict[str, dict]:
    return {r["id"]: r for r in db_rows(db, "SELECT * FROM runs")}


def epochs_of(db: Path, run_id: str) -> list[dict]:
    rows = db_rows(db, "SELECT metrics FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,))
    return [{k: v for k, v in json.loads(r["metrics"]).items() if k != "seconds"} for r in rows]


def same_numbers(row: dict, reference: dict) -> None:
    """The run's outcome, independent of how (and how fast) it was run."""
    got, want = json.loads(row["result"]), json.loads(reference["result"])
    assert {k: v for k, v in got.items() if k not in VARYING} == {
        k: v for k, v in want.items() if k not in VARYING
    }
    for key in ("status", "test_accuracy", "test_macro_accuracy", "method", "seed"):
        assert row[key] == reference[key], key
    # the same run (the feature cache folder is not part of a run's identity)
    assert identity_dict(json.loads(row["config"])) == identity_dict(
        json.loads(reference["config"])
    )


def sweep_file(tmp_path: Path, root: Path, name: str, **fixed) -> Path:
    """A sweep over the tiny sweep's base: the same run ids for the same grid points."""
    base = yaml.safe_load(TINY_SWEEP.read_text())["base"]
    base["data"]["root"] = str(root)
    grid = {"method.name": ["coop", "zeroshot"], "noise.rate": [0.5], "data.seed": [1]}
    grid.update({k: [v] for k, v in fixed.items()})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": base, "grid": grid}))
    return path


def local_args(sweep: Path, db: Path, cache: Path, *extra: str) -> list[str]:
    args = ["sweep", "--config", str(sweep), "--db", str(db), "--quiet", "--threads", "1"]
    args += ["--executor", "local", "--poll-seconds", "0.1", "--cache-dir", str(cache)]
    return args + list(extra)


# ---------------------------------------------------------------- fast


def test_slots_interleave_gpus_and_the_eta_follows_finished_runs():
    assert gpu_slots([0, 1], 2) == ["0", "0", "1", "1"]
    assert [gpu_slots([0, 1], 2)[i] for i in slot_order(gpu_slots([0, 1], 2))] == [
        "0",
        "1",
        "0",
        "1",
    ]
    # 2 finished runs of 10 s and 20 s; 3 queued + 1 running through 2 slots: 15 * 4 / 2
    assert estimate_eta([10.0, 20.0], left=4, parallel=2) == 30.0
    assert estimate_eta([], left=4, parallel=2) is None
    assert (format_eta(30.0), format_eta(3725.0), format_eta(None)) == ("0:30", "1:02:05", "?")
    bar = SweepProgress("s", total=5, enabled=False, parallel=2)
    bar.start("a")
    bar.start("b")
    bar.end("a", ok=True)
    bar.end("b", ok=False)
    bar.start("c")
    assert bar.line().startswith("s: 1/5 done, 1 running, 1 failed, 2 queued, ETA ")


def test_slurm_jobs_ask_for_the_resources_given(tmp_path, monkeypatch):
    """The sbatch file submitit would submit (no cluster here: srun/sbatch are stand-ins)."""
    from visprompt.experiments.runner.jobs import ClusterOptions, make_executor

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("srun", "sbatch"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    options = ClusterOptions(partition="gpu", gpus_per_run=2, time_min=90, cpus_per_run=8)
    options.extra = {"account": "abc"}
    executor = make_executor(options, tmp_path / "runs", "tiny")
    text = executor._make_submission_file_text("python -m x", "uid")
    for line in (
        "--partition=gpu",
        "--gpus-per-node=2",
        "--time=90",
        "--cpus-per-task=8",
        "--account=abc",
        "--signal=USR2@120",  # time to write the epoch's checkpoint before a pre-emption
        f"--error={tmp_path / 'runs' / 'submitit' / '%j'}/%j_0_log.err",
    ):
        assert f"#SBATCH {line}\n" in text, line


def test_an_ended_job_is_failed_with_its_error_or_interrupted_with_its_stderr_tail(tmp_path):
    from visprompt.experiments.runner.cluster import settle
    from visprompt.experiments.runner.jobs import JOB_ERROR, job_stderr

    runs = load_sweep(TINY_SWEEP, [f"data.root={tmp_path}"]).runs[:3]
    runs_dir = tmp_path / "runs"
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.add_pending(
            (r.run_id, r.config.to_dict(), "tiny", str(runs_dir / r.run_id)) for r in runs
        )
        jobs = [(r.run_id, f"77_{i}") for i, r in enumerate(runs)]
        store.mark_submitted(jobs, "slurm", owner_pid=1)
        for run, (_, job_id) in zip(runs, jobs, strict=True):
            (runs_dir / run.run_id).mkdir(parents=True)
            stderr = job_stderr(runs_dir, job_id)
            stderr.parent.mkdir(parents=True)
            stderr.write_text("".join(f"line {n}\n" for n in range(5000)) + f"end of {job_id}\n")
        (runs_dir / runs[0].run_id / JOB_ERROR).write_text(json.dumps({"error": "no data here"}))
        rows = store.statuses(r.run_id for r in runs)
        states = [
            settle(store, rows[r.run_id], r, runs_dir / r.run_id, alive=alive)
            for r, alive in zip(runs, (False, False, True), strict=True)
        ]
        got = [store.get_run(r.run_id) for r in runs]
    assert states == ["failed", "interrupted", "running"]
    assert got[0]["status"] == "failed" and got[0]["error"] == "no data here"
    assert got[1]["status"] == "interrupted" and "slurm job 77_1 ended before" in got[1]["error"]
    for row, job_id in zip(got[:2], ("77_0", "77_1"), strict=True):  # the last 4000 characters
        assert row["log_tail"].endswith(f"end of {job_id}\n") and len(row["log_tail"]) == 4000
    assert got[2]["status"] == "running" and got[2]["log_tail"] is None


def test_a_schema_1_database_gains_the_device_and_job_columns(tmp_path):
    import sqlite3

    db = tmp_path / "old.sqlite"
    with ResultsStore(db) as store:
        store.add_pending([("a1", {"method": {"name": "coop"}}, "s", "/runs/a1")])
    conn = sqlite3.connect(db)  # make it the file visprompt's schema 1 wrote
    for column in V2_COLUMNS:
        conn.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with ResultsStore(db, create=False) as store:
        run = store.get_run("a1")
        store.mark_submitted([("a1", "123_4")], "slurm", owner_pid=1)
        again = store.get_run("a1")
    assert run["status"] == "pending" and all(run[c] is None for c in V2_COLUMNS)
    assert (again["status"], again["executor"], again["job_id"]) == ("running", "slurm", "123_4")
    assert db_rows(db, "PRAGMA user_version")[0]["user_version"] == SCHEMA_VERSION == 2


def test_two_writers_racing_on_one_feature_cache_key_leave_a_whole_entry(tmp_path):
    """Two nodes computing the same features write the same key: each write is atomic."""
    from visprompt.data.features import SplitFeatures, _load, _save_atomic

    path = tmp_path / "ab" / "key.safetensors"
    versions = [
        SplitFeatures(image=torch.full((64, 512), float(v)), ok=torch.ones(64, dtype=torch.bool))
        for v in range(2)
    ]
    seen, stop = [], threading.Event()

    def reader() -> None:
        while not stop.is_set():
            if path.is_file():
                seen.append(float(_load(path).image.unique().item()))  # never a torn file

    def writer(v: int) -> None:
        for _ in range(20):
            _save_atomic(path, versions[v])

    threads = [threading.Thread(target=reader)] + [
        threading.Thread(target=writer, args=(v,)) for v in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    assert seen and set(seen) <= {0.0, 1.0}
    assert [p.name for p in path.parent.iterdir()] == ["key.safetensors"]  # no temp files left


# ---------------------------------------------------------------- processes


@pytest.mark.slow
def test_gpu_slots_never_hold_two_runs_at_once(tiny_sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(FAKE_GPUS_ENV, "2")  # two pretend GPUs; the runs compute on the CPU
    db = tmp_path / "gpus.sqlite"
    args = ["sweep", "--config", str(TINY_SWEEP), "--db", str(db), "--quiet", "--threads", "1"]
    args += ["--set", f"data.root={tiny_sweep.root}", "--cache-dir", str(tiny_sweep.cache)]
    assert main([*args, "--gpus", "0,1", "--runs-per-gpu", "2"]) == 0
    rows = rows_by_id(db)
    reference = rows_by_id(tiny_sweep.db)
    assert set(rows) == set(reference)
    for run_id, row in rows.items():
        same_numbers(row, reference[run_id])
        # the device each run's own process saw, in result.json and in the store
        seen = json.loads(Path(row["run_dir"], "result.json").read_text())["device"]
        assert seen["cuda_visible_devices"] == row["visible_gpus"] and row["device"] == "cpu"
    assert {r["visible_gpus"] for r in rows.values()} == {"0", "1"}
    slot_gpu: dict[int, str] = {}
    for row in rows.values():  # a worker is one slot: always the same GPU
        assert slot_gpu.setdefault(row["worker_pid"], row["visible_gpus"]) == row["visible_gpus"]
    assert len(slot_gpu) <= 4

    runs = list(rows.values())
    for a in runs:  # at each run's start: what else runs in its slot, and on its GPU
        now = [b for b in runs if b["started_at"] <= a["started_at"] < b["finished_at"]]
        assert [b["worker_pid"] for b in now].count(a["worker_pid"]) == 1
        assert [b["visible_gpus"] for b in now].count(a["visible_gpus"]) <= 2  # --runs-per-gpu


@pytest.mark.slow
def test_local_executor_gives_the_rows_and_numbers_of_a_worker_sweep(tiny_sweep, tmp_path):
    sweep = sweep_file(tmp_path, tiny_sweep.root, "jobs")
    db, cache = tmp_path / "jobs.sqlite", tmp_path / "cache"
    assert main(local_args(sweep, db, cache, "--slurm-array-parallelism", "2")) == 0
    rows, reference = rows_by_id(db), rows_by_id(tiny_sweep.db)
    assert len(rows) == 2
    for run_id, row in rows.items():
        same_numbers(row, reference[run_id])
        assert epochs_of(db, run_id) == epochs_of(tiny_sweep.db, run_id)
        assert row["executor"] == "local" and row["job_id"] and row["attempts"] == 1
        info = json.loads(Path(row["run_dir"], JOB_INFO).read_text())
        assert info["job_id"] == row["job_id"] and info["pid"] != os.getpid()
    # one job computed each feature set, before the job that reads it started
    by_method = {r["method"]: r for r in rows.values()}
    assert by_method["zeroshot"]["cache_misses"] == 0 and by_method["coop"]["cache_misses"] == 3
    assert main(local_args(sweep, db, cache)) == 0  # a rerun submits nothing
    assert rows_by_id(db) == rows


@pytest.mark.slow
def test_a_job_killed_mid_run_is_resubmitted_and_resumes_from_its_checkpoint(
    tiny_sweep, tmp_path, capsys
):
    sweep = sweep_file(tmp_path, tiny_sweep.root, "killed", **{"method.name": "coop"})
    args = local_args(sweep, tmp_path / "k.sqlite", tmp_path / "cache", "--set", "optim.epochs=12")
    (run,) = load_sweep(sweep, ["optim.epochs=12"]).runs
    folder = tmp_path / "k-runs" / run.run_id
    codes: list[int] = []
    sweeping = threading.Thread(target=lambda: codes.append(main(args)))
    sweeping.start()
    try:
        assert wait_until(
            lambda: len(read_metrics(folder)) >= 1 or not sweeping.is_alive(), 120, every=0.02
        )
        pid = json.loads((folder / JOB_INFO).read_text())["pid"]
        os.kill(pid, signal.SIGKILL)  # the node died, the job was cancelled, ...
    finally:
        sweeping.join(120)
    assert codes == [1]
    (row,) = rows_by_id(tmp_path / "k.sqlite").values()
    assert row["status"] == "interrupted" and "ended before the run finished" in row["error"]
    assert 1 <= len(read_metrics(folder)) < 12 and not (folder / "result.json").exists()
    capsys.readouterr()
    assert (
        main(["runs", "list", "--db", str(tmp_path / "k.sqlite"), "--status", "interrupted"]) == 0
    )
    assert f"local {row['job_id']}" in capsys.readouterr().out

    assert main(args) == 0  # resubmitted: only this run, resumed from its checkpoint
    (row,) = rows_by_id(tmp_path / "k.sqlite").values()
    assert row["status"] == "done" and row["attempts"] == 2 and row["resumed"] == 1
    assert "resuming" in (folder / "train.log").read_text()
    torch.set_num_threads(1)  # as in the jobs: bit-identical sums
    fresh = train_run(run.config, tmp_path / "fresh", progress=False, log=lambda m: None)
    assert row["test_accuracy"] == fresh["test_accuracy"]
    assert epochs_of(tmp_path / "k.sqlite", run.run_id) == [
        {k: v for k, v in m.items() if k != "seconds"} for m in read_metrics(tmp_path / "fresh")
    ]


@pytest.mark.slow
def test_collect_after_a_crash_ingests_what_finished_and_nothing_twice(tiny_sweep, tmp_path):
    runs_dir = tmp_path / "runs"
    shutil.copytree(tiny_sweep.runs_dir, runs_dir)
    reference = rows_by_id(tiny_sweep.db)
    unfinished = sorted(i for i, r in reference.items() if r["method"] == "coop")[:2]
    for run_id in unfinished:  # their jobs were killed before the end
        (runs_dir / run_id / "result.json").unlink()
    db = tmp_path / "c.sqlite"
    sweep = load_sweep(TINY_SWEEP, [f"data.root={tiny_sweep.root}"])
    dead = 2**22 + 12345  # no such process: the submitter and its jobs are gone
    with ResultsStore(db) as store:  # what a submitter killed mid-sweep leaves behind
        store.add_pending(
            (r.run_id, r.config.to_dict(), "tiny", str(runs_dir / r.run_id)) for r in sweep.runs
        )
        store.mark_submitted([(r.run_id, str(dead)) for r in sweep.runs], "local", owner_pid=dead)
    args = ["sweep", "--config", str(TINY_SWEEP), "--db", str(db), "--quiet"]
    args += ["--set", f"data.root={tiny_sweep.root}", "--runs-dir", str(runs_dir), "--collect"]
    assert main(args) == 1  # two runs were lost
    rows = rows_by_id(db)
    for run_id, row in rows.items():
        if run_id in unfinished:
            assert row["status"] == "interrupted" and row["test_accuracy"] is None
        else:
            same_numbers(row, reference[run_id])
            assert epochs_of(db, run_id) == epochs_of(tiny_sweep.db, run_id)
    epochs = db_rows(db, "SELECT COUNT(*) AS n FROM epochs")[0]["n"]
    assert epochs == sum(len(read_metrics(runs_dir / i)) for i in rows if i not in unfinished)
    assert main(args) == 1
    assert rows_by_id(db) == rows  # collecting again writes nothing: no row, no epoch twice
    assert db_rows(db, "SELECT COUNT(*) AS n FROM epochs")[0]["n"] == epochs
    assert db_rows(db, "PRAGMA integrity_check")[0]["integrity_check"] == "ok"


@pytest.mark.slow
def test_a_rerun_watches_the_jobs_still_running_and_submits_nothing_twice(tiny_sweep, tmp_path):
    import subprocess
    import sys

    runs_dir = tmp_path / "runs"
    shutil.copytree(tiny_sweep.runs_dir, runs_dir)
    sweep = load_sweep(TINY_SWEEP, [f"data.root={tiny_sweep.root}"])
    still = sweep.runs[-1].run_id  # its job runs on: no result yet
    (runs_dir / still / "result.json").unlink()
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    db = tmp_path / "w.sqlite"
    with ResultsStore(db) as store:  # the first submitter died; its jobs did not
        store.add_pending(
            (r.run_id, r.config.to_dict(), "tiny", str(runs_dir / r.run_id)) for r in sweep.runs
        )
        store.mark_submitted([(r.run_id, str(job.pid)) for r in sweep.runs], "local", 1)
    args = ["sweep", "--config", str(TINY_SWEEP), "--db", str(db), "--quiet"]
    args += ["--set", f"data.root={tiny_sweep.root}", "--runs-dir", str(runs_dir)]
    args += ["--executor", "local", "--poll-seconds", "0.1"]
    codes: list[int] = []
    sweeping = threading.Thread(target=lambda: codes.append(main(args)))
    try:
        sweeping.start()
        done = "SELECT COUNT(*) AS n FROM runs WHERE status = 'done'"
        # collected, planned (the live job's run is not resubmitted) and now watching
        watching = runs_dir / "submitit"  # made when the submitting part starts
        assert wait_until(lambda: db_rows(db, done)[0]["n"] == 7 and watching.is_dir(), 60)
        assert sweeping.is_alive()
    finally:
        job.kill()  # ... which then dies without finishing its run
        job.wait()
        sweeping.join(60)
    assert codes == [1]
    rows = rows_by_id(db)
    assert rows[still]["status"] == "interrupted"
    assert {r["job_id"] for r in rows.values()} == {str(job.pid)}  # nothing was submitted
    assert {r["attempts"] for r in rows.values()} == {1}
