"""A sweep worker killed from outside (OOM killer, ``kill -9``): the sweep recovers quietly.

The killed run is recorded as failed and the sweep goes on; at exit Python must
not print multiprocessing's "leaked semaphore" warning (issue 19.7): a worker
holds no named semaphore that only it could release.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys

import pytest
from conftest import db_rows, sweep_args, wait_until


@pytest.mark.slow
def test_a_killed_worker_fails_its_run_and_leaves_no_leaked_semaphore(colour_dataset, tmp_path):
    db = tmp_path / "k.sqlite"
    args = sweep_args(db, colour_dataset, "--jobs", "1", "--set", "optim.epochs=12")
    args += ["--runs-dir", str(tmp_path / "runs"), "--set", f"data.cache_dir={tmp_path / 'c'}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "visprompt", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def worker_in_epoch_2() -> int | None:
        try:
            rows = db_rows(
                db,
                "SELECT worker_pid FROM runs WHERE status = 'running' AND "
                "(SELECT COUNT(*) FROM epochs WHERE run_id = runs.id) >= 2",
            )
        except sqlite3.Error:  # not created yet
            return None
        return rows[0]["worker_pid"] if rows and rows[0]["worker_pid"] else None

    try:
        assert wait_until(lambda: worker_in_epoch_2() or proc.poll() is not None, timeout=240)
        pid = worker_in_epoch_2()
        assert pid is not None, "the sweep ended before a run was in flight"
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1  # one run failed, the others finished
    statuses = [r["status"] for r in db_rows(db, "SELECT status FROM runs")]
    assert statuses.count("failed") == 1 and statuses.count("done") == len(statuses) - 1
    assert "leaked semaphore" not in err, err[-2000:]
