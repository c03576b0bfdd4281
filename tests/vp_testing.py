"""Helpers for tests: tiny generated image datasets and small run configs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

#: Colours of the generated classes: easy to tell apart, so learning is visible.
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "yellow": (230, 220, 30),
}


def make_folder_dataset(
    root: Path, n_train: int = 12, n_test: int = 6, size: int = 40, seed: int = 0
) -> Path:
    """``root/train/<class>/*.png`` and ``root/test/<class>/*.png``: noisy colour patches."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for name, rgb in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(
                    np.array(rgb)[None, None, :] + rng.normal(0, 40, (size, size, 3)), 0, 255
                ).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i:03d}.png")
    return root


def rel_err(a, b) -> float:
    """``max|a - b| / max|b|``: the float error relative to the reference's scale.

    Tests compare floats with this rather than an absolute tolerance, so that a
    comparison holds for tensors of any magnitude, on any CPU and thread count.
    """
    a = torch.as_tensor(np.array(a, dtype=np.float64) if not torch.is_tensor(a) else a.detach())
    b = torch.as_tensor(np.array(b, dtype=np.float64) if not torch.is_tensor(b) else b.detach())
    a, b = a.double(), b.double()
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = b.abs().max()
    return float((a - b).abs().max() / scale) if scale > 0 else float((a - b).abs().max())


def tree_snapshot(*roots: Path, ignore: tuple[str, ...] = ()) -> dict[str, tuple[int, bytes]]:
    """Every file under ``roots`` -> (mode, content): compare before/after to prove
    that a refused command left nothing behind and harmed nothing.

    ``ignore``: path fragments left out (e.g. the feature cache's stat index, which a
    command may extend for files it already hashed without changing what is served).
    """
    out: dict[str, tuple[int, bytes]] = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            if any(part in str(path) for part in ignore):
                continue
            if path.is_file() and not path.is_symlink():
                out[str(path)] = (path.stat().st_mode, path.read_bytes())
            elif path.is_dir():
                out[str(path) + "/"] = (path.stat().st_mode, b"")
    return out


def run_overrides(dataset_root: Path, method: str = "coop", **extra) -> list[str]:
    """``--set`` overrides of a small, fast run on the colour dataset."""
    values = {
        "backbone.name": "tiny-vit",
        "backbone.device": "cpu",
        "data.dataset": "folder",
        "data.root": str(dataset_root),
        "data.shots": 8,
        "data.num_views": 2,
        "method.name": method,
        "optim.epochs": 3,
        "optim.batch_size": 8,
        "optim.lr": 0.05,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def train_command(out: Path, overrides: list[str], *extra: str) -> list[str]:
    """``python -m visprompt train`` with ``--set`` overrides, as a subprocess argv."""
    cmd = [sys.executable, "-m", "visprompt", "train", "--out", str(out), "--quiet"]
    for item in overrides:
        cmd += ["--set", item]
    return cmd + list(extra)


def kill_then_resume(
    command: Callable[..., list[str]], tmp: Path, min_epochs: int, total_epochs: int
) -> tuple[Path, Path]:
    """Train ``command(out)`` uninterrupted into ``tmp/full``; start it again into
    ``tmp/killed``, SIGKILL it once ``min_epochs`` epochs are written, then run
    ``command(out, "--resume")``. Returns both run folders (the same process
    setup for both runs, so their floats are comparable bit for bit).
    """
    from visprompt.engine.run_folder import read_metrics  # late: conftest imports this module

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    full, killed = tmp / "full", tmp / "killed"
    done = subprocess.run(command(full), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    proc = subprocess.Popen(
        command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if len(read_metrics(killed)) >= min_epochs:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "result.json").exists(), "the run finished before it was killed"
    assert min_epochs <= len(read_metrics(killed)) < total_epochs
    again = subprocess.run(
        command(killed, "--resume"), env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    return full, killed


def assert_same_run(a: Path, b: Path) -> None:
    """Two run folders ended with the same result, epoch metrics and weights."""
    from safetensors.torch import load_file

    from visprompt.engine.run_folder import read_metrics

    ra = json.loads((a / "result.json").read_text())
    rb = json.loads((b / "result.json").read_text())
    assert ra["test_accuracy"] == rb["test_accuracy"]

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert strip(read_metrics(a)) == strip(read_metrics(b))
    wa, wb = load_file(a / "prompt.safetensors"), load_file(b / "prompt.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def tiny_open_clip_config(quick_gelu: bool) -> dict:
    """open_clip model config of ``visprompt.backbone.tiny_clip("vit")``'s layout."""
    return {
        "embed_dim": 32,
        "quick_gelu": quick_gelu,
        "vision_cfg": {
            "layers": 2,
            "width": 64,
            "head_width": 64,
            "patch_size": 8,
            "image_size": 32,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 64,
            "heads": 1,
            "layers": 2,
        },
    }
