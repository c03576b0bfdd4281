"""Few-shot sampling: counts, determinism, order independence, too-few-images errors."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from visprompt.data.fewshot import fewshot_splits, sample_few_shot
from visprompt.data.types import DatasetSplits, Sample
from visprompt.errors import VispromptError


def pool(per_class: dict[int, int], prefix: str = "tr") -> list[Sample]:
    return [
        Sample(path=f"/d/{prefix}/{k}/{i:03d}.jpg", label=k, classname=f"c{k}")
        for k, n in per_class.items()
        for i in range(n)
    ]


def dataset(train: dict[int, int], val: dict[int, int], k: int = 3) -> DatasetSplits:
    return DatasetSplits(
        name="fake",
        classnames=tuple(f"c{i}" for i in range(k)),
        train=tuple(pool(train)),
        val=tuple(pool(val, "va")),
        test=tuple(pool({i: 2 for i in range(k)}, "te")),
    )


def test_exact_shots_per_class_without_duplicates():
    picked = sample_few_shot(pool({0: 20, 1: 30, 2: 16}), shots=16, seed=1)
    assert Counter(s.label for s in picked) == {0: 16, 1: 16, 2: 16}
    assert len({s.path for s in picked}) == 48
    assert list(picked) == sorted(picked, key=lambda s: (s.label, s.path))


def test_same_seed_same_files_regardless_of_input_order():
    items = pool({0: 20, 1: 20})
    shuffled = items[:]
    random.Random(0).shuffle(shuffled)
    a = sample_few_shot(items, shots=4, seed=7)
    assert sample_few_shot(shuffled, shots=4, seed=7) == a
    assert sample_few_shot(items, shots=4, seed=8) != a


def test_one_class_draw_does_not_depend_on_other_classes():
    a = sample_few_shot(pool({0: 20, 1: 20}), shots=4, seed=3)
    b = sample_few_shot(pool({0: 20, 1: 50}), shots=4, seed=3)
    assert [s for s in a if s.label == 0] == [s for s in b if s.label == 0]


def test_more_shots_than_a_class_has_is_a_clear_error():
    with pytest.raises(VispromptError) as exc:
        sample_few_shot(pool({0: 20, 1: 5}), shots=8, seed=1)
    assert str(exc.value) == (
        "class 'c1' has only 5 training images but 8 shots were asked for; lower data.shots to "
        "at most 5 or set data.allow_fewer=true (--allow-fewer) to use all of them"
    )


def test_allow_fewer_takes_what_there_is():
    picked = sample_few_shot(pool({0: 20, 1: 5}), shots=8, seed=1, allow_fewer=True)
    assert Counter(s.label for s in picked) == {0: 8, 1: 5}


@pytest.mark.parametrize("bad", [0, -1, 2.5, "4", True])
def test_bad_shots(bad):
    with pytest.raises(VispromptError, match="data.shots is .*; set it to a positive whole number"):
        sample_few_shot(pool({0: 5}), shots=bad, seed=1)


def test_fewshot_splits_train_val_and_test():
    full = dataset(train={0: 20, 1: 20, 2: 20}, val={0: 10, 1: 10, 2: 2})
    few = fewshot_splits(full, shots=16, seed=1)
    assert Counter(s.label for s in few.train) == {0: 16, 1: 16, 2: 16}
    # val: min(shots, 4) per class, fewer where val has fewer (never an error)
    assert Counter(s.label for s in few.val) == {0: 4, 1: 4, 2: 2}
    assert few.test == full.test
    assert fewshot_splits(full, shots=2, seed=1).sizes()["val"] == 6
    assert fewshot_splits(full, shots=2, seed=1, val_shots=3).sizes()["val"] == 8
    assert fewshot_splits(full, shots=16, seed=1) == few
    assert fewshot_splits(full, shots=None, seed=1) is full


def test_fewshot_splits_reports_a_class_without_training_images():
    full = dataset(train={0: 20, 1: 20}, val={0: 4}, k=3)
    with pytest.raises(VispromptError, match="class 'c2' has only 0 training images"):
        fewshot_splits(full, shots=1, seed=1)
    few = fewshot_splits(full, shots=1, seed=1, allow_fewer=True)
    assert few.sizes()["train"] == 2


@pytest.mark.parametrize("seed", [-1, 1.5, None])
def test_bad_seed(seed):
    with pytest.raises(VispromptError, match="is not a whole number >= 0; set seed"):
        sample_few_shot(pool({0: 5}), shots=2, seed=seed)
