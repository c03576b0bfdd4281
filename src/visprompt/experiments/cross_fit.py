"""Out-of-sample probabilities of a run's training set by K-fold cross-fitting.

The training set is cut into K folds, stratified by the *given* label (the
truth is never read) with a seeded shuffle (scikit-learn's
``StratifiedKFold(shuffle=True, random_state=<run's training seed>)``). For each
fold the run's method is built and trained exactly as the run was - same
config, same initialisation seed, the engine's :class:`~visprompt.engine.trainer.Trainer`
on the cached features - but on the other K-1 folds only; it then scores the
held-out fold. Every sample's probabilities therefore come from the one model
that never saw it: the ``pred_probs`` cleanlab asks for.

A method that trains nothing (zero-shot) scores every sample without having
seen any label, so its probabilities are out of sample as they are.

Deterministic: the folds, every model's initialisation and every epoch's
batches derive from the run's seeds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from visprompt.config import RunConfig
from visprompt.data.features import LiveFeatures
from visprompt.engine.assembly import PreparedRun, build_method, prepare_run
from visprompt.engine.evaluate import predict_logits
from visprompt.engine.run_folder import Log
from visprompt.engine.selection import make_selection
from visprompt.engine.trainer import TrainData, Trainer
from visprompt.errors import VispromptError
from visprompt.methods import PromptMethod
from visprompt.methods.fitted import FitData, FitsOnData

#: Folds when the user gives none (cleanlab's ``cv_n_folds`` default).
DEFAULT_FOLDS = 5

#: Called after each fold: (fold, trained model, trained-on indices, held-out indices).
FoldHook = Callable[[int, PromptMethod, torch.Tensor, torch.Tensor], None]


def smallest_class(labels: torch.Tensor, classnames: tuple[str, ...]) -> tuple[str, int]:
    """The given class with the fewest samples (of those present) and its count."""
    counts = torch.bincount(labels.long(), minlength=len(classnames))
    present = counts > 0
    c = int(torch.where(present, counts, counts.max() + 1).argmin())
    return classnames[c], int(counts[c])


def check_folds(k: int, labels: torch.Tensor, classnames: tuple[str, ...]) -> None:
    """One-line errors for a fold count that cannot be stratified over ``labels``."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise VispromptError(
            f"--cross-fit {k}: cross-fitting needs at least 2 folds; give --cross-fit 2 or "
            f"more (default {DEFAULT_FOLDS}), or --in-sample to score with the final model"
        )
    name, count = smallest_class(labels, classnames)
    if k > count:
        raise VispromptError(
            f"--cross-fit {k} is more folds than the smallest class has samples (class "
            f"{name!r}: {count} given labels), so some fold would miss it; give --cross-fit "
            f"{count} or fewer"
        )


def default_folds(labels: torch.Tensor, classnames: tuple[str, ...]) -> int:
    """:data:`DEFAULT_FOLDS`, or fewer when the smallest class has fewer samples."""
    name, count = smallest_class(labels, classnames)
    if count < 2:
        raise VispromptError(
            f"class {name!r} has {count} given label, too few to cross-fit; score in-sample "
            "with --in-sample"
        )
    return min(DEFAULT_FOLDS, count)


def stratified_folds(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """(N,) fold index of each sample: K folds stratified by ``labels``, shuffled by ``seed``."""
    from sklearn.model_selection import StratifiedKFold

    y = labels.long().cpu().numpy()
    folds = torch.empty(len(y), dtype=torch.long)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed % (2**32))
    for fold, (_, held) in enumerate(splitter.split(y.reshape(-1, 1), y)):
        folds[torch.from_numpy(held)] = fold
    return folds


def _select_after(selection) -> Callable[[int, dict], None]:
    """The trainer's per-epoch callback that lets ``selection`` see each epoch's model."""
    return lambda epoch, metrics: selection.after_epoch(epoch)


@dataclass(frozen=True)
class CrossFit:
    """Out-of-sample probabilities of the training set.

    Attributes:
        probs: (N, K) each sample's probabilities under the model of its fold.
        folds: (N,) the fold that held each sample out.
        k: the number of folds (0 when the method trains nothing).
    """

    probs: torch.Tensor
    folds: torch.Tensor
    k: int

    def describe(self) -> str:
        if self.k == 0:
            return "out-of-sample (the method trains nothing)"
        return f"out-of-sample ({self.k}-fold cross-fit)"


def prepare_training_set(
    cfg: RunConfig, paths: list[str], labels: torch.Tensor, progress: bool, log: Log
) -> PreparedRun:
    """The run's prepared training data, checked to be the recorded training set."""
    prep = prepare_run(cfg, progress=progress, log=log)
    got = [s.path for s in prep.trainset.samples]
    given = torch.tensor(prep.trainset.noise.noisy.tolist(), dtype=torch.long)
    if got != list(paths) or not torch.equal(given, labels.long()):
        raise VispromptError(
            "the training set rebuilt from the run's config differs from the one it recorded "
            "(the data changed); point --root at the run's dataset or train the run again"
        )
    return prep


def cross_fit(
    prep: PreparedRun,
    labels: torch.Tensor,
    k: int,
    progress: bool = False,
    folds: torch.Tensor | None = None,
    on_fold: FoldHook | None = None,
) -> CrossFit:
    """Train ``prep``'s method on K-1 folds K times; score each fold with its model.

    Args:
        prep: the run's prepared data (:func:`prepare_training_set`); its own
            method is left untouched, each fold builds a fresh one.
        labels: (N,) given labels, in the order of ``prep``'s training set.
        k: number of folds (checked with :func:`check_folds` by the caller).
        progress: a progress bar over folds (and the trainer's over epochs).
        folds: (N,) a fold assignment to use instead of :func:`stratified_folds`.
        on_fold: called after each fold with the trained model (for inspection).
    """
    cfg = prep.cfg
    classnames, templates = prep.splits.classnames, prep.spec.templates
    feats = prep.train_features
    n = labels.numel()
    if not prep.method.trainable:
        logits = predict_logits(
            prep.method, feats.plain_view(), cfg.engine.batch_size, cfg.precision
        )
        return CrossFit(logits.softmax(dim=-1), torch.zeros(n, dtype=torch.long), 0)
    if folds is None:
        folds = stratified_folds(labels, k, cfg.train_seed)
    needs_val = bool(cfg.method.requirements().validation)
    probs = torch.zeros(n, len(classnames))
    for fold in tqdm(range(k), desc="cross-fit", disable=not progress):
        held = folds == fold
        train_idx, held_idx = (~held).nonzero().squeeze(1), held.nonzero().squeeze(1)
        # a method fitted on its data (linear probe, Tip-Adapter) is given the fold's
        # training part only, and the run's val split when it chooses on val
        data = FitData(
            features=feats.subset(~held),
            labels=labels[~held],
            val=prep.validation if needs_val else None,
            batch_size=cfg.engine.batch_size,
        )
        method = build_method(cfg, prep.backbone, classnames, templates, data=data)
        live = None
        if prep.live is not None:
            samples = [prep.live.samples[i] for i in train_idx.tolist()]
            live = LiveFeatures(prep.live.extractor, samples)
        trainer = Trainer(
            method,
            TrainData(data.features, data.labels, true_labels=None, live=live),
            cfg.optim,
            seed=cfg.train_seed,
            precision=cfg.precision,
            eval_batch_size=cfg.engine.batch_size,
            progress=progress,
        )
        # the run's model selection (eval.select: best-val chooses an epoch on the val
        # split, which no fold holds), then a fitted method's own choice, as train_run
        selection = make_selection(dataclasses.replace(prep, method=method))
        trainer.fit(on_epoch=None if selection is None else _select_after(selection))
        if selection is not None:
            selection.restore()
        if isinstance(method, FitsOnData):
            method.after_training()
        logits = predict_logits(
            method, feats.subset(held).plain_view(), cfg.engine.batch_size, cfg.precision
        )
        probs[held] = logits.softmax(dim=-1)
        if on_fold is not None:
            on_fold(fold, method, train_idx, held_idx)
    return CrossFit(probs, folds, k)


__all__ = [
    "DEFAULT_FOLDS",
    "CrossFit",
    "check_folds",
    "cross_fit",
    "default_folds",
    "prepare_training_set",
    "smallest_class",
    "stratified_folds",
]
