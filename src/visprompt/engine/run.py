"""One run, end to end: config -> backbone -> data -> features -> method -> trainer -> results.

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
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from visprompt.backbone import FrozenCLIP, load_backbone
from visprompt.backbone.vocabulary import check_class_names
from visprompt.config import RunConfig, diff_configs, identity_dict, validate_run_config
from visprompt.data import DATASETS
from visprompt.data.features import (
    FeatureCache,
    FeatureExtractor,
    LiveFeatures,
    SplitFeatures,
    default_cache_dir,
)
from visprompt.data.fewshot import fewshot_splits
from visprompt.data.images import check_unreadable
from visprompt.data.noise import NoisyLabels, class_name_similarity, inject_noise
from visprompt.data.types import DatasetSpec, DatasetSplits, Sample
from visprompt.engine import checkpoint as ckpt
from visprompt.engine.evaluate import accuracy_metrics, predict_logits
from visprompt.engine.trainer import TrainData, Trainer
from visprompt.errors import VispromptError
from visprompt.methods import METHOD_REGISTRY, PromptMethod
from visprompt.robust.quality import PURIFY_PREFIX

CONFIG_FILE = "config.yaml"
TRAINSET_FILE = "trainset.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
RUN_FILES = (
    CONFIG_FILE,
    TRAINSET_FILE,
    METRICS_FILE,
    RESULT_FILE,
    ckpt.STATE_FILE,
    ckpt.WEIGHTS_FILE,
)

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- building blocks


def build_backbone(cfg: RunConfig) -> FrozenCLIP:
    b = cfg.backbone
    backbone = load_backbone(
        name=b.name,
        arch=b.arch,
        checkpoint=b.checkpoint,
        allow_torchscript=b.allow_torchscript,
        download=b.download,
        pretrained=b.pretrained,
        device=b.device,
        precision=cfg.precision,
        text_encoding=cfg.engine.text_encoding,
        chunk_size=cfg.engine.chunk_size,
    )
    needs = cfg.method.requirements()
    if needs.vit is not None and not backbone.is_vit:
        # the config layer refuses the ResNets it knows by name; a checkpoint file's
        # image tower is only known once it is loaded
        raise VispromptError(needs.vit_error(backbone.identity.name))
    return backbone


def read_dataset(cfg: RunConfig) -> tuple[DatasetSpec, DatasetSplits]:
    spec = DATASETS.get(cfg.data.dataset)
    if spec.needs_root and cfg.data.root is None:
        raise VispromptError(
            f"data.root is required for dataset {spec.name!r}; set it to the folder that holds "
            f"{spec.layout}"
        )
    root = Path(cfg.data.root).expanduser() if cfg.data.root is not None else None
    options = {name: getattr(cfg.data, name) for name in spec.options}
    return spec, spec.read(root, seed=cfg.data.seed, **options)


@dataclass
class TrainingSet:
    """The few-shot training images and their labels."""

    samples: tuple[Sample, ...]
    noise: NoisyLabels
    true_known: bool

    @property
    def num_duplicates(self) -> int:
        """Entries that repeat an earlier entry's image (``noise.pool_draw: replacement``)."""
        return len(self.samples) - len({s.path for s in self.samples})

    def to_json(self) -> dict:
        return {
            "paths": [s.path for s in self.samples],
            "given_labels": self.noise.noisy.tolist(),
            "true_labels": self.noise.true.tolist() if self.true_known else None,
            "is_noisy": self.noise.is_noisy.tolist() if self.true_known else None,
            "num_duplicates": self.num_duplicates,
        }


def build_training_set(
    cfg: RunConfig, spec: DatasetSpec, splits: DatasetSplits, backbone: FrozenCLIP
) -> tuple[DatasetSplits, TrainingSet]:
    """Few-shot sampling and label noise, as the config's noise protocol says."""
    data, noise = cfg.data, cfg.noise
    if noise.protocol == "balanced":
        from visprompt.data.protocols import balanced_noisy_fewshot

        fs, noisy = balanced_noisy_fewshot(
            splits,
            data.shots,
            noise.type,
            noise.rate,
            seed=data.seed,
            val_shots=data.val_shots,
            pool_draw=noise.pool_draw,
        )
        return fs, TrainingSet(fs.train, noisy, true_known=noise.type != "real")
    fs = fewshot_splits(
        splits, data.shots, data.seed, val_shots=data.val_shots, allow_fewer=data.allow_fewer
    )
    labels = [s.label for s in fs.train]
    similarity = None
    if noise.type == "asym-semantic":
        similarity = class_name_similarity(backbone, splits.classnames, spec.templates[0])
    noisy = inject_noise(
        labels, splits.num_classes, noise.type, noise.rate, seed=data.seed, similarity=similarity
    )
    true_known = noise.type != "real" and not splits.real_noise
    return fs, TrainingSet(fs.train, noisy, true_known=true_known)


def build_method(
    cfg: RunConfig, backbone: FrozenCLIP, classnames: Sequence[str], templates: Sequence[str]
) -> PromptMethod:
    entry = METHOD_REGISTRY.get(cfg.method.name)
    torch.manual_seed(cfg.train_seed)  # context initialisation
    method = entry.cls(backbone, classnames, cfg.method, templates=templates)
    return method.to(backbone.device)


def _drop_unreadable(
    feats: SplitFeatures, samples: Sequence[Sample], split: str, max_fraction: float, log: Log
) -> tuple[SplitFeatures, list[int]]:
    bad = [i for i, ok in enumerate(feats.ok.tolist()) if not ok]
    if not bad:
        return feats, list(range(len(samples)))
    check_unreadable([samples[i].path for i in bad], len(samples), max_fraction, split)
    for i in bad:
        log(f"warning: skipping unreadable image {samples[i].path}")
    keep = feats.ok.clone()
    return feats.subset(keep), [i for i in range(len(samples)) if keep[i]]


# ---------------------------------------------------------------- the run folder


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


def _check_run_folder(out: Path, cfg: RunConfig, resume: bool, overwrite: bool) -> None:
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


def _clear_run_files(out: Path) -> None:
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def _write_metrics(out: Path, history: list[dict]) -> None:
    text = "".join(json.dumps(row) + "\n" for row in history)
    ckpt.atomic_write_text(out / METRICS_FILE, text)


def read_metrics(out: Path) -> list[dict]:
    """The epochs in a run folder's ``metrics.jsonl``, in order (empty when there is none).

    The one reader of the file :func:`_write_metrics` writes: the sweep worker,
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


# ---------------------------------------------------------------- train


@dataclass
class PreparedRun:
    """Everything a run needs, built and validated before anything is written."""

    cfg: RunConfig
    backbone: FrozenCLIP
    spec: DatasetSpec
    splits: DatasetSplits
    trainset: TrainingSet
    method: PromptMethod
    train_features: SplitFeatures
    test_features: SplitFeatures
    test_labels: torch.Tensor
    cache: FeatureCache
    live: LiveFeatures | None = None
    notes: list[str] = field(default_factory=list)
    #: :meth:`DatasetSplits.fingerprint` of the dataset as read (``--root`` checks it)
    dataset_fingerprint: str = ""

    def trainset_record(self) -> dict:
        """trainset.json: the training set, the data root and the dataset's fingerprint."""
        return {
            **self.trainset.to_json(),
            "root": self.cfg.data.root,
            "dataset_fingerprint": self.dataset_fingerprint,
        }


def prepare_run(cfg: RunConfig, progress: bool = True, log: Log = _stderr) -> PreparedRun:
    """Load backbone and data, sample, inject noise, build the method, get features."""
    backbone = build_backbone(cfg)
    spec, splits = read_dataset(cfg)
    check_class_names(backbone, splits.classnames, log)
    fs, trainset = build_training_set(cfg, spec, splits, backbone)
    method = build_method(cfg, backbone, splits.classnames, spec.templates)
    extractor = FeatureExtractor(
        backbone,
        with_patches=cfg.method.requirements().patch_tokens,
        batch_size=cfg.engine.batch_size,
        num_workers=cfg.data.num_workers,
        progress=progress,
        crop_scale=cfg.data.crop_scale,
    )
    cache = FeatureCache(extractor, root=cfg.data.cache_dir, store=cfg.use_cache)
    samples = list(trainset.samples)
    train_feats = cache.get(samples, 0, desc="train images (clean)")
    if cfg.use_cache and method.trainable:
        views = cache.get(
            samples, cfg.data.num_views, desc=f"train images ({cfg.data.num_views} views)"
        )
        train_feats = SplitFeatures(
            image=train_feats.image,
            ok=train_feats.ok & views.ok,
            patches=train_feats.patches,
            views=views.views,
            view_patches=views.view_patches,
        )
    train_feats, kept = _drop_unreadable(
        train_feats, samples, "train", cfg.data.max_unreadable, log
    )
    if len(kept) != len(samples):
        noise = trainset.noise
        trainset = TrainingSet(
            samples=tuple(samples[i] for i in kept),
            noise=NoisyLabels(
                noisy=noise.noisy[kept], true=noise.true[kept], is_noisy=noise.is_noisy[kept]
            ),
            true_known=trainset.true_known,
        )
    test_samples = list(fs.test)
    test_feats = cache.get(test_samples, 0, desc="test images")
    test_feats, kept_test = _drop_unreadable(
        test_feats, test_samples, "test", cfg.data.max_unreadable, log
    )
    test_labels = torch.tensor([test_samples[i].label for i in kept_test], dtype=torch.long)
    live = None
    if not cfg.use_cache and method.trainable:
        live = LiveFeatures(extractor, trainset.samples)
    return PreparedRun(
        cfg=cfg,
        backbone=backbone,
        spec=spec,
        splits=fs,
        trainset=trainset,
        method=method,
        train_features=train_feats,
        test_features=test_feats,
        test_labels=test_labels,
        cache=cache,
        live=live,
        dataset_fingerprint=splits.fingerprint(cfg.data.root),
    )


def evaluate_test(prep: PreparedRun) -> dict[str, float]:
    logits = predict_logits(
        prep.method, prep.test_features.plain_view(), prep.cfg.engine.batch_size, prep.cfg.precision
    )
    m = accuracy_metrics(logits, prep.test_labels)
    return {"test_accuracy": m["accuracy"], "test_macro_accuracy": m["macro_accuracy"]}


def weights_metadata(prep: PreparedRun | Any, epoch: int) -> dict[str, Any]:
    return {
        "method": prep.cfg.method.name,
        "classnames": list(prep.splits.classnames),
        "backbone": prep.backbone.identity.as_dict(),
        "epoch": epoch,
    }


def train_run(
    cfg: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Log = _stderr,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Train (or, for zero-shot, only evaluate) one run into ``out_dir``; return result.json.

    Raises VispromptError before writing anything if the config, data or
    checkpoint are wrong; an interrupted run keeps its last epoch's checkpoint
    and continues with ``resume=True``.
    """
    out = Path(out_dir)
    _check_run_folder(out, cfg, resume, overwrite)
    if resume and (out / RESULT_FILE).is_file():
        log(f"run in {out} is already finished")
        return read_run_json(out, RESULT_FILE)
    started = time.perf_counter()
    if cfg.engine.threads is not None:
        torch.set_num_threads(cfg.engine.threads)
    prep = prepare_run(cfg, progress=progress, log=log)
    method = prep.method
    log(method.describe())
    trainset = prep.trainset
    labels = torch.tensor(trainset.noise.noisy, dtype=torch.long)
    true_labels = (
        torch.tensor(trainset.noise.true, dtype=torch.long) if trainset.true_known else None
    )
    if not method.trainable:
        return _finish_untrained(cfg, out, prep, started, overwrite, log)
    trainer = Trainer(
        method,
        TrainData(prep.train_features, labels, true_labels, live=prep.live),
        cfg.optim,
        seed=cfg.train_seed,
        precision=cfg.precision,
        eval_batch_size=cfg.engine.batch_size,
        progress=progress,
    )
    history: list[dict] = []
    start_epoch = 0
    if resume:
        state = ckpt.load_state(out)
        trainer.load_state_dict(state)
        ckpt.set_rng_state(state["rng"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        log(f"resuming {out} after epoch {start_epoch}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            _clear_run_files(out)
        ckpt.atomic_write_text(out / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        ckpt.atomic_write_text(out / TRAINSET_FILE, json.dumps(prep.trainset_record()))

    every = cfg.eval.every

    def after_epoch(epoch: int, metrics: dict[str, float]) -> None:
        last = epoch + 1 == cfg.optim.epochs
        if (every and (epoch + 1) % every == 0) or last:
            metrics.update(evaluate_test(prep))
        history.append(metrics)
        # the checkpoint first: it holds the history, so a kill between the two writes
        # leaves metrics.jsonl one epoch behind (rewritten whole at the next epoch), never
        # an epoch logged without the state to resume it from
        state = trainer.state_dict()
        state.update(epoch=epoch, history=history, rng=ckpt.rng_state())
        ckpt.save_state(out, state)
        ckpt.save_weights(
            out / ckpt.WEIGHTS_FILE, method.state_dict(), weights_metadata(prep, epoch + 1)
        )
        _write_metrics(out, history)
        shown = ", ".join(
            f"{k} {v:.2f}" for k, v in metrics.items() if k in ("train_loss", "train_acc")
        )
        log(f"epoch {epoch + 1}/{cfg.optim.epochs}: {shown} ({metrics['seconds']:.2f} s)")
        if on_epoch is not None:
            on_epoch(metrics)

    trainer.fit(start_epoch=start_epoch, on_epoch=after_epoch)
    final = {k: history[-1][k] for k in ("test_accuracy", "test_macro_accuracy")}
    result = _result(cfg, prep, final, started)
    result["seconds_per_epoch"] = sum(h["seconds"] for h in history) / len(history)
    result.update({k: v for k, v in history[-1].items() if k.startswith(PURIFY_PREFIX)})
    return _write_result(out, cfg, result, log)


def _finish_untrained(
    cfg: RunConfig, out: Path, prep: PreparedRun, started: float, overwrite: bool, log: Log
) -> dict[str, Any]:
    """Methods without parameters (zero-shot): evaluate and write the run folder."""
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        _clear_run_files(out)
    ckpt.atomic_write_text(out / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    ckpt.atomic_write_text(out / TRAINSET_FILE, json.dumps(prep.trainset_record()))
    ckpt.save_weights(out / ckpt.WEIGHTS_FILE, prep.method.state_dict(), weights_metadata(prep, 0))
    return _write_result(out, cfg, _result(cfg, prep, evaluate_test(prep), started), log)


def _result(cfg: RunConfig, prep: PreparedRun, final: dict, started: float) -> dict[str, Any]:
    trainset, method = prep.trainset, prep.method
    return {
        **final,
        "run_id": cfg.run_id(),
        "method": cfg.method.name,
        "dataset": cfg.data.dataset,
        "backbone": prep.backbone.identity.name,
        "shots": cfg.data.shots,
        "noise_type": cfg.noise.type,
        "noise_rate": cfg.noise.rate,
        "noise_protocol": cfg.noise.protocol,
        "seed": cfg.data.seed,
        "epochs": cfg.optim.epochs if method.trainable else 0,
        "num_train": len(trainset.samples),
        "num_duplicates": trainset.num_duplicates,
        "num_noisy": int(trainset.noise.is_noisy.sum()) if trainset.true_known else None,
        "num_test": int(prep.test_labels.numel()),
        "num_classes": prep.splits.num_classes,
        "trainable_params": sum(p.numel() for p in method.parameters() if p.requires_grad),
        "feature_cache": {"hits": prep.cache.hits, "misses": prep.cache.misses},
        "wall_seconds": time.perf_counter() - started,
        "versions": versions(),
    }


def _write_result(out: Path, cfg: RunConfig, result: dict[str, Any], log: Log) -> dict[str, Any]:
    ckpt.atomic_write_text(out / RESULT_FILE, json.dumps(result, indent=2))
    log(
        f"test accuracy {result['test_accuracy']:.2f}% "
        f"(macro {result['test_macro_accuracy']:.2f}%) - {cfg.method.name} on "
        f"{cfg.data.dataset}, {cfg.noise.type} noise {cfg.noise.rate:g}"
    )
    return result


# ---------------------------------------------------------------- reload a run


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
    if split not in ("test", "val", "train"):
        raise VispromptError(f"unknown split {split!r}; choose test, val or train")
    run = load_run(run_dir, allow_unfinished=allow_unfinished, root=root)
    samples, labels = split_samples(run, split)
    feats = run_features(run, samples, progress)
    keep = feats.ok
    logits = predict_logits(run.method, feats.subset(keep).plain_view(), run.cfg.engine.batch_size)
    metrics = accuracy_metrics(logits, labels[keep])
    return {"split": split, "num_images": int(keep.sum()), **metrics, "status": run.status}


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
