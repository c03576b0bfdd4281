"""Every registered dataset reader reads its fixture layout (parametrised over the registry).

Each reader gets the smallest valid layout written by ``tests/dataset_layouts.py``
(:data:`LAYOUTS`); a dataset registered without one fails here with the fix.
What every reader must return: class names, non-empty train and test splits,
labels in range that match their class names, existing image files, no image
in both train and test, and the same splits when read twice.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dataset_layouts import LAYOUTS

from visprompt.data import DATASETS, DatasetSplits


def check_reader_reads_its_layout(name: str, tmp: Path) -> DatasetSplits:
    spec = DATASETS.get(name)
    assert spec.name == name and spec.description.strip() and spec.layout.strip()
    assert spec.templates and all("{}" in t for t in spec.templates)
    assert name in LAYOUTS, (
        f"dataset {name!r} has no fixture layout; add a writer of its smallest valid layout "
        "to LAYOUTS in tests/dataset_layouts.py"
    )
    root = LAYOUTS[name](tmp)
    splits = spec.read(root, seed=1)
    assert isinstance(splits, DatasetSplits)
    k = splits.num_classes
    assert k >= 2 and len(set(splits.classnames)) == k
    assert splits.train and splits.test
    for split in (splits.train, splits.val, splits.test):
        for s in split:
            assert 0 <= s.label < k and s.classname == splits.classnames[s.label]
            assert Path(s.path).is_absolute() and Path(s.path).is_file(), s.path
    assert {s.label for s in splits.train} == set(range(k))  # every class can be trained
    assert not {s.path for s in splits.train} & {s.path for s in splits.test}  # no leak
    assert spec.read(root, seed=1) == splits  # a pure function of the files and the seed
    return splits


def test_the_registry_is_what_is_parametrised():
    assert {"folder", "csv", "food101n", "caltech101"} <= set(DATASETS.names())


@pytest.mark.parametrize("name", DATASETS.names())
def test_reader_reads_its_fixture_layout(name, tmp_path):
    check_reader_reads_its_layout(name, tmp_path)
