"""The SQLite results store: schema, transactions, concurrent writers, claims, bad databases."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import pytest
from conftest import sweep_args

from visprompt.cli import main
from visprompt.errors import VispromptError
from visprompt.experiments.store import APPLICATION_ID, SCHEMA_VERSION, ResultsStore

CONFIG = {
    "backbone": {"name": "tiny-vit"},
    "data": {"dataset": "folder", "shots": 8, "seed": 2},
    "noise": {"type": "sym", "rate": 0.5},
    "method": {"name": "coop"},
}


def epoch(n: int, **extra) -> dict:
    return {"epoch": n, "lr": 0.1 / n, "train_loss": 1.0 / n, "seconds": 0.5, **extra}


def test_schema_and_run_lifecycle(tmp_path):
    db = tmp_path / "r.sqlite"
    with ResultsStore(db) as store:
        assert store.add_pending([("a1", CONFIG, "s", "/runs/a1")]) == 1
        assert store.add_pending([("a1", CONFIG, "s", "/runs/a1")]) == 0  # kept as it is
        assert store.claim("a1", CONFIG, "s", "/runs/a1", owner_pid=1234567) == "claimed"
        store.mark_started("a1", worker_pid=42, resumed=False)
        store.record_epoch("a1", epoch(1, purify_precision=0.9, purify_recall=0.8))
        store.record_epoch("a1", epoch(2, purify_precision=0.95, purify_recall=0.85))
        store.record_epoch("a1", epoch(2, purify_precision=0.97, purify_recall=0.86))  # again
        run = store.get_run("a1")
        assert run["status"] == "running" and run["worker_pid"] == 42 and run["attempts"] == 1
        assert [m["epoch"] for m in store.epochs("a1")] == [1, 2]
        assert store.purification("a1")[1]["precision"] == 0.97
        result = {
            "test_accuracy": 71.5,
            "test_macro_accuracy": 70.0,
            "backbone": "tiny-vit",
            "wall_seconds": 3.0,
            "versions": {"torch": "x"},
        }
        store.finish("a1", result, [epoch(1), epoch(2), epoch(3)], cache_misses=2, cache_hits=1)
        run = store.get_run("a1")
    assert run["status"] == "done" and run["test_accuracy"] == 71.5
    assert run["result"] == result and run["versions"] == {"torch": "x"}
    assert (run["method"], run["dataset"], run["noise_rate"], run["seed"]) == (
        "coop",
        "folder",
        0.5,
        2,
    )
    assert run["cache_misses"] == 2 and run["finished_at"] >= run["started_at"]
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    epochs = conn.execute("SELECT epoch, lr FROM epochs WHERE run_id = 'a1' ORDER BY epoch")
    assert [tuple(r) for r in epochs] == [(1, 0.1), (2, 0.05), (3, 0.1 / 3)]
    # finish() replaced the epochs with the run folder's history: no purify rows left over
    assert conn.execute("SELECT COUNT(*) FROM purification").fetchone()[0] == 0
    conn.close()
    with ResultsStore(db, create=False) as store:
        assert store.get_run("a")["id"] == "a1"  # unique prefix
        with pytest.raises(VispromptError, match="no run with id 'zz'"):
            store.get_run("zz")
        assert store.claim("a1", CONFIG, "s", "/runs/a1", owner_pid=1) == "done"


def test_claims_respect_live_sweeps_and_take_over_dead_ones(tmp_path):
    import os

    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.add_pending([("b", CONFIG, "s", "/b")])
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        # claimed by a sweep that is gone (e.g. killed) -> the next sweep takes it over
        assert store.claim("b", CONFIG, "s", "/b", owner_pid=dead.pid) == "claimed"
        assert store.claim("b", CONFIG, "s", "/b", owner_pid=os.getpid()) == "claimed"
        # claimed by a live sweep on this host (this process) -> busy for any other one
        assert store.claim("b", CONFIG, "s", "/b", owner_pid=os.getppid()) == "busy"
        assert store.claim("b", CONFIG, "s", "/b", owner_pid=os.getpid()) == "claimed"
        store.mark_started("b", 1, resumed=False, epochs=[epoch(1), epoch(2)])
        store.mark_started("b", 1, resumed=True, epochs=[epoch(1)])  # a later attempt
        assert [m["epoch"] for m in store.epochs("b")] == [1]
        store.fail("b", "ValueError: bad\nthing")
        run = store.get_run("b")
    assert run["status"] == "failed" and run["error"] == "ValueError: bad thing"
    assert run["attempts"] == 2 and run["resumed"] == 1


WRITER = textwrap.dedent(
    """
    import sys
    from visprompt.experiments.store import ResultsStore
    db, run_id = sys.argv[1], sys.argv[2]
    store = ResultsStore(db, timeout=60)
    store.add_pending([(run_id, {"method": {"name": "coop"}}, "s", "/x")])
    for e in range(1, 61):
        store.record_epoch(run_id, {"epoch": e, "train_loss": e / 10})
    store.finish(run_id, {"test_accuracy": float(len(run_id))}, store.epochs(run_id))
    """
)


def test_concurrent_writer_processes_lose_nothing(tmp_path):
    db = tmp_path / "r.sqlite"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), f"run{i}"]) for i in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    with ResultsStore(db, create=False) as store:
        runs = store.list_runs()
        assert sorted(r["id"] for r in runs) == [f"run{i}" for i in range(4)]
        assert {r["status"] for r in runs} == {"done"}
        for r in runs:
            assert [m["epoch"] for m in store.epochs(r["id"])] == list(range(1, 61))


def test_bad_databases_are_one_line_errors(tmp_path):
    newer = tmp_path / "newer.sqlite"
    ResultsStore(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(VispromptError) as info:
        ResultsStore(newer)
    assert str(info.value) == (
        f"results database {newer} was written by a newer visprompt (schema "
        f"{SCHEMA_VERSION + 5} > {SCHEMA_VERSION}); upgrade visprompt or use another --db"
    )
    with pytest.raises(
        VispromptError,
        match=r"folder .*/nowhere of the results database does "
        r"not exist; create it or give another --db",
    ):
        ResultsStore(tmp_path / "nowhere" / "r.sqlite")
    with pytest.raises(VispromptError, match="not found; run `visprompt sweep"):
        ResultsStore(tmp_path / "absent.sqlite", create=False)
    assert not (tmp_path / "absent.sqlite").exists()
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all, just some text" * 50)
    with pytest.raises(VispromptError, match="not a usable SQLite database"):
        ResultsStore(junk)
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE things (x)")
    conn.commit()
    conn.close()
    with pytest.raises(VispromptError, match=r"another program \(tables: things\)"):
        ResultsStore(other)
    with pytest.raises(VispromptError, match="is a folder"):
        ResultsStore(tmp_path)


def test_locked_database_fails_after_the_timeout(tmp_path):
    db = tmp_path / "r.sqlite"
    ResultsStore(db).close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with ResultsStore(db, timeout=0.2) as store:
            assert store.count() == 0  # WAL: reading still works
            with pytest.raises(VispromptError) as info:
                store.add_pending([("c", CONFIG, "s", "/c")])
        assert str(info.value) == (
            f"results database {db} is locked by another process (waited 0.2 s); wait for it "
            "to finish, raise --db-timeout, or use another --db"
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with ResultsStore(db) as store:  # usable again, nothing half-written
        assert store.add_pending([("c", CONFIG, "s", "/c")]) == 1


def test_sweep_on_a_locked_database_is_a_one_line_error(tmp_path, capsys, colour_dataset):
    db = tmp_path / "r.sqlite"
    ResultsStore(db).close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        code = main(sweep_args(db, colour_dataset, "--db-timeout", "0.2"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: results database {db} is locked")
    assert not (tmp_path / "r-runs").exists()  # nothing started, nothing written
    with ResultsStore(db) as store:
        assert store.count() == 0
