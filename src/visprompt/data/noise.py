"""Synthetic label noise for the few-shot training set (the NLPrompt / VisPrompt protocol).

Exactly ``floor(rate * N)`` samples, chosen uniformly at random without
replacement from all N, receive a wrong label:

- ``sym``: a class drawn uniformly from the K - 1 *other* classes;
- ``asym``: the pair flip ``y -> (y + 1) mod K``;
- ``asym-semantic``: the most similar other class, by cosine similarity of
  the backbone's text embeddings of the class names (:func:`class_name_similarity`);
- ``none``: no noise (the rate must be 0);
- ``real``: labels kept as given, e.g. Food-101N's web labels (the rate must be 0).

This module owns the list of noise types (:data:`NoiseType`, :data:`NOISE_TYPES`)
and the one check of a (type, rate) pair (:func:`check_noise`); the config layer
and the balanced protocol use both.

The true labels are returned alongside for evaluating purification; training
must only ever see ``noisy``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from visprompt.data.types import Sample
from visprompt.data.validation import check_seed
from visprompt.errors import VispromptError

if TYPE_CHECKING:
    from visprompt.backbone import FrozenCLIP

#: The noise types, as a type for typed configs; :data:`NOISE_TYPES` lists the same names.
NoiseType = Literal["none", "real", "sym", "asym", "asym-semantic"]
NOISE_TYPES: tuple[str, ...] = get_args(NoiseType)
#: The types that change labels; the others take rate 0.
FLIPPING_NOISE_TYPES: tuple[str, ...] = ("sym", "asym", "asym-semantic")


@dataclass(frozen=True, eq=False)
class NoisyLabels:
    """Labels after noise injection (read-only arrays of length N).

    Attributes:
        noisy: the labels training sees (int64).
        true: the labels before injection (int64).
        is_noisy: True where ``noisy != true`` (bool).
    """

    noisy: np.ndarray
    true: np.ndarray
    is_noisy: np.ndarray

    @property
    def count(self) -> int:
        """Number of samples whose label was changed."""
        return int(self.is_noisy.sum())

    @property
    def rate(self) -> float:
        """Fraction of samples whose label was changed (0 for an empty set)."""
        return self.count / len(self.noisy) if len(self.noisy) else 0.0


def noisy_count(rate: float, n: int) -> int:
    """``floor(rate * n)`` computed on the decimal the rate was written as.

    Binary floating point makes ``0.29 * 100`` come out as 28.999..., so the
    product is taken on the shortest decimal that round-trips the float
    (``Fraction("0.29") * 100 = 29``).
    """
    return math.floor(Fraction(repr(float(rate))) * n)


def semantic_flip_targets(similarity: np.ndarray) -> np.ndarray:
    """For every class, the most similar *other* class (row argmax off the diagonal).

    Args:
        similarity: (K, K) class-to-class similarity, K >= 2, finite.

    Returns:
        int64 array of length K; ties go to the lowest class index.
    """
    sim = np.array(similarity, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] < 2:
        raise ValueError(f"similarity must be a (K, K) matrix with K >= 2, got {sim.shape}")
    if not np.isfinite(sim).all():
        raise ValueError("similarity contains non-finite values")
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(axis=1).astype(np.int64)


def check_noise(noise_type: str, rate: object) -> float:
    """The rate as a ``float`` when (``noise_type``, ``rate``) is a valid pair, else an error.

    Valid: a type of :data:`NOISE_TYPES`, a rate in [0, 1), and rate 0 for the
    types that inject nothing (``none``, ``real``).

    Raises:
        VispromptError: an unknown type, a rate that is not a number or lies
            outside [0, 1) (NaN included), or a non-zero rate with ``none``/``real``.
    """
    if noise_type not in NOISE_TYPES:
        raise VispromptError(
            f"unknown noise type {noise_type!r}; choose one of {', '.join(NOISE_TYPES)}"
        )
    try:
        value = float(rate)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise VispromptError(
            f"noise rate {rate!r} is not a number; set noise.rate to a value in [0, 1) such as 0.25"
        ) from None
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise VispromptError(
            f"noise rate {rate} is outside [0, 1); set noise.rate to a value in [0, 1) such as 0.25"
        )
    if noise_type not in FLIPPING_NOISE_TYPES and value != 0.0:
        raise VispromptError(
            f"noise type {noise_type!r} injects no noise, so its rate must be 0 (got {rate}); "
            "set noise.rate to 0 or choose sym, asym or asym-semantic"
        )
    return value


def inject_noise(
    labels: Sequence[int] | np.ndarray,
    num_classes: int,
    noise_type: str,
    rate: float,
    seed: int,
    similarity: np.ndarray | None = None,
) -> NoisyLabels:
    """Corrupt exactly ``floor(rate * N)`` labels.

    Args:
        labels: the N true labels, integers in 0..K-1.
        num_classes: K.
        noise_type: one of :data:`NOISE_TYPES`.
        rate: fraction of samples to corrupt, in [0, 1).
        seed: seeds the choice of samples and (``sym``) of new classes.
        similarity: (K, K) class similarity, required for ``asym-semantic``.

    Returns:
        :class:`NoisyLabels`; for the flipping types every corrupted label
        differs from its true label, so ``count == floor(rate * N)``.

    Raises:
        VispromptError: unknown type, rate outside [0, 1), a non-zero rate with
            ``none`` or ``real``, a flipping type with fewer than two classes, a
            negative seed.
        ValueError: labels outside 0..K-1, or a missing/misshaped
            ``similarity`` for ``asym-semantic`` (programming errors).
    """
    value = check_noise(noise_type, rate)
    seed = check_seed(seed)
    true = np.asarray(labels, dtype=np.int64).reshape(-1).copy()
    if true.size and (true.min() < 0 or true.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    noisy = true.copy()
    if noise_type in FLIPPING_NOISE_TYPES:
        if num_classes < 2:
            raise VispromptError(
                f"noise type {noise_type!r} needs at least 2 classes (got {num_classes}); use "
                f"noise.type none or a dataset with more classes"
            )
        n_flip = noisy_count(value, len(true))
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(true), size=n_flip, replace=False)
        y = true[idx]
        if noise_type == "sym":
            # Uniform over the K-1 other classes: draw from 0..K-2 and skip y.
            new = rng.integers(0, num_classes - 1, size=n_flip)
            noisy[idx] = new + (new >= y)
        elif noise_type == "asym":
            noisy[idx] = (y + 1) % num_classes
        else:
            if similarity is None:
                raise ValueError("asym-semantic noise needs the (K, K) class similarity")
            targets = semantic_flip_targets(similarity)
            if len(targets) != num_classes:
                raise ValueError(f"similarity is for {len(targets)} classes, not {num_classes}")
            noisy[idx] = targets[y]
    is_noisy = noisy != true
    for arr in (noisy, true, is_noisy):
        arr.setflags(write=False)
    return NoisyLabels(noisy=noisy, true=true, is_noisy=is_noisy)


def relabel(
    samples: Sequence[Sample], labels: Sequence[int] | np.ndarray, classnames: Sequence[str]
) -> tuple[Sample, ...]:
    """Samples carrying new labels (and the matching class names), same order."""
    if len(samples) != len(labels):
        raise ValueError(f"{len(samples)} samples but {len(labels)} labels")
    return tuple(
        Sample(path=s.path, label=int(y), classname=classnames[int(y)])
        for s, y in zip(samples, labels, strict=True)
    )


def class_name_similarity(
    backbone: FrozenCLIP,
    classnames: Sequence[str],
    template: str = "a photo of a {}.",
    batch_size: int = 256,
) -> np.ndarray:
    """Cosine similarity (K, K) of the backbone's text embeddings of the class names.

    Each class name (underscores read as spaces) is written into ``template``
    and encoded with ``backbone.encode_text``; the result feeds
    ``asym-semantic`` noise.
    """
    import torch

    from visprompt.backbone import clean_classname

    texts = [template.format(clean_classname(c)) for c in classnames]
    with torch.no_grad():
        feats = torch.cat(
            [
                backbone.encode_text(texts[i : i + batch_size], normalize=True).float().cpu()
                for i in range(0, len(texts), batch_size)
            ]
        )
    return (feats @ feats.T).double().numpy()
