"""Helpers for tests: tiny generated image datasets and small run configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
