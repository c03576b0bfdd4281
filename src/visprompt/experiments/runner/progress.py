"""The sweep's one live progress line: done / running / failed / queued and an ETA.

Both ways of running a sweep (local workers, submitit jobs) show the same
line, e.g. ``paper-rn50: 412/876 done, 8 running, 3 failed, 453 queued, ETA
2:41:07``. The ETA comes from the runs that finished in this sweep: their
mean duration times the runs left, divided by how many run at once (the
slots, or the jobs seen running). Before the first run finishes it reads
``ETA ?``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm.auto import tqdm


def format_eta(seconds: float | None) -> str:
    """``1:02:03`` / ``4:05``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def estimate_eta(durations: list[float], left: int, parallel: int) -> float | None:
    """Seconds until ``left`` runs are through ``parallel`` slots, at the finished runs' pace."""
    if not durations:
        return None
    if left <= 0:
        return 0.0
    return sum(durations) / len(durations) * left / max(1, parallel)


class SweepProgress:
    """The live line (a tqdm bar drawn as text only; nothing shown when ``enabled`` is False)."""

    def __init__(self, name: str, total: int, enabled: bool = True, parallel: int = 1) -> None:
        self.name, self.total, self.parallel = name, total, parallel
        self.done = self.failed = self.running = 0
        self.durations: list[float] = []
        self.started: dict[str, float] = {}
        self.bar: Any = tqdm(
            total=total, bar_format="{desc}", disable=not enabled, leave=True, file=sys.stderr
        )
        self.refresh()

    @property
    def queued(self) -> int:
        return max(0, self.total - self.done - self.failed - self.running)

    def line(self) -> str:
        left = self.queued + self.running
        parallel = max(self.parallel, self.running)
        eta = estimate_eta(self.durations, left, parallel)
        return (
            f"{self.name}: {self.done}/{self.total} done, {self.running} running, "
            f"{self.failed} failed, {self.queued} queued, ETA {format_eta(eta)}"
        )

    def refresh(self) -> None:
        self.bar.set_description_str(self.line(), refresh=True)

    def start(self, run_id: str) -> None:
        self.started[run_id] = time.monotonic()
        self.running += 1
        self.refresh()

    def end(self, run_id: str, ok: bool, skipped: bool = False) -> None:
        """A run ended (``ok``: finished); a skipped run counts as done, not timed."""
        began = self.started.pop(run_id, None)
        if began is not None:
            self.running -= 1
            if ok and not skipped:
                self.durations.append(time.monotonic() - began)
        if ok:
            self.done += 1
        else:
            self.failed += 1
        self.refresh()

    def stop(self, run_id: str) -> None:
        """A run stopped without an outcome (interrupted): it is queued again."""
        if self.started.pop(run_id, None) is not None:
            self.running -= 1
        self.refresh()

    def write(self, text: str) -> None:
        self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
