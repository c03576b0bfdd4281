"""Checkpoints: prompt weights (safetensors) and full training state, written atomically.

A run folder holds

* ``prompt.safetensors`` - the method's weights (what ``eval``/``predict`` load),
  with metadata naming the method, the backbone fingerprint and the class list
  so a mismatch is caught before any weight is used;
* ``state.pt`` - everything a resume needs in one file: weights, optimiser and
  scheduler state, RNG states, the method's extra state and the metric history.

Each file is written to a temporary name and renamed, so a crash never leaves
a half-written file; ``state.pt`` is written first, so the weights file is never
newer than the state it belongs to.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from visprompt.errors import VispromptError
from visprompt.fileio import atomic_write_bytes, atomic_write_text  # noqa: F401 - re-exported

STATE_FILE = "state.pt"
WEIGHTS_FILE = "prompt.safetensors"


def check_writable(path: str | Path, option: str, kind: str = "file") -> None:
    """Fail now, before any work, when ``path`` cannot be written as a ``file`` or ``folder``.

    One line naming the option (e.g. ``--csv``) and the fix; called at the edge so
    that a bad output path never costs a finished computation.
    """
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise VispromptError(f"{option} {path} is a folder; give the path of a file to write")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise VispromptError(f"{option} {path} is a file; give a folder to write into")
    ancestor = path if kind == "folder" else path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise VispromptError(
            f"{option} {path} cannot be created: {ancestor} is a file, not a folder; "
            "choose another path"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise VispromptError(
            f"{option} {path} cannot be written: folder {ancestor} is not writable; "
            "choose a writable location"
        )


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(run_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))


def load_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    if not path.is_file():
        raise VispromptError(
            f"no checkpoint in {run_dir} (missing {STATE_FILE}); start the run without --resume"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise VispromptError(
            f"run folder {run_dir} is damaged: checkpoint {STATE_FILE} cannot be read "
            f"({type(exc).__name__}); train the run again with --overwrite"
        ) from None


def save_weights(path: Path, weights: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    meta = {k: json.dumps(v) for k, v in metadata.items()}
    atomic_write_bytes(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.is_file():
        raise VispromptError(f"no prompt weights at {path}; is the run finished?")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = {k: json.loads(v) for k, v in (fh.metadata() or {}).items()}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open API
    except Exception as exc:  # safetensors raises its own error types; JSON errors too
        raise VispromptError(
            f"run folder {path.parent} is damaged: {path.name} cannot be read "
            f"({type(exc).__name__}); train the run again with --overwrite (or --resume it "
            f"if {STATE_FILE} is intact)"
        ) from None
    return tensors, meta
