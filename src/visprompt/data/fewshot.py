"""Few-shot sampling: ``shots`` training images per class, ``min(shots, 4)`` for val.

Sampling is a pure function of the samples and the seed. Each class is sorted
by path and drawn with its own generator seeded by ``(seed, stream, label)``,
so the result does not depend on the input order, and one class's draw does
not change when another class gains or loses images. The output is ordered by
(label, path).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from visprompt.data.types import DatasetSplits, Sample
from visprompt.data.validation import check_seed, check_shots
from visprompt.errors import VispromptError

#: CoOp's cap on few-shot validation images per class.
MAX_VAL_SHOTS = 4
_TRAIN_STREAM, _VAL_STREAM = 0, 1


def _group(samples: Iterable[Sample]) -> dict[int, list[Sample]]:
    by_label: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        by_label[s.label].append(s)
    return by_label


def _draw(
    by_label: dict[int, list[Sample]],
    shots: int,
    seed: int,
    stream: int,
    allow_fewer: bool,
    split: str,
    classnames: Sequence[str] | None = None,
    held_out: dict[int, list[Sample]] | None = None,
) -> tuple[Sample, ...]:
    """Draw from each class (the callers have checked ``shots`` and ``seed``)."""
    labels = sorted(set(by_label) | set(range(len(classnames or ()))))
    chosen: list[Sample] = []
    for label in labels:
        items = sorted(by_label.get(label, ()), key=lambda s: s.path)
        n = len(items)
        if n < shots and not allow_fewer:
            name = items[0].classname if items else classnames[label]
            # Say where the others went: a folder of 2 whose val split took 1 must not
            # read as "the class has 1 image".
            n_val = len((held_out or {}).get(label, ()))
            where = (
                f" ({n + n_val} in the dataset, {n_val} of them in the validation split)"
                if n_val
                else ""
            )
            raise VispromptError(
                f"class {name!r} has only {n} {split} images{where} but {shots} shots were "
                "asked for; "
                f"lower data.shots to at most {n} or set data.allow_fewer=true (--allow-fewer) "
                f"to use all of them"
            )
        take = min(shots, n)
        rng = np.random.default_rng([seed, stream, label])
        picks = np.sort(rng.choice(n, size=take, replace=False)) if take else []
        chosen.extend(items[i] for i in picks)
    return tuple(sorted(chosen, key=lambda s: (s.label, s.path)))


def sample_few_shot(
    samples: Sequence[Sample], shots: int, seed: int, allow_fewer: bool = False
) -> tuple[Sample, ...]:
    """Draw ``shots`` samples per class without replacement.

    Args:
        samples: the pool (any order; duplicates are treated as distinct).
        shots: images per class, >= 1.
        seed: the run seed; the same seed and pool give the same files.
        allow_fewer: take every image of a class that has fewer than ``shots``
            instead of failing.

    Returns:
        The chosen samples ordered by (label, path).

    Raises:
        VispromptError: ``shots`` is not a positive integer, ``seed`` is
            negative, or a class has
            fewer than ``shots`` images and ``allow_fewer`` is False (the
            message names the class, its count and the fix).
    """
    shots, seed = check_shots(shots), check_seed(seed)
    return _draw(_group(samples), shots, seed, _TRAIN_STREAM, allow_fewer, "training")


def fewshot_splits(
    splits: DatasetSplits,
    shots: int | None,
    seed: int,
    val_shots: int | None = None,
    allow_fewer: bool = False,
) -> DatasetSplits:
    """The few-shot version of a dataset: sampled train and val, test untouched.

    Args:
        splits: the full dataset.
        shots: training images per class; None keeps every train and val image.
        seed: the run seed.
        val_shots: validation images per class; default ``min(shots, 4)``
            (CoOp's protocol).
        allow_fewer: accept training classes with fewer than ``shots`` images.

    Validation is always lenient: a class with fewer val images than asked
    keeps all it has (CoOp does the same), since val never trains the model.
    Every class of ``splits.classnames`` must have ``shots`` training images
    (a class with none is reported too) unless ``allow_fewer`` is set.

    Raises:
        VispromptError: bad ``shots``/``val_shots``, or too few training images
            in a class without ``allow_fewer``.
    """
    if shots is None:
        return splits
    shots, seed = check_shots(shots), check_seed(seed)
    v_shots = (
        min(shots, MAX_VAL_SHOTS) if val_shots is None else check_shots(val_shots, "val shots")
    )
    train = _draw(
        _group(splits.train),
        shots,
        seed,
        _TRAIN_STREAM,
        allow_fewer,
        "training",
        splits.classnames,
        held_out=_group(splits.val),
    )
    val = _draw(_group(splits.val), v_shots, seed, _VAL_STREAM, True, "validation")
    return splits.with_splits(train=train, val=val)
