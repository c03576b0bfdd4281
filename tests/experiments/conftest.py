"""Shared fixtures of the experiments tests: one real tiny sweep, run once per session."""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from visprompt.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY_SWEEP = REPO / "configs" / "sweeps" / "tiny.yaml"


def sweep_args(db: Path, dataset_root: Path, *extra: str, cache: Path | None = None) -> list[str]:
    """``visprompt sweep`` arguments for the shipped tiny sweep over the colour dataset.

    One torch thread per worker on every machine: float sums over a different number
    of threads differ in the last bits, and tests compare runs bit for bit.
    """
    args = ["sweep", "--config", str(TINY_SWEEP), "--db", str(db), "--quiet", "--threads", "1"]
    args += ["--set", f"data.root={dataset_root}"]
    if cache is not None:
        args += ["--set", f"data.cache_dir={cache}"]
    return args + list(extra)


def db_rows(db: Path, sql: str, args: tuple = ()) -> list[dict]:
    """Rows of a read-only query, opened the way an outside tool would."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


def cache_entries(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.safetensors"))


def processes_with_env(marker: str) -> list[int]:
    """Live (non-zombie) processes whose environment mentions ``marker`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_until(predicate, timeout: float = 60.0, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


@dataclass
class Swept:
    """The shipped tiny sweep (8 runs), run once with 2 workers."""

    db: Path
    runs_dir: Path
    cache: Path
    root: Path
    exit_code: int


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, colour_dataset) -> Swept:
    base = tmp_path_factory.mktemp("tiny-sweep")
    db = base / "results.sqlite"
    code = main(sweep_args(db, colour_dataset, "--jobs", "2", cache=base / "cache"))
    return Swept(
        db=db,
        runs_dir=base / "results-runs",
        cache=base / "cache",
        root=colour_dataset,
        exit_code=code,
    )
