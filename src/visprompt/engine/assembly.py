"""Assembly: a validated config -> the backbone, data, training set, method and features of a run.

Nothing here writes into a run folder; :func:`prepare_run` builds and checks
everything a run needs first, so that a bad input fails before any file exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from visprompt.backbone import FrozenCLIP, load_backbone
from visprompt.backbone.vocabulary import check_class_names
from visprompt.config import RunConfig
from visprompt.data import DATASETS
from visprompt.data.features import (
    FeatureCache,
    FeatureExtractor,
    LiveFeatures,
    SplitFeatures,
)
from visprompt.data.fewshot import fewshot_splits
from visprompt.data.images import check_unreadable
from visprompt.data.noise import NoisyLabels, class_name_similarity, inject_noise
from visprompt.data.types import DatasetSpec, DatasetSplits, Sample
from visprompt.data.validation_split import ValidationSplit, require_validation
from visprompt.engine.evaluate import accuracy_metrics, predict_logits
from visprompt.engine.run_folder import Log, log_to_stderr
from visprompt.errors import VispromptError
from visprompt.methods import METHOD_REGISTRY, PromptMethod
from visprompt.methods.fitted import FitData, FitsOnData


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
    cfg: RunConfig,
    backbone: FrozenCLIP,
    classnames: Sequence[str],
    templates: Sequence[str],
    data: FitData | None = None,
    log: Log = log_to_stderr,
) -> PromptMethod:
    """The run's method, initialised from the run seed.

    A method fitted on its data (:class:`~visprompt.methods.fitted.FitsOnData`)
    gets ``data``, or, where the caller has none (a reloaded run, a test), the
    run's own training set and val split derived again from ``cfg`` (the same
    sampling, noise and cached features as its training run).
    """
    entry = METHOD_REGISTRY.get(cfg.method.name)
    torch.manual_seed(cfg.train_seed)  # context initialisation
    method = entry.cls(backbone, classnames, cfg.method, templates=templates)
    method = method.to(backbone.device)
    if isinstance(method, FitsOnData):
        method.fit_data(data if data is not None else derive_fit_data(cfg, backbone, log))
    return method


def derive_fit_data(cfg: RunConfig, backbone: FrozenCLIP, log: Log = log_to_stderr) -> FitData:
    """The :class:`FitData` of ``cfg``'s run, recomputed (features come from the cache)."""
    spec, splits = read_dataset(cfg)
    fs, trainset = build_training_set(cfg, spec, splits, backbone)
    check_validation(cfg, fs)
    cache = FeatureCache(
        _extractor(cfg, backbone, progress=False), root=cfg.data.cache_dir, store=cfg.use_cache
    )
    feats, trainset = training_features(cfg, cache, trainset, views=False, log=log)
    val = validation_split(cfg, spec, fs, backbone, cache, log)
    return fit_data(cfg, feats, trainset, val)


def fit_data(
    cfg: RunConfig, feats: SplitFeatures, trainset: TrainingSet, val: ValidationSplit
) -> FitData:
    needs = cfg.method.requirements()
    return FitData(
        features=feats,
        labels=torch.tensor(trainset.noise.noisy, dtype=torch.long),
        val=val if needs.validation else None,
        batch_size=cfg.engine.batch_size,
    )


def check_validation(cfg: RunConfig, fs: DatasetSplits, what: str | None = None) -> None:
    """Refuse (one line) a run whose method, or ``what`` (e.g. ``eval.select``), needs val
    images the run's few-shot splits ``fs`` do not have."""
    what = what or cfg.method.requirements().validation
    if what:
        require_validation(what, fs.val, cfg.data.dataset, cfg.data.val_shots)


def validation_split(
    cfg: RunConfig,
    spec: DatasetSpec,
    fs: DatasetSplits,
    backbone: FrozenCLIP,
    cache: FeatureCache,
    log: Log = log_to_stderr,
) -> ValidationSplit:
    """The run's val split: features through ``cache`` and noisy labels, both only when read."""
    noise = cfg.noise
    return ValidationSplit(
        samples=tuple(fs.val),
        num_classes=fs.num_classes,
        cache=cache,
        noise_type=noise.type,
        noise_rate=noise.rate,
        seed=cfg.data.seed,
        real_noise=fs.real_noise,
        max_unreadable=cfg.data.max_unreadable,
        similarity=lambda: class_name_similarity(backbone, fs.classnames, spec.templates[0]),
        log=log,
    )


def _extractor(cfg: RunConfig, backbone: FrozenCLIP, progress: bool) -> FeatureExtractor:
    return FeatureExtractor(
        backbone,
        with_patches=cfg.method.requirements().patch_tokens,
        batch_size=cfg.engine.batch_size,
        num_workers=cfg.data.num_workers,
        progress=progress,
        crop_scale=cfg.data.crop_scale,
    )


def training_features(
    cfg: RunConfig, cache: FeatureCache, trainset: TrainingSet, views: bool, log: Log
) -> tuple[SplitFeatures, TrainingSet]:
    """The training set's features (plain view, and the augmented views when ``views``),
    with unreadable images dropped from the features and the training set alike."""
    samples = list(trainset.samples)
    train_feats = cache.get(samples, 0, desc="train images (clean)")
    if views:
        extra = cache.get(
            samples, cfg.data.num_views, desc=f"train images ({cfg.data.num_views} views)"
        )
        train_feats = SplitFeatures(
            image=train_feats.image,
            ok=train_feats.ok & extra.ok,
            patches=train_feats.patches,
            views=extra.views,
            view_patches=extra.view_patches,
        )
    train_feats, kept = drop_unreadable(train_feats, samples, "train", cfg.data.max_unreadable, log)
    if len(kept) != len(samples):
        noise = trainset.noise
        trainset = TrainingSet(
            samples=tuple(samples[i] for i in kept),
            noise=NoisyLabels(
                noisy=noise.noisy[kept], true=noise.true[kept], is_noisy=noise.is_noisy[kept]
            ),
            true_known=trainset.true_known,
        )
    return train_feats, trainset


def drop_unreadable(
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
    #: the val split, read only by what needs it (a method's search, ``eval.select``)
    validation: ValidationSplit | None = None
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


def prepare_run(cfg: RunConfig, progress: bool = True, log: Log = log_to_stderr) -> PreparedRun:
    """Load backbone and data, sample, inject noise, build the method, get features."""
    backbone = build_backbone(cfg)
    spec, splits = read_dataset(cfg)
    check_class_names(backbone, splits.classnames, log)
    fs, trainset = build_training_set(cfg, spec, splits, backbone)
    check_validation(cfg, fs)
    entry = METHOD_REGISTRY.get(cfg.method.name)
    trainable = entry.cls.trainable
    # a method fitted on its data is built once its features exist; every other one
    # first, as always (its initialisation and the feature pass then see the same RNG)
    fitted = issubclass(entry.cls, FitsOnData)
    method = None if fitted else build_method(cfg, backbone, splits.classnames, spec.templates)
    cache = FeatureCache(
        _extractor(cfg, backbone, progress), root=cfg.data.cache_dir, store=cfg.use_cache
    )
    train_feats, trainset = training_features(
        cfg, cache, trainset, views=cfg.use_cache and trainable, log=log
    )
    test_samples = list(fs.test)
    test_feats = cache.get(test_samples, 0, desc="test images")
    test_feats, kept_test = drop_unreadable(
        test_feats, test_samples, "test", cfg.data.max_unreadable, log
    )
    test_labels = torch.tensor([test_samples[i].label for i in kept_test], dtype=torch.long)
    val = validation_split(cfg, spec, fs, backbone, cache, log)
    if method is None:
        method = build_method(
            cfg,
            backbone,
            splits.classnames,
            spec.templates,
            data=fit_data(cfg, train_feats, trainset, val),
            log=log,
        )
    live = None
    if not cfg.use_cache and trainable:
        live = LiveFeatures(cache.extractor, trainset.samples)
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
        validation=val,
        live=live,
        dataset_fingerprint=splits.fingerprint(cfg.data.root),
    )


def evaluate_test(prep: PreparedRun) -> dict[str, float]:
    logits = predict_logits(
        prep.method, prep.test_features.plain_view(), prep.cfg.engine.batch_size, prep.cfg.precision
    )
    m = accuracy_metrics(logits, prep.test_labels)
    return {"test_accuracy": m["accuracy"], "test_macro_accuracy": m["macro_accuracy"]}


def fit_record(prep: PreparedRun) -> dict[str, Any]:
    """What result.json records about a fitted method's choices (empty for the others)."""
    method = prep.method
    return method.fit_record() if isinstance(method, FitsOnData) else {}


def finish_fitting(prep: PreparedRun) -> bool:
    """A fitted method's step after the last epoch (see ``FitsOnData.after_training``)."""
    method = prep.method
    return isinstance(method, FitsOnData) and method.after_training()


def weights_metadata(prep: PreparedRun | Any, epoch: int) -> dict[str, Any]:
    return {
        "method": prep.cfg.method.name,
        "classnames": list(prep.splits.classnames),
        "backbone": prep.backbone.identity.as_dict(),
        "epoch": epoch,
    }
