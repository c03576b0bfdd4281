"""The class-balanced noisy few-shot protocol (PTNL / JoAPR): counts, sources, duplicates."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from visprompt.data.protocols import balanced_noisy_fewshot, noisy_slots
from visprompt.data.types import DatasetSplits, Sample
from visprompt.errors import VispromptError

K = 5
SIZES = (20, 21, 22, 23, 24)  # training images per class (clean pools 10..12)


def class_of(path: str) -> int:
    """The class an image really belongs to, read from its folder (independent of labels)."""
    return int(path.split("/")[2][1:])


def make_splits(sizes=SIZES) -> DatasetSplits:
    names = tuple(f"class{k}" for k in range(len(sizes)))
    train = tuple(
        Sample(path=f"/data/c{k}/img_{i:03d}.jpg", label=k, classname=names[k])
        for k, n in enumerate(sizes)
        for i in range(n)
    )
    test = tuple(
        Sample(path=f"/data/test/c{k}_{i}.jpg", label=k, classname=names[k])
        for k in range(len(sizes))
        for i in range(3)
    )
    val = tuple(Sample(path=f"/data/val/c{k}.jpg", label=k, classname=names[k]) for k in range(K))
    return DatasetSplits(name="toy", classnames=names, train=train, val=val, test=test)


@pytest.mark.parametrize("noise_type", ["sym", "asym"])
@pytest.mark.parametrize("rate", [0.125, 0.25, 0.5, 0.75])
def test_exact_counts_sources_and_no_duplicates(noise_type, rate):
    shots = 8
    splits = make_splits()
    fs, noise = balanced_noisy_fewshot(splits, shots, noise_type, rate, seed=3)
    paths = [s.path for s in fs.train]
    assert len(paths) == K * shots
    assert len(set(paths)) == len(paths), "an image appears twice in the training set"
    given, true = noise.noisy, noise.true
    # each Sample carries the image's true class, which is where the image really comes from
    assert [s.label for s in fs.train] == true.tolist()
    assert true.tolist() == [class_of(p) for p in paths]
    assert np.array_equal(noise.is_noisy, given != true)
    f = round(rate * shots)
    for k in range(K):
        mine = given == k
        assert mine.sum() == shots
        assert noise.is_noisy[mine].sum() == f
        foreign = true[mine & noise.is_noisy]
        assert (foreign != k).all()
        if noise_type == "asym":
            assert (foreign == (k + 1) % K).all()
    assert noise.count == K * f
    # val: clean images from the clean pools, never in train; test untouched
    left = {k: (n + 1) // 2 - (shots - f) for k, n in enumerate(SIZES)}  # clean pool - used
    assert Counter(s.label for s in fs.val) == {k: min(4, left[k]) for k in range(K)}
    assert all(class_of(s.path) == s.label for s in fs.val)
    assert not {s.path for s in fs.val} & set(paths)
    assert fs.test == splits.test


def test_sym_foreign_images_spread_over_the_other_classes():
    fs, noise = balanced_noisy_fewshot(make_splits(), 8, "sym", 0.75, seed=1)
    for k in range(K):
        sources = set(noise.true[(noise.noisy == k) & noise.is_noisy].tolist())
        assert k not in sources
        assert len(sources) >= 2  # 6 draws from 4 other pools, not all from one
    wrong = noise.is_noisy
    pairs = Counter(zip(noise.noisy[wrong].tolist(), noise.true[wrong].tolist(), strict=True))
    assert len(pairs) >= 12  # most of the 20 (given, source) pairs occur


def test_clean_and_noise_pools_are_disjoint_across_classes():
    """An image used as a foreign image never is a clean image of its own class (any seed)."""
    for seed in range(5):
        fs, noise = balanced_noisy_fewshot(make_splits(), 10, "sym", 0.5, seed=seed)
        clean_paths = {s.path for s, n in zip(fs.train, noise.is_noisy, strict=True) if not n}
        foreign = {s.path for s, n in zip(fs.train, noise.is_noisy, strict=True) if n}
        assert not clean_paths & foreign
        assert len(clean_paths) == K * 5 and len(foreign) == K * 5


def test_deterministic_by_seed_and_nested_over_rates():
    splits = make_splits()
    a = balanced_noisy_fewshot(splits, 8, "sym", 0.5, seed=7)
    b = balanced_noisy_fewshot(splits, 8, "sym", 0.5, seed=7)
    c = balanced_noisy_fewshot(splits, 8, "sym", 0.5, seed=8)
    assert a[0].train == b[0].train and np.array_equal(a[1].noisy, b[1].noisy)
    assert a[0].val == b[0].val
    assert [s.path for s in a[0].train] != [s.path for s in c[0].train]
    # input order does not matter
    shuffled = splits.with_splits(train=list(reversed(splits.train)))
    assert balanced_noisy_fewshot(shuffled, 8, "sym", 0.5, seed=7)[0].train == a[0].train
    # a higher rate keeps a subset of a lower rate's correctly labelled images
    low = balanced_noisy_fewshot(splits, 8, "asym", 0.25, seed=7)
    high = balanced_noisy_fewshot(splits, 8, "asym", 0.75, seed=7)
    clean = lambda r: {s.path for s, n in zip(r[0].train, r[1].is_noisy, strict=True) if not n}  # noqa: E731
    assert clean(high) < clean(low)


def test_rate_zero_and_real_noise_draw_only_clean_pools():
    splits = make_splits()
    for noise_type in ("none", "real"):
        fs, noise = balanced_noisy_fewshot(splits, 10, noise_type, 0.0, seed=2)
        assert noise.count == 0 and Counter(noise.noisy.tolist()) == {k: 10 for k in range(K)}
    with pytest.raises(VispromptError, match=r"clean pool holds 10 \(half\)"):
        balanced_noisy_fewshot(splits, 12, "none", 0.0, seed=2, pool_draw="strict")
    # by default (as the references) a short clean pool is drawn with replacement
    fs, noise = balanced_noisy_fewshot(splits, 12, "none", 0.0, seed=2)
    assert Counter(noise.noisy.tolist()) == {k: 12 for k in range(K)}
    assert len({s.path for s in fs.train}) < K * 12
    # real noise holds no noise pool back: the whole class can be drawn
    fs, noise = balanced_noisy_fewshot(splits, 20, "real", 0.0, seed=2)
    assert noise.count == 0 and len({s.path for s in fs.train}) == K * 20
    fs, _ = balanced_noisy_fewshot(splits, 6, "none", 0.0, seed=2, val_shots=2)
    assert Counter(s.label for s in fs.val) == {k: 2 for k in range(K)}


def test_val_is_lenient_when_the_clean_pool_runs_short():
    # 10 images: clean pool 5, 4 used by train at rate 0.5 -> 1 left for val
    fs, _ = balanced_noisy_fewshot(
        make_splits((10,) * K), 8, "sym", 0.5, seed=0, pool_draw="strict"
    )
    assert Counter(s.label for s in fs.val) == {k: 1 for k in range(K)}
    # drawn with replacement, val takes the clean-pool images no slot uses
    for seed in range(3):
        fs, _ = balanced_noisy_fewshot(make_splits((10,) * K), 8, "sym", 0.5, seed=seed)
        train = {s.path for s in fs.train}
        assert fs.val and not {s.path for s in fs.val} & train
        assert all(class_of(s.path) == s.label for s in fs.val)


def test_short_pair_flip_noise_pool_is_reused_with_replacement():
    small = make_splits((20, 4, 20, 20, 20))  # class1's noise pool holds 2, class0 needs 3
    fs, noise = balanced_noisy_fewshot(small, 4, "asym", 0.75, seed=1)
    foreign = [
        s.path
        for s, g, bad in zip(fs.train, noise.noisy, noise.is_noisy, strict=True)
        if g == 0 and bad
    ]
    assert len(foreign) == 3 and len(set(foreign)) == 2  # both images once, one again
    assert all(class_of(p) == 1 for p in foreign)


def test_rounding_is_half_up_on_the_written_decimal():
    assert noisy_slots(0.5, 8) == 4
    assert noisy_slots(0.125, 16) == 2
    assert noisy_slots(0.125, 4) == 1  # 0.5 rounds up
    assert noisy_slots(0.29, 100) == 29
    assert noisy_slots(0.0, 16) == 0


def test_errors_name_the_problem_and_the_fix():
    splits = make_splits()
    with pytest.raises(VispromptError, match=r"class 'class0' has 20 training images.*lower data"):
        balanced_noisy_fewshot(splits, 16, "sym", 0.25, seed=1, pool_draw="strict")  # 12 > 10
    small = make_splits((20, 4, 20, 20, 20))  # class1's noise pool holds 2
    with pytest.raises(VispromptError, match=r"class 'class0' with images of class 'class1'"):
        balanced_noisy_fewshot(small, 4, "asym", 0.75, seed=1, pool_draw="strict")
    with pytest.raises(VispromptError, match="pool_draw 'sometimes' is unknown"):
        balanced_noisy_fewshot(splits, 8, "sym", 0.5, seed=1, pool_draw="sometimes")
    with pytest.raises(VispromptError, match="hold 50 images"):
        balanced_noisy_fewshot(make_splits((20,) * K), 11, "sym", 0.99, seed=1)
    with pytest.raises(VispromptError, match="asym-semantic is not available|not available"):
        balanced_noisy_fewshot(splits, 8, "asym-semantic", 0.5, seed=1)
    with pytest.raises(VispromptError, match="set data.shots"):
        balanced_noisy_fewshot(splits, None, "sym", 0.5, seed=1)
    with pytest.raises(VispromptError, match=r"outside \[0, 1\)"):
        balanced_noisy_fewshot(splits, 8, "sym", 1.0, seed=1)
    with pytest.raises(VispromptError, match="injects no noise"):
        balanced_noisy_fewshot(splits, 8, "none", 0.5, seed=1)
    one = DatasetSplits(name="one", classnames=("a",), train=splits.train[:20], val=(), test=())
    with pytest.raises(VispromptError, match="at least 2 classes"):
        balanced_noisy_fewshot(one, 4, "sym", 0.5, seed=1)
