"""A finished run reloaded from its folder: its method with the trained weights, for
``eval``, ``predict``, ``label-issues`` and exports.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from visprompt.backbone import FrozenCLIP
from visprompt.config import RunConfig, validate_run_config
from visprompt.data import DATASETS
from visprompt.data.features import (
    FeatureCache,
    FeatureExtractor,
    SplitFeatures,
)
from visprompt.data.types import Sample
from visprompt.engine import checkpoint as ckpt
from visprompt.engine.assembly import build_backbone, build_method, read_dataset
from visprompt.engine.evaluate import accuracy_metrics, predict_logits
from visprompt.engine.run_folder import (
    CONFIG_FILE,
    RESULT_FILE,
    TRAINSET_FILE,
    damaged,
    read_run_config,
    read_run_json,
)
from visprompt.errors import VispromptError
from visprompt.methods import PromptMethod


@dataclass
class LoadedRun:
    cfg: RunConfig
    backbone: FrozenCLIP
    method: PromptMethod
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    out: Path
    #: "" for a finished run; "unfinished: epoch N of M" for one loaded with allow_unfinished
    status: str = ""
    #: the data root the run was trained with, when ``root=`` moved it (paths are remapped)
    moved_from: str | None = None

    def local_path(self, path: str) -> str:
        """A path of the run's records, under the data's current root."""
        if self.moved_from is None or self.cfg.data.root is None:
            return path
        return os.path.join(self.cfg.data.root, os.path.relpath(path, self.moved_from))

    def train_samples(self) -> tuple[list[Sample], dict]:
        """The run's few-shot training set (given labels) and the trainset.json record."""
        data = read_run_json(self.out, TRAINSET_FILE)
        samples = [
            Sample(path=self.local_path(p), label=int(y), classname=self.classnames[int(y)])
            for p, y in zip(data["paths"], data["given_labels"], strict=True)
        ]
        return samples, data


def unfinished_status(out: Path, cfg: RunConfig, meta: dict) -> str:
    """ "" when ``out`` holds a finished run (its result.json), else "unfinished: epoch N of M"."""
    if (out / RESULT_FILE).is_file():
        return ""
    return f"unfinished: epoch {int(meta.get('epoch') or 0)} of {cfg.optim.epochs}"


def load_run(
    run_dir: str | Path,
    device: str | None = None,
    allow_unfinished: bool = False,
    root: str | Path | None = None,
) -> LoadedRun:
    """Rebuild a run's method with its trained weights (for eval/predict/export).

    A run without ``result.json`` was interrupted: its checkpoint is an
    intermediate model, so it is refused unless ``allow_unfinished`` (then
    ``LoadedRun.status`` says how far it got, for every output to show).

    ``root`` points the run at data that moved: the dataset found there must have
    the fingerprint the run recorded (same files relative to the root, same labels
    and classes), so another dataset is refused rather than scored.
    """
    out = Path(run_dir)
    if not out.is_dir():
        raise VispromptError(f"run folder not found: {out}; give the --out folder of a run")
    for name in (CONFIG_FILE, ckpt.WEIGHTS_FILE):
        if not (out / name).is_file():
            raise VispromptError(
                f"run folder {out} is incomplete (missing {name}); train it first "
                "(or --resume it if it was interrupted)"
            )
    raw = read_run_config(out)
    if device is not None:
        raw.setdefault("backbone", {})["device"] = device
    moved_from = None
    if root is not None:
        moved_from = (raw.get("data") or {}).get("root")
        raw.setdefault("data", {})["root"] = os.path.abspath(os.path.expanduser(str(root)))
    try:
        cfg = validate_run_config(raw)
    except VispromptError as exc:
        raise damaged(out, CONFIG_FILE, f"is not a valid run config ({exc})") from None
    if root is not None:
        _check_moved_dataset(out, cfg)
    weights, meta = ckpt.load_weights(out / ckpt.WEIGHTS_FILE)
    status = unfinished_status(out, cfg, meta)
    if status and not allow_unfinished:
        raise VispromptError(
            f"run {out} is {status}; resume it with `visprompt train --config "
            f"{out / CONFIG_FILE} --out {out} --resume`, or pass --allow-unfinished to use "
            "its last checkpoint"
        )
    backbone = build_backbone(cfg)
    if meta.get("backbone", {}).get("fingerprint") != backbone.identity.fingerprint:
        raise VispromptError(
            f"the weights in {out} were trained on backbone "
            f"{meta.get('backbone', {}).get('name')!r} with other weights than "
            f"{backbone.identity.name!r} loaded now; use the run's original checkpoint"
        )
    classnames = tuple(meta.get("classnames") or ())
    spec = DATASETS.get(cfg.data.dataset)
    method = build_method(cfg, backbone, classnames, spec.templates)
    try:
        method.load_state_dict(weights)
    except RuntimeError as exc:
        raise VispromptError(
            f"the weights in {out} do not fit method {cfg.method.name!r} ({str(exc)[:160]}); "
            "the run folder is damaged - train it again"
        ) from None
    method.eval()
    return LoadedRun(cfg, backbone, method, classnames, spec.templates, out, status, moved_from)


def _check_moved_dataset(out: Path, cfg: RunConfig) -> None:
    """The dataset under the new ``cfg.data.root`` is the one the run recorded."""
    recorded = read_run_json(out, TRAINSET_FILE).get("dataset_fingerprint")
    if not recorded:
        raise VispromptError(
            f"run {out} records no dataset fingerprint (it predates --root), so data under "
            "another root cannot be checked; move the data back, or train the run again"
        )
    _, splits = read_dataset(cfg)
    if splits.fingerprint(cfg.data.root) != recorded:
        raise VispromptError(
            f"the {cfg.data.dataset} data under --root {cfg.data.root} is not the dataset run "
            f"{out} was trained on (other files, labels or classes); point --root at a copy "
            "of the run's dataset"
        )


def split_samples(run: LoadedRun, split: str) -> tuple[list[Sample], torch.Tensor]:
    """The samples of ``split`` for a loaded run (train = its few-shot training set)."""
    if split == "train":
        samples, data = run.train_samples()
        truth = data["true_labels"] or data["given_labels"]
        return samples, torch.tensor(truth, dtype=torch.long)
    _, splits = read_dataset(run.cfg)
    if tuple(splits.classnames) != run.classnames:
        raise VispromptError(
            f"the dataset's classes differ from the ones the run in {run.out} was trained on; "
            "point data.root at the same dataset"
        )
    samples = list(splits.val if split == "val" else splits.test)
    return samples, torch.tensor([s.label for s in samples], dtype=torch.long)


def run_features(run: LoadedRun, samples: Sequence[Sample], progress: bool = True) -> SplitFeatures:
    extractor = FeatureExtractor(
        run.backbone,
        with_patches=run.cfg.method.requirements().patch_tokens,
        batch_size=run.cfg.engine.batch_size,
        num_workers=run.cfg.data.num_workers,
        progress=progress,
        crop_scale=run.cfg.data.crop_scale,
    )
    cache = FeatureCache(extractor, root=run.cfg.data.cache_dir, store=run.cfg.use_cache)
    return cache.get(list(samples), 0, desc="encoding images")


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    progress: bool = True,
    allow_unfinished: bool = False,
    root: str | Path | None = None,
) -> dict:
    """Accuracy and macro accuracy of a finished run on ``split`` (test, val or train).

    ``allow_unfinished`` scores an interrupted run's last checkpoint; the result's
    ``status`` then says "unfinished: epoch N of M" ("" for a finished run).
    """
    run, logits, labels = split_logits(run_dir, split, progress, allow_unfinished, root)
    metrics = accuracy_metrics(logits, labels)
    return {"split": split, "num_images": int(labels.numel()), **metrics, "status": run.status}


def split_logits(
    run_dir: str | Path,
    split: str = "test",
    progress: bool = True,
    allow_unfinished: bool = False,
    root: str | Path | None = None,
) -> tuple[LoadedRun, torch.Tensor, torch.Tensor]:
    """A run, its (M, K) logits on ``split``'s readable images and their (M,) labels.

    The one path from a run folder to its predictions on a split: ``visprompt
    eval`` and the per-class report both score through it.
    """
    if split not in ("test", "val", "train"):
        raise VispromptError(f"unknown split {split!r}; choose test, val or train")
    run = load_run(run_dir, allow_unfinished=allow_unfinished, root=root)
    samples, labels = split_samples(run, split)
    feats = run_features(run, samples, progress)
    keep = feats.ok
    logits = predict_logits(run.method, feats.subset(keep).plain_view(), run.cfg.engine.batch_size)
    return run, logits, labels[keep]


def predict_paths(
    run_dir: str | Path,
    paths: Sequence[str],
    topk: int = 5,
    progress: bool = False,
    allow_unfinished: bool = False,
) -> list[dict]:
    """Top-k classes with probabilities for each image path (unreadable ones flagged).

    Each row's ``status`` is the run's: "" when finished, else "unfinished: epoch N of M"
    (only with ``allow_unfinished``).
    """
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise VispromptError(f"--topk is {topk}; give a whole number of at least 1 (e.g. --topk 5)")
    run = load_run(run_dir, allow_unfinished=allow_unfinished)
    samples = [Sample(path=str(Path(p).resolve()), label=-1, classname="") for p in paths]
    missing = [s.path for s in samples if not Path(s.path).is_file()]
    if missing:
        raise VispromptError(
            f"image not found: {missing[0]} ({len(missing)} missing); check the paths"
        )
    extractor = FeatureExtractor(
        run.backbone, with_patches=run.cfg.method.requirements().patch_tokens, progress=progress
    )
    feats = extractor.extract(samples)
    probs = predict_logits(run.method, feats.plain_view()).softmax(dim=-1)
    k = min(topk, probs.shape[1])
    top_p, top_i = probs.topk(k, dim=-1)
    rows = []
    for s, ok, p, i in zip(samples, feats.ok.tolist(), top_p.tolist(), top_i.tolist(), strict=True):
        rows.append(
            {
                "path": s.path,
                "readable": ok,
                "top": [{"class": run.classnames[c], "prob": q} for c, q in zip(i, p, strict=True)]
                if ok
                else [],
                "status": run.status,
            }
        )
    return rows
