"""Food-101N: real label noise from the web, tested on Food-101's clean test split.

Food-101N (Lee et al., CleanNet, CVPR 2018) holds about 310k web images
sorted into the 101 Food-101 classes by search query, so a share of its labels
is wrong (about 20% by the authors' estimate). Expected layout under ``--root DATA``::

    DATA/food101n/images/<class>/*.jpg      Food-101N_release/images, folder renamed
    DATA/food-101/images/<class>/*.jpg      Food-101 as in CoOp's DATASETS.md
    DATA/food-101/split_zhou_Food101.json

(``food-101n`` — the name NLPrompt's reader uses — and ``Food-101N_release``
are accepted as well; ``--root`` may also be the Food-101N folder itself when
``food-101`` sits next to it.)

What the NLPrompt reference does: train = every Food-101N image, labelled by
its class folder (sorted folder names), with an empty val split (its
``read_and_split_data`` keeps 100% for train); test = the test list of
``split_zhou_Food101.json``. Few-shot sampling then draws ``shots`` noisy
images per class.

What this reader does: the same train and test, with two changes.
Labels and class names come from the Food-101 split (matched by folder name),
so a Food-101N folder that is not a Food-101 class, or a Food-101 class without
a Food-101N folder, is an error instead of a silent label shift; and val is
the val list of ``split_zhou_Food101.json`` (clean Food-101 images, disjoint
from test) so that validation works like on the other benchmarks. The files
in ``Food-101N_release/meta`` (image lists, human verification labels) are not
needed.
"""

from __future__ import annotations

import os
from pathlib import Path

from visprompt.data.datasets._common import (
    class_folders,
    list_images,
    require_root,
    sort_samples,
)
from visprompt.data.datasets.coop_benchmarks import read_coop_split
from visprompt.data.registry import register_dataset
from visprompt.data.types import DatasetSpec, DatasetSplits, Sample
from visprompt.errors import VispromptError

NOISY_FOLDERS = ("food101n", "food-101n", "Food-101N_release")
CLEAN_FOLDER = "food-101"
SPLIT_FILE = "split_zhou_Food101.json"
LAYOUT = (
    "expected layout: DATA/food101n/images/<class>/*.jpg (Food-101N_release images; "
    "food-101n or Food-101N_release also accepted), DATA/food-101/images/ and "
    "DATA/food-101/split_zhou_Food101.json as in CoOp's DATASETS.md, with --root DATA"
)


def _locate(root: Path) -> tuple[Path, Path]:
    """``(DATA folder, Food-101N folder)`` from a root that is either of them."""
    for name in NOISY_FOLDERS:
        if (root / name).is_dir():
            return root, root / name
    if root.name in NOISY_FOLDERS or (
        (root / "images").is_dir() and (root.parent / CLEAN_FOLDER).is_dir()
    ):
        return root.parent, root
    raise VispromptError(f"Food-101N folder {root / NOISY_FOLDERS[0]} not found; {LAYOUT}")


def read_food101n(root: str | Path | None, seed: int = 1) -> DatasetSplits:  # noqa: ARG001
    """Read Food-101N (noisy train) with Food-101's val and test lists.

    ``seed`` is unused: both sources have fixed splits.

    Raises:
        VispromptError: missing folders or split file, a malformed split file,
            Food-101N class folders that do not match the Food-101 classes, an
            empty class folder, missing Food-101 val/test images.
    """
    data_root, noisy_dir = _locate(require_root(root, "food101n", LAYOUT))
    clean_dir = data_root / CLEAN_FOLDER
    if not clean_dir.is_dir():
        raise VispromptError(
            f"Food-101 folder {clean_dir} not found (Food-101N is tested on Food-101's test "
            f"split); {LAYOUT}"
        )
    image_dir = clean_dir / "images"
    classnames, clean = read_coop_split(
        clean_dir / SPLIT_FILE, image_dir, LAYOUT, verify=("val", "test")
    )
    # Food-101's split names images "<class folder>/<id>.jpg": that folder is the
    # key shared with Food-101N's class folders.
    label_of_folder: dict[str, int] = {}
    for split in ("train", "val", "test"):
        for s in clean[split]:
            folder = os.path.relpath(s.path, image_dir).split(os.sep)[0]
            if label_of_folder.setdefault(folder, s.label) != s.label:
                raise VispromptError(
                    f"split file {clean_dir / SPLIT_FILE} gives folder {folder!r} two labels; "
                    f"re-download it from CoOp's DATASETS.md ({LAYOUT})"
                )

    noisy_images = noisy_dir / "images"
    if not noisy_images.is_dir():
        raise VispromptError(f"Food-101N image folder {noisy_images} not found; {LAYOUT}")
    folders = class_folders(noisy_images)
    unknown = [f for f in folders if f not in label_of_folder]
    if unknown:
        raise VispromptError(
            f"Food-101N folder {noisy_images / unknown[0]} is not a Food-101 class "
            f"({len(unknown)} such folders); keep only the 101 Food-101 class folders ({LAYOUT})"
        )
    absent = sorted(set(label_of_folder) - set(folders))
    if absent:
        raise VispromptError(
            f"Food-101N class folder {noisy_images / absent[0]} not found ({len(absent)} of "
            f"{len(label_of_folder)} classes missing); extract the complete Food-101N_release "
            f"images ({LAYOUT})"
        )
    train = []
    for folder in folders:
        label = label_of_folder[folder]
        paths = list_images(noisy_images / folder)
        if not paths:
            raise VispromptError(
                f"Food-101N class folder {noisy_images / folder} has no images; extract the "
                f"complete Food-101N_release images ({LAYOUT})"
            )
        train.extend(Sample(path=p, label=label, classname=classnames[label]) for p in paths)
    return DatasetSplits(
        name="food101n",
        classnames=classnames,
        train=sort_samples(train),
        val=clean["val"],
        test=clean["test"],
        real_noise=True,
    )


register_dataset(
    DatasetSpec(
        name="food101n",
        description="Food-101N: 101 food classes with real web label noise; Food-101 test split",
        layout=LAYOUT,
        read=read_food101n,
        templates=("a photo of {}, a type of food.",),
    )
)
