"""A run folder's files: names, readers and writers, and the checks before a run writes.

The run folder holds ``config.yaml`` (the resolved config), ``trainset.json``
(the few-shot training images with given and true labels), ``metrics.jsonl``
(one JSON object per epoch), ``state.pt`` + ``prompt.safetensors`` (the
checkpoint, every epoch) and ``result.json`` (written last: its presence means
the run finished).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from visprompt.config import RunConfig, diff_configs, identity_dict
from visprompt.data.features import (
    default_cache_dir,
)
from visprompt.engine import checkpoint as ckpt
from visprompt.errors import VispromptError

CONFIG_FILE = "config.yaml"
TRAINSET_FILE = "trainset.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
#: TensorBoard event files (:mod:`visprompt.engine.tracking`)
TENSORBOARD_DIR = "tensorboard"
#: the MLflow run a run folder logs into, so a resumed run continues it
MLFLOW_FILE = "mlflow.json"
RUN_FILES = (
    CONFIG_FILE,
    TRAINSET_FILE,
    METRICS_FILE,
    RESULT_FILE,
    ckpt.STATE_FILE,
    ckpt.WEIGHTS_FILE,
    MLFLOW_FILE,
)

Log = Callable[[str], None]


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def damaged(out: Path, name: str, problem: str) -> VispromptError:
    """The one-line error for a run-folder file that cannot be used."""
    return VispromptError(
        f"run folder {out} is damaged: {name} {problem}; train the run again with --overwrite "
        "(or restore the file)"
    )


def read_run_config(out: Path) -> dict:
    """The run's saved ``config.yaml`` as a dict; a damaged or empty file is one line."""
    try:
        raw = yaml.safe_load((out / CONFIG_FILE).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise damaged(out, CONFIG_FILE, "is not valid YAML") from None
    if not isinstance(raw, dict) or "method" not in raw:
        raise damaged(out, CONFIG_FILE, "holds no run configuration")
    return raw


def read_run_json(out: Path, name: str) -> Any:
    """A JSON file of the run folder (trainset.json, result.json); damage is one line."""
    try:
        return json.loads((out / name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise damaged(out, name, "is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise damaged(out, name, "is not valid JSON") from None


#: How errors name the feature cache's location.
CACHE_OPTION = "the feature cache folder (data.cache_dir or $VISPROMPT_CACHE)"


def cache_folder(cfg: RunConfig) -> Path:
    """Where a run's frozen features are cached."""
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()


def check_run_folder(out: Path, cfg: RunConfig, resume: bool, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise VispromptError(f"output path {out} is a file; give a folder for --out")
    ckpt.check_writable(out, "--out", "folder")
    if cfg.use_cache:
        ckpt.check_writable(cache_folder(cfg), CACHE_OPTION, "folder")
    root = cfg.data.root
    if root is not None and os.path.isdir(root):
        real_out, real_root = os.path.realpath(out), os.path.realpath(root)
        if os.path.commonpath([real_out, real_root]) == real_root:
            raise VispromptError(
                f"--out {out} is inside the dataset folder {root}, where the next read would "
                "list the run's files among the data; choose an --out outside it"
            )
    finished = (out / RESULT_FILE).is_file()
    started = (out / ckpt.STATE_FILE).is_file()
    if resume:
        if not (out / CONFIG_FILE).is_file() or not started:
            raise VispromptError(
                f"cannot resume: {out} holds no checkpoint ({ckpt.STATE_FILE}); "
                "start the run without --resume"
            )
        saved = read_run_config(out)
        differ = diff_configs(identity_dict(saved), identity_dict(cfg.to_dict()))
        if differ:
            raise VispromptError(
                f"cannot resume: the config differs from the run in {out} in "
                f"{', '.join(differ)}; use the same config, or --overwrite to start over"
            )
        return
    if (finished or started) and not overwrite:
        what = "a finished run" if finished else "an unfinished run (use --resume to continue)"
        raise VispromptError(
            f"output folder {out} already holds {what}; pass --overwrite to replace it or "
            "choose another --out"
        )


def clear_run_files(out: Path) -> None:
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / TENSORBOARD_DIR, ignore_errors=True)


def write_metrics(out: Path, history: list[dict]) -> None:
    text = "".join(json.dumps(row) + "\n" for row in history)
    ckpt.atomic_write_text(out / METRICS_FILE, text)


def read_metrics(out: Path) -> list[dict]:
    """The epochs in a run folder's ``metrics.jsonl``, in order (empty when there is none).

    The one reader of the file :func:`write_metrics` writes: the sweep worker,
    the store and the tests all read epochs through it.
    """
    path = Path(out) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def versions() -> dict[str, str]:
    import open_clip

    from visprompt import __version__

    return {
        "visprompt": __version__,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "python": platform.python_version(),
    }


def write_result(out: Path, cfg: RunConfig, result: dict[str, Any], log: Log) -> dict[str, Any]:
    ckpt.atomic_write_text(out / RESULT_FILE, json.dumps(result, indent=2))
    log(
        f"test accuracy {result['test_accuracy']:.2f}% "
        f"(macro {result['test_macro_accuracy']:.2f}%) - {cfg.method.name} on "
        f"{cfg.data.dataset}, {cfg.noise.type} noise {cfg.noise.rate:g}"
    )
    return result
