"""The SQLite results store: one row per run, one per epoch, one per purification step.

A results database is a plain SQLite file (stdlib :mod:`sqlite3`) shared by a
sweep's parent process and its worker processes:

* WAL journal, so readers (``runs list``, ``report``, the sweep parent) never
  wait for a writer and a writer never waits for readers;
* ``synchronous=FULL`` and every write in its own ``BEGIN IMMEDIATE``
  transaction, so a process killed at any instant (SIGKILL included) loses at
  most the transaction it had not committed, never a row already written;
* a busy timeout: a writer waits up to ``timeout`` seconds for another one,
  then fails with a one-line :class:`VispromptError`.

Schema (version :data:`SCHEMA_VERSION`, kept in ``PRAGMA user_version``; the
file is marked with ``PRAGMA application_id`` = :data:`APPLICATION_ID`):

``runs``
    ``id`` (the run's :meth:`~visprompt.config.RunConfig.run_id`), ``sweep``,
    ``status`` (one of :data:`STATUSES`), ``config`` (resolved config, JSON),
    the columns reports filter on (``method``, ``dataset``, ``backbone``,
    ``shots``, ``noise_type``, ``noise_rate``, ``seed``), ``run_dir``,
    timings (``created_at``, ``started_at``, ``finished_at``, ``updated_at`` as
    Unix seconds; ``wall_seconds``, ``seconds_per_epoch``), ``attempts``,
    ``resumed``, final metrics (``test_accuracy``, ``test_macro_accuracy``,
    ``result`` = the run's result.json), ``error``, ``host``, ``owner_pid``
    (the sweep process that claimed it), ``worker_pid``, ``versions`` (JSON),
    ``cache_misses`` / ``cache_hits`` (feature-cache entries the run computed /
    loaded), ``device`` (the torch device the run computed on, e.g. ``cuda:0``)
    and ``visible_gpus`` (the ``CUDA_VISIBLE_DEVICES`` its process saw, so
    ``cuda:0`` with ``2`` is physical GPU 2), ``executor`` (``slurm`` or
    ``local`` for a run submitted through submitit; NULL for a local worker),
    ``job_id`` (its submitit / SLURM job id, which says whether a ``running``
    row is still running), ``log_tail`` (the last lines of a failed run's
    log or job stderr).
``epochs``
    ``(run_id, epoch)`` primary key, the usual metrics as columns (``lr``,
    ``train_loss``, ``train_acc``, ``train_acc_true``, ``test_accuracy``,
    ``test_macro_accuracy``, ``seconds``) and every key in ``metrics`` (JSON).
``purification``
    ``(run_id, epoch)`` primary key, the clean/noisy split statistics of OT
    methods: ``clean_fraction``, ``precision``, ``recall``,
    ``noisy_precision``, ``noisy_recall``, ``pseudo_acc`` and every
    ``purify_*`` key in ``metrics`` (JSON).

A database of schema 1 gains the columns of schema 2 (``device`` ...
``log_tail``) the first time it is opened; nothing else changes.

Opening a database written by a newer visprompt (higher schema version), a
file that is not SQLite, a SQLite file of another program, or a path in a
missing folder raises a one-line :class:`VispromptError`.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from visprompt.errors import VispromptError
from visprompt.robust.quality import PURIFY_COLUMNS  # the purify_<name> epoch keys, as columns

SCHEMA_VERSION = 2
#: Marks a file as a visprompt results database ("VPRS").
APPLICATION_ID = 0x56505253
STATUSES = ("pending", "running", "done", "failed", "interrupted")
#: Default seconds a writer waits for another writer before giving up.
DEFAULT_TIMEOUT = 30.0

#: Epoch metric keys stored as columns (all keys also go to the JSON column).
EPOCH_COLUMNS = (
    "lr",
    "train_loss",
    "train_acc",
    "train_acc_true",
    "test_accuracy",
    "test_macro_accuracy",
    "seconds",
)

_SCHEMA = f"""
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    sweep TEXT,
    status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    config TEXT NOT NULL,
    method TEXT,
    dataset TEXT,
    backbone TEXT,
    shots INTEGER,
    noise_type TEXT,
    noise_rate REAL,
    seed INTEGER,
    run_dir TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    resumed INTEGER NOT NULL DEFAULT 0,
    wall_seconds REAL,
    seconds_per_epoch REAL,
    test_accuracy REAL,
    test_macro_accuracy REAL,
    result TEXT,
    error TEXT,
    host TEXT,
    owner_pid INTEGER,
    worker_pid INTEGER,
    versions TEXT,
    cache_misses INTEGER,
    cache_hits INTEGER,
    {", ".join(f"{c} TEXT" for c in ("device", "visible_gpus", "executor", "job_id", "log_tail"))}
);
CREATE INDEX runs_status ON runs (status);
CREATE INDEX runs_dataset_method ON runs (dataset, method);
CREATE TABLE epochs (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    {", ".join(f"{c} REAL" for c in EPOCH_COLUMNS)},
    metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE purification (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    {", ".join(f"{c} REAL" for c in PURIFY_COLUMNS)},
    metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
"""

_JSON_FIELDS = ("config", "result", "versions")
#: Columns schema 2 added to ``runs`` (all TEXT); a schema-1 file gains them on open.
V2_COLUMNS = ("device", "visible_gpus", "executor", "job_id", "log_tail")
#: Characters of a failed run's log kept in ``log_tail``.
LOG_TAIL_CHARS = 4000


def hostname() -> str:
    return socket.gethostname()


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id exists on this machine."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def backbone_label(config: dict) -> str:
    """A short name of a config's backbone: its name, arch, or checkpoint file stem."""
    b = config.get("backbone") or {}
    if b.get("name"):
        return str(b["name"])
    if b.get("arch"):
        return str(b["arch"])
    if b.get("checkpoint"):
        return Path(str(b["checkpoint"])).stem
    return "?"


def _finite(value: Any) -> float | None:
    """A float for a numeric metric (None for missing or non-numeric values)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class ResultsStore:
    """A connection to a results database (one per process; not shared across processes).

    Args:
        path: the database file.
        timeout: seconds a write waits for another writer before failing.
        create: create the file and its schema when missing (False: a missing
            or empty database is an error, for commands that only read).

    Raises:
        VispromptError: the folder is missing, the file is not a visprompt
            results database, its schema is newer than this visprompt's, or it
            stays locked beyond ``timeout``.
    """

    def __init__(
        self, path: str | Path, timeout: float = DEFAULT_TIMEOUT, create: bool = True
    ) -> None:
        self.path = Path(path).expanduser()
        self.timeout = float(timeout)
        folder = self.path.parent
        if not folder.is_dir():
            raise VispromptError(
                f"folder {folder} of the results database does not exist; create it or "
                "give another --db"
            )
        if self.path.is_dir():
            raise VispromptError(
                f"results database {self.path} is a folder; give a file path for --db"
            )
        if not create and not self.path.is_file():
            raise VispromptError(
                f"results database {self.path} not found; run `visprompt sweep --db "
                f"{self.path} ...` first or check the --db path"
            )
        self.conn = sqlite3.connect(
            str(self.path), timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        self.conn.row_factory = sqlite3.Row
        try:
            with self._errors():
                self._prepare(create)
        except BaseException:
            self.conn.close()
            raise

    # ------------------------------------------------------------ connection

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn sqlite3 errors a person can cause into one-line VispromptErrors."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise VispromptError(
                    f"results database {self.path} is locked by another process (waited "
                    f"{self.timeout:g} s); wait for it to finish, raise --db-timeout, or use "
                    "another --db"
                ) from None
            raise VispromptError(
                f"results database {self.path} cannot be used ({text}); check the file and "
                "its folder's permissions, or use another --db"
            ) from None
        except sqlite3.DatabaseError as exc:
            raise VispromptError(
                f"{self.path} is not a usable SQLite database ({exc}); give the path of a "
                "visprompt results database or of a new file"
            ) from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: ``BEGIN IMMEDIATE`` takes the write lock up front.

        Taking the lock at the start (not at the first write) means two writers
        never deadlock upgrading read locks; the busy timeout makes a waiting
        writer retry for up to ``timeout`` seconds.
        """
        with self._errors():
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def _prepare(self, create: bool) -> None:
        # One read transaction, so that the three reads see the same state: another
        # process may create the schema between them (then its tables would be seen
        # without its application id, as if the file belonged to another program).
        self.conn.execute("BEGIN")
        try:
            version, app_id, tables = self._identity()
        finally:
            self.conn.execute("COMMIT")
        if version > SCHEMA_VERSION:
            raise VispromptError(
                f"results database {self.path} was written by a newer visprompt (schema "
                f"{version} > {SCHEMA_VERSION}); upgrade visprompt or use another --db"
            )
        ours = app_id == APPLICATION_ID
        if (tables or version) and not ours:
            raise VispromptError(
                f"{self.path} is an SQLite database of another program (tables: "
                f"{', '.join(tables[:5]) or 'none'}); give the path of a visprompt results "
                "database or of a new file"
            )
        if version == 0:
            if not create:
                raise VispromptError(
                    f"results database {self.path} holds no visprompt results; run a sweep "
                    "into it first"
                )
            self._create_schema()
        elif version < SCHEMA_VERSION:
            self._migrate()
        self.conn.execute("PRAGMA foreign_keys = ON")
        self.conn.execute("PRAGMA synchronous = FULL")

    def _identity(self) -> tuple[int, int, list[str]]:
        """``(user_version, application_id, table names)`` of the open file."""
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        app_id = self.conn.execute("PRAGMA application_id").fetchone()[0]
        tables = [
            r[0]
            for r in self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return version, app_id, tables

    def _create_schema(self) -> None:
        # WAL must be switched on outside a transaction; it is persistent in the file.
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            if self.conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                # one statement at a time: executescript() would COMMIT our transaction
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")

    def _migrate(self) -> None:
        """Schema 1 -> 2: add the device / job columns (once, under the write lock)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            if self.conn.execute("PRAGMA user_version").fetchone()[0] == 1:
                have = {r[1] for r in self.conn.execute("PRAGMA table_info(runs)")}
                for column in V2_COLUMNS:
                    if column not in have:
                        self.conn.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT")
                self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ------------------------------------------------------------ reading

    def _decode(self, row: sqlite3.Row) -> dict[str, Any]:
        out = dict(row)
        for key in _JSON_FIELDS:
            if key in out and out[key] is not None:
                out[key] = json.loads(out[key])
        return out

    def statuses(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """``id -> {status, host, owner_pid, error, attempts, executor, job_id}`` of the runs."""
        wanted = list(ids)
        out: dict[str, dict[str, Any]] = {}
        with self._errors():
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for row in self.conn.execute(
                    "SELECT id, status, host, owner_pid, error, attempts, executor, job_id "
                    "FROM runs "
                    f"WHERE id IN ({marks})",
                    chunk,
                ):
                    out[row["id"]] = dict(row)
        return out

    def resolve_id(self, prefix: str) -> str:
        """The full id of the one run whose id starts with ``prefix``."""
        with self._errors():
            rows = self.conn.execute(
                "SELECT id FROM runs WHERE id LIKE ? ESCAPE '\\' ORDER BY id LIMIT 6",
                (prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",),
            ).fetchall()
        if not rows:
            raise VispromptError(
                f"no run with id {prefix!r} in {self.path}; see `visprompt runs list --db "
                f"{self.path}`"
            )
        if len(rows) > 1:
            shown = ", ".join(r[0] for r in rows[:5])
            raise VispromptError(
                f"run id {prefix!r} is ambiguous ({shown}, ...); give more characters"
            )
        return rows[0][0]

    def get_run(self, run_id: str) -> dict[str, Any]:
        """One run's row (JSON columns decoded); ``run_id`` may be a unique prefix."""
        full = self.resolve_id(run_id)
        with self._errors():
            row = self.conn.execute("SELECT * FROM runs WHERE id = ?", (full,)).fetchone()
        return self._decode(row)

    def list_runs(
        self,
        status: Sequence[str] | None = None,
        dataset: Sequence[str] | None = None,
        method: Sequence[str] | None = None,
        sweep: str | None = None,
    ) -> list[dict[str, Any]]:
        """Runs (JSON columns decoded), oldest first, optionally filtered."""
        where, args = [], []
        for column, values in (("status", status), ("dataset", dataset), ("method", method)):
            if values:
                where.append(f"{column} IN ({','.join('?' * len(values))})")
                args.extend(values)
        if sweep:
            where.append("sweep = ?")
            args.append(sweep)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._errors():
            rows = self.conn.execute(
                f"SELECT * FROM runs {clause} ORDER BY created_at, id", args
            ).fetchall()
        return [self._decode(r) for r in rows]

    def epochs(self, run_id: str) -> list[dict[str, Any]]:
        """The run's per-epoch metric dicts, in epoch order."""
        with self._errors():
            rows = self.conn.execute(
                "SELECT metrics FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,)
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def purification(self, run_id: str) -> list[dict[str, Any]]:
        """The run's purification rows (``epoch`` + the columns), in epoch order."""
        cols = ", ".join(PURIFY_COLUMNS)
        with self._errors():
            rows = self.conn.execute(
                f"SELECT epoch, {cols} FROM purification WHERE run_id = ? ORDER BY epoch",
                (run_id,),
            ).fetchall()
        return [dict(r) for r in rows]

    def count(self) -> int:
        with self._errors():
            return int(self.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    # ------------------------------------------------------------ sweep parent

    def add_pending(self, runs: Iterable[tuple[str, dict, str, str]]) -> int:
        """Insert ``(run_id, config, sweep, run_dir)`` rows not yet in the database.

        Returns the number of rows inserted; existing rows are left as they are.
        """
        now = time.time()
        rows = [
            _pending_row(run_id, config, sweep, run_dir, now)
            for run_id, config, sweep, run_dir in runs
        ]
        with self.transaction() as conn:
            before = conn.total_changes
            conn.executemany(_INSERT_PENDING.replace("INSERT", "INSERT OR IGNORE", 1), rows)
            return conn.total_changes - before

    def claim(
        self,
        run_id: str,
        config: dict,
        sweep: str,
        run_dir: str,
        owner_pid: int,
        job_alive: JobAlive | None = None,
    ) -> str:
        """Mark a run as running for this sweep process, atomically.

        Returns ``"claimed"``, or ``"done"`` / ``"busy"`` when the run finished
        meanwhile or is being run by another live sweep on this machine (or by
        a live submitit job: ``job_alive`` says, see :func:`owner_is_live`).
        """
        host = hostname()
        now = time.time()
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT status, host, owner_pid, executor, job_id FROM runs WHERE id = ?",
                (run_id,),
            ).fetchone()
            if row is not None:
                if row["status"] == "done":
                    return "done"
                if row["status"] == "running" and owner_is_live(
                    row, own_pid=owner_pid, job_alive=job_alive
                ):
                    return "busy"
            if row is None:
                conn.execute(_INSERT_PENDING, _pending_row(run_id, config, sweep, run_dir, now))
            conn.execute(
                "UPDATE runs SET status = 'running', sweep = ?, config = ?, run_dir = ?, "
                "host = ?, owner_pid = ?, worker_pid = NULL, error = NULL, log_tail = NULL, "
                "executor = NULL, job_id = NULL, updated_at = ? WHERE id = ?",
                (sweep, json.dumps(config, sort_keys=True), run_dir, host, owner_pid, now, run_id),
            )
        return "claimed"

    def mark_submitted(
        self,
        jobs: Iterable[tuple[str, str]],
        executor: str,
        owner_pid: int,
        resumed: Iterable[str] = (),
    ) -> None:
        """``(run_id, job_id)`` pairs were submitted through ``executor``: they are running.

        One transaction for the whole batch (a SLURM array is submitted at
        once); ``resumed`` ids continue from a checkpoint in their folder.
        """
        again = set(resumed)
        now, host = time.time(), hostname()
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE runs SET status = 'running', executor = ?, job_id = ?, host = ?, "
                "owner_pid = ?, worker_pid = NULL, error = NULL, log_tail = NULL, "
                "started_at = ?, updated_at = ?, attempts = attempts + 1, "
                "resumed = resumed + ? WHERE id = ? AND status != 'done'",
                [
                    (executor, job_id, host, owner_pid, now, now, int(run_id in again), run_id)
                    for run_id, job_id in jobs
                ],
            )

    # ------------------------------------------------------------ workers

    def mark_started(
        self, run_id: str, worker_pid: int, resumed: bool, epochs: Sequence[dict] = ()
    ) -> None:
        """A worker began the run: count the attempt and set its epoch rows.

        ``epochs`` are the epochs already in the run folder (a resumed run's
        ``metrics.jsonl``); they replace the run's epoch rows, so a run that
        starts over never shows epochs of an earlier attempt.
        """
        now = time.time()
        with self.transaction() as conn:
            conn.execute(
                "UPDATE runs SET worker_pid = ?, started_at = ?, updated_at = ?, "
                "attempts = attempts + 1, resumed = resumed + ?, error = NULL WHERE id = ?",
                (worker_pid, now, now, int(resumed), run_id),
            )
            _replace_epochs(conn, run_id, epochs)

    def record_epoch(self, run_id: str, metrics: dict) -> None:
        """Write (or overwrite) one epoch's rows as soon as the epoch ends."""
        with self.transaction() as conn:
            _upsert_epoch(conn, run_id, metrics)
            conn.execute("UPDATE runs SET updated_at = ? WHERE id = ?", (time.time(), run_id))

    def finish(
        self,
        run_id: str,
        result: dict,
        epochs: Sequence[dict],
        cache_misses: int | None = None,
        cache_hits: int | None = None,
    ) -> None:
        """Record a finished run: final metrics, result.json and its full epoch history.

        Idempotent: recording the same run folder twice leaves the same row and
        the same epoch rows (``--collect`` relies on it). The device columns
        come from result.json's ``device`` record.
        """
        now = time.time()
        device = result.get("device") or {}
        with self.transaction() as conn:
            _replace_epochs(conn, run_id, epochs)
            conn.execute(
                "UPDATE runs SET status = 'done', finished_at = ?, updated_at = ?, "
                "wall_seconds = ?, seconds_per_epoch = ?, test_accuracy = ?, "
                "test_macro_accuracy = ?, result = ?, versions = ?, backbone = ?, error = NULL, "
                "cache_misses = ?, cache_hits = ?, device = ?, visible_gpus = ?, log_tail = NULL "
                "WHERE id = ?",
                (
                    now,
                    now,
                    _finite(result.get("wall_seconds")),
                    _finite(result.get("seconds_per_epoch")),
                    _finite(result.get("test_accuracy")),
                    _finite(result.get("test_macro_accuracy")),
                    json.dumps(result, sort_keys=True),
                    json.dumps(result.get("versions") or {}, sort_keys=True),
                    result.get("backbone"),
                    cache_misses,
                    cache_hits,
                    device.get("device"),
                    device.get("cuda_visible_devices"),
                    run_id,
                ),
            )

    def fail(
        self, run_id: str, error: str, status: str = "failed", log_tail: str | None = None
    ) -> None:
        """Record a failed (or interrupted) run with its one-line error and its log's tail."""
        if status not in ("failed", "interrupted"):
            raise ValueError(f"not a failure status: {status}")
        now = time.time()
        tail = log_tail[-LOG_TAIL_CHARS:] if log_tail else None
        with self.transaction() as conn:
            conn.execute(
                "UPDATE runs SET status = ?, error = ?, finished_at = ?, updated_at = ?, "
                "log_tail = COALESCE(?, log_tail) WHERE id = ? AND status != 'done'",
                (status, " ".join(error.split())[:2000], now, now, tail, run_id),
            )


#: ``job_alive(row) -> bool``: whether the submitit job of a ``running`` row still runs.
JobAlive = Callable[[Any], bool]


def read_tail(path: str | Path, chars: int = LOG_TAIL_CHARS) -> str | None:
    """The last ``chars`` characters of a log file (None when there is none)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 4 * chars))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    return text[-chars:] or None


def owner_is_live(
    row: sqlite3.Row | dict, own_pid: int | None = None, job_alive: JobAlive | None = None
) -> bool:
    """Whether whatever runs a ``running`` run is still alive.

    A run submitted through submitit (``job_id`` set) is alive while its job
    is: ``job_alive(row)`` asks the scheduler (without it such a run counts as
    alive, so nothing is ever run twice). Otherwise the sweep process that
    claimed it must be alive; only checkable on the same machine, a claim by
    another host counts as stale (local sweeps over one database from several
    machines are not supported; use ``--executor slurm``).
    """
    keys = row.keys()
    if "job_id" in keys and row["job_id"]:
        return True if job_alive is None else bool(job_alive(row))
    if row["host"] != hostname():
        return False
    pid = row["owner_pid"]
    return pid != own_pid and pid_alive(pid)


#: A new run row in state 'pending' (values: see :func:`_pending_row`).
_INSERT_PENDING = (
    "INSERT INTO runs (id, sweep, status, config, method, dataset, backbone, shots, "
    "noise_type, noise_rate, seed, run_dir, created_at, updated_at) "
    "VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _pending_row(run_id: str, config: dict, sweep: str, run_dir: str, now: float) -> tuple:
    config_json = json.dumps(config, sort_keys=True)
    return (run_id, sweep, config_json, *_summary_columns(config), run_dir, now, now)


def _summary_columns(config: dict) -> tuple:
    data, noise = config.get("data") or {}, config.get("noise") or {}
    return (
        (config.get("method") or {}).get("name"),
        data.get("dataset"),
        backbone_label(config),
        data.get("shots"),
        noise.get("type"),
        noise.get("rate"),
        data.get("seed"),
    )


def _upsert_epoch(conn: sqlite3.Connection, run_id: str, metrics: dict) -> None:
    epoch = int(metrics["epoch"])
    conn.execute(
        f"INSERT OR REPLACE INTO epochs (run_id, epoch, {', '.join(EPOCH_COLUMNS)}, metrics) "
        f"VALUES (?, ?, {', '.join('?' * len(EPOCH_COLUMNS))}, ?)",
        (
            run_id,
            epoch,
            *(_finite(metrics.get(c)) for c in EPOCH_COLUMNS),
            json.dumps(metrics, sort_keys=True),
        ),
    )
    purify = {k: v for k, v in metrics.items() if k.startswith("purify_")}
    if purify:
        conn.execute(
            f"INSERT OR REPLACE INTO purification (run_id, epoch, {', '.join(PURIFY_COLUMNS)}, "
            f"metrics) VALUES (?, ?, {', '.join('?' * len(PURIFY_COLUMNS))}, ?)",
            (
                run_id,
                epoch,
                *(_finite(purify.get(f"purify_{c}")) for c in PURIFY_COLUMNS),
                json.dumps(purify, sort_keys=True),
            ),
        )


def _replace_epochs(conn: sqlite3.Connection, run_id: str, epochs: Sequence[dict]) -> None:
    """Make the run's epoch rows exactly ``epochs`` (inside the caller's transaction)."""
    for table in ("epochs", "purification"):
        conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
    for metrics in epochs:
        _upsert_epoch(conn, run_id, metrics)
