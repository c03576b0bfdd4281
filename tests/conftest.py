"""Shared fixtures: tiny generated image datasets and run configs for the tiny backbones."""

from __future__ import annotations

import os

# before torch is imported: sleeping OpenMP waits (see visprompt/__init__.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from vp_testing import make_folder_dataset  # noqa: E402


@pytest.fixture(scope="session")
def colour_dataset(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("colours"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own feature cache (never the user's ~/.cache)."""
    monkeypatch.setenv("VISPROMPT_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(2)
