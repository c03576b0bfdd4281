"""The validation split of a run, for "fit on train, choose on val": lazy features, noisy labels.

A method that chooses a hyper-parameter (linear-probe's C, Tip-Adapter's alpha and
beta) or a later ``eval.select`` reads :class:`ValidationSplit`. Nothing is computed
until it is read: a run that never looks at val extracts no val image and draws no
val labels, so its numbers (and its feature-cache hit counts) are those of a run
without this object.

Labels. The user of a noisy-label toolbox never has clean labels, so a choice made
on clean val labels would be optimistic. By default the run's noise (same type and
rate) is injected into the val labels too, through
:func:`visprompt.data.noise.inject_noise` with a seed stream of its own (so it
never shifts the training noise); the true val labels are kept for logging only.
This is a deliberate departure from the references: Dassl's val split (CoOp's
``lpclip``, Tip-Adapter's search) is clean. ``clean=True`` reads the true labels
instead (a method's ``val_labels: clean``). Real noise (``noise.type: real``, or a
dataset whose labels are noisy as shipped) injects nothing: val is as given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from visprompt.data.features import FeatureCache, SplitFeatures
from visprompt.data.images import check_unreadable
from visprompt.data.noise import NoisyLabels, inject_noise
from visprompt.data.types import Sample
from visprompt.errors import VispromptError

#: seed stream of the val labels' noise (the training noise uses the run seed itself)
VAL_NOISE_STREAM = 1


def val_noise_seed(seed: int) -> int:
    """The seed of the val labels' noise: a stream of ``seed`` apart from the training noise."""
    return int(np.random.SeedSequence([seed, VAL_NOISE_STREAM]).generate_state(1)[0])


def missing_validation_error(what: str, dataset: str, val_shots: int | None) -> VispromptError:
    """The one-line refusal of a run whose ``what`` needs val images the run does not have."""
    if val_shots == 0:
        return VispromptError(
            f"{what} needs the validation split, but data.val_shots is 0; set data.val_shots "
            "to at least 1 or leave it unset (data.shots gives min(shots, 4) validation images "
            "per class)"
        )
    return VispromptError(
        f"{what} needs the validation split, but dataset {dataset!r} has no validation "
        "images; give it one (a val/ folder, or a val split in its files) - data.shots then "
        "gives min(shots, 4) validation images per class"
    )


@dataclass
class ValidationSplit:
    """The run's validation images, their cached features and their (noisy) labels, lazily.

    Attributes:
        samples: the run's val samples (few-shot: ``min(shots, 4)`` per class).
        num_classes: K.
        cache: the run's feature cache (features come from it, plain view).
        noise_type, noise_rate: the run's noise, applied to the val labels.
        seed: the run's data seed (the val noise uses :func:`val_noise_seed` of it).
        real_noise: the labels are noisy as given (inject nothing).
        max_unreadable: fraction of unreadable val images tolerated.
        similarity: builds the (K, K) class similarity of ``asym-semantic`` noise.
        log: where warnings about skipped images go.
    """

    samples: tuple[Sample, ...]
    num_classes: int
    cache: FeatureCache
    noise_type: str = "none"
    noise_rate: float = 0.0
    seed: int = 1
    real_noise: bool = False
    max_unreadable: float = 0.01
    similarity: Callable[[], np.ndarray] | None = None
    log: Callable[[str], None] = print
    _features: SplitFeatures | None = field(default=None, repr=False)
    _kept: list[int] | None = field(default=None, repr=False)
    _noise: NoisyLabels | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def loaded(self) -> bool:
        """Whether the features were read (the run then records what val was used)."""
        return self._features is not None

    @property
    def features(self) -> SplitFeatures:
        """Plain-view features of the readable val images (extracted through the cache once)."""
        if self._features is None:
            feats = self.cache.get(list(self.samples), 0, desc="val images")
            bad = [i for i, ok in enumerate(feats.ok.tolist()) if not ok]
            if bad:
                check_unreadable(
                    [self.samples[i].path for i in bad],
                    len(self.samples),
                    self.max_unreadable,
                    "val",
                )
                for i in bad:
                    self.log(f"warning: skipping unreadable image {self.samples[i].path}")
                feats = feats.subset(feats.ok.clone())
            dropped = set(bad)
            self._kept = [i for i in range(len(self.samples)) if i not in dropped]
            self._features = feats
        return self._features

    def _labels(self) -> NoisyLabels:
        if self._noise is None:
            true = [s.label for s in self.samples]
            injects = not self.real_noise and self.noise_type not in ("none", "real")
            if injects:
                sim = self.similarity() if self.noise_type == "asym-semantic" else None
                self._noise = inject_noise(
                    true,
                    self.num_classes,
                    self.noise_type,
                    self.noise_rate,
                    seed=val_noise_seed(self.seed),
                    similarity=sim,
                )
            else:
                arr = np.asarray(true, dtype=np.int64)
                self._noise = NoisyLabels(noisy=arr, true=arr.copy(), is_noisy=arr != arr)
        return self._noise

    def labels(self, clean: bool = False) -> torch.Tensor:
        """(Nv,) labels of the readable val images: noisy as the run's (default) or true."""
        _ = self.features  # the readable subset is known once the features are read
        noise = self._labels()
        chosen = noise.true if clean else noise.noisy
        kept = self._kept if self._kept is not None else slice(None)
        return torch.tensor(chosen[kept], dtype=torch.long)

    def true_labels(self) -> torch.Tensor:
        """(Nv,) true labels of the readable val images (for logging only)."""
        return self.labels(clean=True)

    def record(self, clean: bool = False) -> dict[str, Any]:
        """What the run's result says about the val split a choice was made on."""
        noise = self._labels()
        kept = self._kept if self._kept is not None else list(range(len(self.samples)))
        return {
            "val_images": len(kept),
            "val_labels": "clean" if clean else "noisy",
            "val_noise": "none" if clean else (self.noise_type if noise.count else "none"),
            "val_num_noisy": 0 if clean else int(noise.is_noisy[kept].sum()),
        }


def require_validation(
    what: str, val: Sequence[Sample] | ValidationSplit, dataset: str, val_shots: int | None
) -> None:
    """Raise the one-line error when ``what`` needs val images and ``val`` has none."""
    if len(val) == 0:
        raise missing_validation_error(what, dataset, val_shots)
