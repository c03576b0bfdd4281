"""The class-balanced noisy few-shot protocol of PTNL and JoAPR (``noise.protocol: balanced``).

The default protocol (``relabel``, :mod:`visprompt.data.noise`) draws ``shots``
images per class and then gives a fixed fraction of them a wrong label. PTNL
(ICCV 2023) and JoAPR (CVPR 2024) build the noisy training set differently:
every class gets exactly ``shots`` training slots, of which
``f = round(rate * shots)`` hold images of *other* classes labelled as this
class. So each class is equally noisy, and the training set mixes correctly
labelled images with foreign ones.

How the set is built (all draws seeded by ``seed``, each class with its own
generator, so a class's draw does not depend on the order of the input):

1. Each class's training images (sorted by path, duplicates dropped) are put in
   a seeded random order and split in two: the first ``ceil(n / 2)`` form the
   class's *clean pool*, the rest its *noise pool* (the references split into
   halves the same way). An image is only ever used from one pool.

   The references take the halves in the split file's order instead (JoAPR's
   ``add_noise.py``; its pair-flip generator then shuffles within each half), so
   their pools are the same for every seed. We keep a seeded order: our readers
   do not all keep a file order (image folders, CSVs), sorting by path would
   make the pools depend on file names (e.g. all of one camera's shots in one
   half), and with a seeded split the spread over seeds covers the choice of
   pools too. (CoOp wrote e.g. the Caltech101 and DTD split files from
   shuffled image lists, ``DTD.read_and_split_data``, so there the reference's
   fixed halves are one random split as well.)
2. Class i fills ``shots - f`` slots from its own clean pool. ``pool_draw``
   says what happens when the pool is short:

   - ``"replacement"`` (default, as the references do): when the clean pool
     holds fewer than ``shots`` images, the clean images are drawn uniformly
     *with replacement*, so an image can fill several slots. The threshold is
     the references' own: they draw ``shots`` positions (with replacement iff
     the pool holds fewer than ``shots``) and then overwrite ``f`` of them with
     foreign images, so a pool that could supply the ``shots - f`` clean
     images without repeats is still drawn with replacement. Caltech101's
     smallest classes hold about 16 training images in the CoOp split (clean
     pool 8); 55 of its 100 have a clean pool below 16.
   - ``"strict"``: no image is used twice; a class whose clean pool holds fewer
     than ``shots - f`` images is an error.

   Without replacement, the clean images are the first of the pool's random
   order; with replacement, the first ``shots - f`` of a seeded sequence of
   ``shots`` uniform draws. Either way a higher rate's clean images are a
   subset of a lower rate's. The run folder reports how many training
   entries repeat an image (``num_duplicates`` in ``trainset.json`` and
   ``result.json``).
3. Class i's ``f`` noisy slots are filled with images of other classes taken
   from their noise pools:

   - ``sym``: each image drawn uniformly from the union of what is left of the
     other classes' noise pools (without replacement over the whole training
     set; slots are filled round-robin over the classes in a random order,
     so that no class finds the pools it may draw from used up by the
     others; should that still happen, the draw is repeated with a new
     seeded stream). The reference draws with replacement and so silently
     collapsed duplicates; here there are none.
   - ``asym`` (pair flip): all ``f`` images from the noise pool of class
     ``(i + 1) mod K``. With ``pool_draw: replacement``, a noise pool that
     holds fewer than ``f`` images gives each of its images once and the rest
     drawn uniformly with replacement from it (the reference repeats the
     pool's last image for every missing slot); ``strict`` refuses.
   - ``none`` (rate 0): no foreign images; the clean pools still hold only
     half of each class, so the correctly labelled images of a noisy run are
     a subset of the clean run's.
   - ``real`` (labels as given, e.g. Food-101N): no foreign images, and no
     noise pool is held out: the whole class is the clean pool.

4. Validation: ``val_shots`` (default ``min(shots, 4)``) images per class from
   the images of its clean pool that no training slot uses, in the pool's
   order (fewer when the pool runs short, as val never trains; none when
   every image trains), correctly labelled. The dataset's own val split is
   not used.

Rounding: ``f = floor(rate * shots + 1/2)`` on the decimal the rate was
written as (round half up; 0.5 * 8 = 4, 0.125 * 16 = 2).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from visprompt.data.fewshot import MAX_VAL_SHOTS
from visprompt.data.noise import NoisyLabels, check_noise
from visprompt.data.types import DatasetSplits, Sample
from visprompt.data.validation import check_seed, check_shots
from visprompt.errors import VispromptError

#: Noise types the balanced protocol understands.
BALANCED_NOISE_TYPES = ("none", "real", "sym", "asym")
#: What a pool too small for its draw does (``noise.pool_draw``; see the module docstring).
POOL_DRAWS = ("replacement", "strict")
_POOL_STREAM, _SYM_STREAM, _CLEAN_STREAM, _FLIP_STREAM = 20, 21, 22, 23
#: Fresh attempts of the round-robin ``sym`` draw before giving up (it only fails
#: when the noise pools are nearly exhausted by the request).
_SYM_ATTEMPTS = 50


def noisy_slots(rate: float, shots: int) -> int:
    """``round(rate * shots)``, half up, computed on the decimal the rate was written as."""
    return math.floor(Fraction(repr(float(rate))) * shots + Fraction(1, 2))


def _check_args(shots: object, noise_type: str, rate: object, seed: object) -> tuple[int, float]:
    if shots is None:
        raise VispromptError(
            "noise.protocol balanced needs a number of shots per class; set data.shots (e.g. 16) "
            "or use noise.protocol relabel"
        )
    shots = check_shots(shots)
    value = check_noise(noise_type, rate)
    if noise_type not in BALANCED_NOISE_TYPES:  # what this protocol adds to the common rules
        raise VispromptError(
            f"noise type {noise_type!r} is not available with noise.protocol balanced; choose "
            f"one of {', '.join(BALANCED_NOISE_TYPES)} or use noise.protocol relabel"
        )
    check_seed(seed)
    return shots, value


def _class_images(splits: DatasetSplits) -> list[list[Sample]]:
    """Each class's training samples, sorted by path, one per path."""
    by_label: dict[int, dict[str, Sample]] = defaultdict(dict)
    owner: dict[str, int] = {}
    for s in splits.train:
        if owner.setdefault(s.path, s.label) != s.label:
            raise VispromptError(
                f"image {s.path} is listed under two classes ({splits.classnames[owner[s.path]]!r} "
                f"and {s.classname!r}); remove one of the entries from the dataset"
            )
        by_label[s.label][s.path] = s
    return [[by_label[k][p] for p in sorted(by_label[k])] for k in range(splits.num_classes)]


def _pools(
    images: list[Sample], seed: int, label: int, split: bool = True
) -> tuple[list[Sample], list[Sample]]:
    """A class's (clean pool, noise pool), each in a seeded random order.

    ``split=False`` puts every image in the clean pool (real noise: nothing is held out).
    """
    order = np.random.default_rng([seed, _POOL_STREAM, label]).permutation(len(images))
    shuffled = [images[i] for i in order]
    half = (len(shuffled) + 1) // 2 if split else len(shuffled)
    return shuffled[:half], shuffled[half:]


def _clean_positions(
    pool: int, shots: int, n_clean: int, seed: int, label: int, pool_draw: str
) -> list[int] | None:
    """Positions in a class's clean pool of its ``n_clean`` clean images (None: too few).

    Without replacement the first ``n_clean`` of the pool (already in random
    order); with replacement (``pool_draw="replacement"`` and fewer than
    ``shots`` images, the references' rule) the first ``n_clean`` of ``shots``
    seeded uniform draws.
    """
    if pool >= shots or (pool_draw == "strict" and pool >= n_clean):
        return list(range(n_clean))
    if pool_draw == "strict" or pool == 0:
        return None
    draws = np.random.default_rng([seed, _CLEAN_STREAM, label]).integers(pool, size=shots)
    return [int(i) for i in draws[:n_clean]]


def _sym_sources(
    pool_sizes: Sequence[int], slots: int, seed: int
) -> list[list[tuple[int, int]]] | None:
    """For each class, ``slots`` (source class, position in its noise pool) pairs.

    Every image is drawn uniformly from the union of what is left of the other
    classes' noise pools; returns None when a class finds nothing left (the
    caller retries with another stream).
    """
    k = len(pool_sizes)
    for attempt in range(_SYM_ATTEMPTS):
        rng = np.random.default_rng([seed, _SYM_STREAM, attempt])
        left = np.asarray(pool_sizes, dtype=np.int64).copy()
        used = np.zeros(k, dtype=np.int64)
        picks: list[list[tuple[int, int]]] = [[] for _ in range(k)]
        ok = True
        for _ in range(slots):
            for i in rng.permutation(k):
                weights = left.astype(np.float64)
                weights[i] = 0.0
                total = weights.sum()
                if total <= 0:
                    ok = False
                    break
                j = int(rng.choice(k, p=weights / total))
                # The noise pool is already in random order: its next image is a uniform draw.
                picks[i].append((j, int(used[j])))
                used[j] += 1
                left[j] -= 1
            if not ok:
                break
        if ok:
            return picks
    return None


def balanced_noisy_fewshot(
    splits: DatasetSplits,
    shots: int,
    noise_type: str,
    rate: float,
    seed: int,
    val_shots: int | None = None,
    pool_draw: str = "replacement",
) -> tuple[DatasetSplits, NoisyLabels]:
    """The class-balanced noisy few-shot training set of PTNL/JoAPR (see module docstring).

    Args:
        splits: the full dataset (its ``train`` split feeds the pools).
        shots: training slots per class, >= 1.
        noise_type: ``sym``, ``asym`` (pair flip), or ``none``/``real`` (rate 0:
            ``shots`` images from each clean pool - for ``real`` the whole
            class - and no foreign images).
        rate: fraction of each class's slots that hold foreign images, in [0, 1).
        seed: seeds the pools, the draws and the validation images.
        val_shots: validation images per class (default ``min(shots, 4)``).
        pool_draw: ``"replacement"`` (default, as the references): a clean pool
            with fewer than ``shots`` images is drawn with replacement, and a
            pair-flip noise pool with fewer than ``f`` images is reused;
            ``"strict"``: no image twice, a short pool is an error.

    Returns:
        ``(few_shot_splits, noise)``: ``few_shot_splits.train`` holds the
        ``K * shots`` training samples ordered by (given label, path), each
        Sample carrying the image's TRUE class (with ``pool_draw="replacement"``
        an image may appear more than once); ``noise.noisy`` is the label
        each one is trained with (the class whose slot it fills), ``noise.true``
        its real class, ``noise.is_noisy`` where they differ (exactly
        ``round(rate * shots)`` per given class). ``val`` is replaced by clean
        images from the clean pools; ``test`` is untouched.

    Raises:
        VispromptError: no shots given, a noise type this protocol lacks, a
            rate outside [0, 1), fewer than two classes with noise, an unknown
            ``pool_draw``, or a class whose pools are too small for the request
            (the message names the class, the counts and the fix).
    """
    shots, rate = _check_args(shots, noise_type, rate, seed)
    if pool_draw not in POOL_DRAWS:
        raise VispromptError(
            f"noise.pool_draw {pool_draw!r} is unknown; choose replacement (as PTNL/JoAPR) or "
            "strict"
        )
    strict = pool_draw == "strict"
    k = splits.num_classes
    f = noisy_slots(rate, shots) if noise_type in ("sym", "asym") else 0
    if f and k < 2:
        raise VispromptError(
            f"noise type {noise_type!r} needs at least 2 classes (got {k}); use noise.type none "
            "or a dataset with more classes"
        )
    v_shots = (
        min(shots, MAX_VAL_SHOTS)
        if val_shots is None
        else check_shots(val_shots, "val shots", minimum=0)
    )
    names = splits.classnames
    fix = "lower data.shots or noise.rate, add images, or use noise.protocol relabel"
    if strict:
        fix += " (or noise.pool_draw replacement, which reuses images as the references do)"
    images = _class_images(splits)
    split = noise_type != "real"
    pools = [_pools(imgs, seed, label, split) for label, imgs in enumerate(images)]
    n_clean = shots - f
    clean_pos: list[list[int]] = []
    for label, (clean, _noise) in enumerate(pools):
        pos = _clean_positions(len(clean), shots, n_clean, seed, label, pool_draw)
        if pos is None:
            raise VispromptError(
                f"class {names[label]!r} has {len(images[label])} training images, so its clean "
                f"pool holds {len(clean)}{' (half)' if split else ''}, but {shots} shots at "
                f"noise rate {rate:g} need {n_clean} correctly labelled images from it; {fix}"
            )
        clean_pos.append(pos)
    noise_sizes = [len(noise) for _, noise in pools]
    sources: list[list[tuple[int, int]]] = [[] for _ in range(k)]
    if f and noise_type == "asym":
        for label in range(k):
            src = (label + 1) % k
            size = noise_sizes[src]
            if size < f and (strict or size == 0):
                raise VispromptError(
                    f"pair-flip noise fills {f} slots of class {names[label]!r} with images of "
                    f"class {names[src]!r}, whose noise pool holds only {size} "
                    f"(half of its {len(images[src])} training images); {fix}"
                )
            pos = list(range(min(f, size)))
            if size < f:  # each image once, the rest drawn with replacement
                rng = np.random.default_rng([seed, _FLIP_STREAM, label])
                pos += [int(j) for j in rng.integers(size, size=f - size)]
            sources[label] = [(src, j) for j in pos]
    elif f:
        total = sum(noise_sizes)
        short = [i for i in range(k) if total - noise_sizes[i] < f]
        if total < k * f or short:
            where = f"class {names[short[0]]!r}" if short else "the classes"
            raise VispromptError(
                f"symmetric noise needs {f} foreign images for each of {k} classes ({k * f} in "
                f"all) from the other classes' noise pools, which hold {total} images; {where} "
                f"cannot be served; {fix}"
            )
        picks = _sym_sources(noise_sizes, f, seed)
        if picks is None:
            raise VispromptError(
                f"could not fill {f} noisy slots per class without reusing an image: the noise "
                f"pools ({total} images for {k * f} slots) are nearly exhausted; {fix}"
            )
        sources = picks
    train: list[tuple[int, Sample]] = []  # (given label, sample with its true label)
    val: list[Sample] = []
    for label, (clean, _noise) in enumerate(pools):
        train.extend((label, clean[i]) for i in clean_pos[label])
        used = set(clean_pos[label])
        val.extend([s for i, s in enumerate(clean) if i not in used][:v_shots])
        train.extend((label, pools[src][1][j]) for src, j in sources[label])
    train.sort(key=lambda item: (item[0], item[1].path))
    given = np.array([g for g, _ in train], dtype=np.int64)
    true = np.array([s.label for _, s in train], dtype=np.int64)
    is_noisy = given != true
    for arr in (given, true, is_noisy):
        arr.setflags(write=False)
    out = splits.with_splits(
        train=[s for _, s in train], val=sorted(val, key=lambda s: (s.label, s.path))
    )
    return out, NoisyLabels(noisy=given, true=true, is_noisy=is_noisy)


__all__ = ["BALANCED_NOISE_TYPES", "POOL_DRAWS", "balanced_noisy_fewshot", "noisy_slots"]
