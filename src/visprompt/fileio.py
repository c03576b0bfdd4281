"""Atomic file writes: a temporary file in the target folder, then a rename.

A leaf module (it imports nothing of visprompt) so that every layer can write
files that are never seen half-written: the run folder and checkpoints
(:mod:`visprompt.engine.checkpoint`), the frozen-feature cache
(:mod:`visprompt.data.features`), reports and label-issue exports.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates the file 0600; a written file must follow the umask like any
        # other tool's (0644 under umask 022), or colleagues cannot read a run's results.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))
