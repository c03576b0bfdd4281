"""The image-folder reader: train/test(/val) class folders, seeded val hold-out."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections import Counter

import pytest

from visprompt.data import DATASETS
from visprompt.data.check import check_dataset, format_check
from visprompt.data.datasets._common import SymlinkLoopWarning
from visprompt.errors import VispromptError

read = DATASETS.get("folder").read


def test_reads_train_val_test_with_mixed_case_extensions(make_folder):
    root = make_folder(train=5, test=2, val=3)
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    splits = read(root)
    assert splits.classnames == ("ant", "bee", "cat")
    assert splits.sizes() == {"train": 15, "val": 9, "test": 6}
    assert {s.path.rsplit(".", 1)[1] for s in splits.train} == {"png", "JPG", "jpeg"}
    assert all(s.path.startswith(str(root)) for s in splits.train)


def test_without_val_a_seeded_fifth_of_train_becomes_val(make_folder):
    root = make_folder(train=10, test=2)
    a = read(root, seed=1)
    assert Counter(s.label for s in a.val) == {0: 2, 1: 2, 2: 2}
    assert len(a.train) == 24
    assert not {s.path for s in a.train} & {s.path for s in a.val}
    assert read(root, seed=1) == a  # same seed, same split
    others = [{s.path for s in read(root, seed=seed).val} for seed in range(2, 7)]
    assert any(o != {s.path for s in a.val} for o in others)


def test_val_holdout_takes_one_image_from_a_class_of_two(make_folder):
    root = make_folder(train=2, test=1)
    assert read(root).sizes() == {"train": 3, "val": 3, "test": 3}


def test_val_holdout_leaves_a_class_of_one_alone(make_folder):
    root = make_folder(train=1, test=1)
    assert read(root).sizes() == {"train": 3, "val": 0, "test": 3}


def test_class_missing_from_test_is_fine(make_folder):
    root = make_folder()
    shutil.rmtree(root / "test" / "cat")
    splits = read(root)
    assert splits.num_classes == 3 and {s.label for s in splits.test} == {0, 1}


def test_class_in_test_unknown_to_train(make_folder):
    root = make_folder()
    shutil.copytree(root / "test" / "cat", root / "test" / "dog")
    with pytest.raises(VispromptError, match="class folder .*test/dog has no counterpart in"):
        read(root)


@pytest.mark.parametrize("split", ["train", "test"])
def test_missing_train_or_test_folder(make_folder, split):
    root = make_folder()
    shutil.rmtree(root / split)
    with pytest.raises(VispromptError) as exc:
        read(root)
    assert f"folder {root / split} not found; expected layout: DIR/train/<class>/" in str(exc.value)


def test_missing_root_and_empty_class(make_folder, tmp_path):
    with pytest.raises(VispromptError, match="root folder .* does not exist"):
        read(tmp_path / "missing")
    root = make_folder()
    (root / "train" / "empty_class").mkdir()
    with pytest.raises(VispromptError, match="train/empty_class has no images"):
        read(root)


# ---------------------------------------------------------------- symbolic links


@contextlib.contextmanager
def _deadline(seconds: float):
    """Fail (instead of hanging) when the block runs longer than ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"still listing after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _linked_class(root, loops: int, write_image):
    """``train/ant`` with 4 real images (one in ``sub/``), ``loops`` symlink loops, a
    second link to ``sub/`` and a link to one of its images; 2 images in test."""
    ant = root / "train" / "ant"
    for i in range(3):
        write_image(ant / f"{i}.png", seed=i)
    write_image(ant / "sub" / "3.png", seed=3)
    os.symlink("..", ant / "sub" / "up")  # loop 1: sub/up -> ant
    if loops >= 2:
        os.symlink(".", ant / "again")  # loop 2: ant/again -> ant
    if loops >= 3:
        os.symlink("../..", ant / "sub" / "top")  # to train/, above the class folder
    os.symlink("sub", ant / "sub_again")  # the same folder twice: not a loop
    os.symlink("0.png", ant / "zero_link.png")  # the same file twice
    for i in range(2):
        write_image(root / "test" / "ant" / f"{i}.png", seed=10 + i)
    return root


@pytest.mark.parametrize("loops", [1, 2, 3])
def test_symlink_loops_are_walked_once_and_reported(tmp_path, image_writers, loops):
    root = _linked_class(tmp_path / f"links{loops}", loops, image_writers["ok"])
    real = {os.path.realpath(p) for p in (root / "train").rglob("*.png") if p.is_file()}
    assert len(real) == 4
    with _deadline(10), pytest.warns(SymlinkLoopWarning) as caught:
        started = time.perf_counter()
        splits = read(root, seed=1)
        seconds = time.perf_counter() - started
    listed = [s.path for s in splits.train + splits.val]
    assert len(listed) == len(set(listed)) == 4  # each real image once
    assert {os.path.realpath(p) for p in listed} == real
    assert all(p.startswith(str(root / "train" / "ant")) for p in listed)
    assert seconds < 1.0
    links = sorted(w.message.link for w in caught.list)
    assert len(links) == loops and links[0].endswith("again" if loops >= 2 else "up")
    check = check_dataset("folder", root, progress=False)
    assert check.sizes["train"] + check.sizes["val"] == 4 and check.ok
    assert len(check.symlink_loops) == loops
    text = format_check(check)
    assert f"symlink loops skipped: {loops} (links to a folder holding them" in text
    assert f"  {root / 'train' / 'ant' / 'sub' / 'up'}" in text
