"""The CoOp few-shot benchmarks, read from CoOp's fixed ``split_zhou_*.json`` files.

Every benchmark lives in its own folder under a common data folder (CoOp's
``$DATA``), with an image folder and a split file (CoOp's DATASETS.md)::

    DATA/caltech-101/101_ObjectCategories/   DATA/caltech-101/split_zhou_Caltech101.json
    DATA/oxford_pets/images/                 DATA/oxford_pets/split_zhou_OxfordPets.json
    DATA/oxford_flowers/jpg/                 DATA/oxford_flowers/split_zhou_OxfordFlowers.json
    DATA/dtd/images/                         DATA/dtd/split_zhou_DescribableTextures.json
    DATA/eurosat/2750/                       DATA/eurosat/split_zhou_EuroSAT.json
    DATA/ucf101/UCF-101-midframes/           DATA/ucf101/split_zhou_UCF101.json

A split file is a JSON object ``{"train": [...], "val": [...], "test": [...]}``
whose entries are ``[path relative to the image folder, label, class name]``.
``--root`` may be ``DATA`` or the benchmark's own folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from visprompt.data.datasets._common import (
    check_contiguous_labels,
    require_files,
    require_root,
    sort_samples,
)
from visprompt.data.registry import register_dataset
from visprompt.data.types import DatasetSpec, DatasetSplits, Sample
from visprompt.errors import VispromptError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CoopBenchmark:
    """Where one benchmark's files live and how CoOp prompts it zero-shot."""

    name: str
    folder: str
    image_dir: str
    split_file: str
    template: str
    description: str

    @property
    def layout(self) -> str:
        return (
            f"expected layout: DATA/{self.folder}/{self.image_dir}/ and "
            f"DATA/{self.folder}/{self.split_file} as in CoOp's DATASETS.md, with --root DATA "
            f"or --root DATA/{self.folder}"
        )


BENCHMARKS: tuple[CoopBenchmark, ...] = (
    CoopBenchmark(
        "caltech101",
        "caltech-101",
        "101_ObjectCategories",
        "split_zhou_Caltech101.json",
        "a photo of a {}.",
        "Caltech101: 100 object categories (CoOp split)",
    ),
    CoopBenchmark(
        "oxford_pets",
        "oxford_pets",
        "images",
        "split_zhou_OxfordPets.json",
        "a photo of a {}, a type of pet.",
        "Oxford-IIIT Pets: 37 cat and dog breeds (CoOp split)",
    ),
    CoopBenchmark(
        "oxford_flowers",
        "oxford_flowers",
        "jpg",
        "split_zhou_OxfordFlowers.json",
        "a photo of a {}, a type of flower.",
        "Oxford Flowers102: 102 flower species (CoOp split)",
    ),
    CoopBenchmark(
        "dtd",
        "dtd",
        "images",
        "split_zhou_DescribableTextures.json",
        "{} texture.",
        "DTD: 47 describable textures (CoOp split)",
    ),
    CoopBenchmark(
        "eurosat",
        "eurosat",
        "2750",
        "split_zhou_EuroSAT.json",
        "a centered satellite photo of {}.",
        "EuroSAT: 10 land-use classes in Sentinel-2 images (CoOp split)",
    ),
    CoopBenchmark(
        "ucf101",
        "ucf101",
        "UCF-101-midframes",
        "split_zhou_UCF101.json",
        "a photo of a person doing {}.",
        "UCF101: 101 human actions, middle video frames (CoOp split)",
    ),
)


def locate_dataset_dir(root: Path, folder: str, markers: tuple[str, ...], layout: str) -> Path:
    """The benchmark's own folder: ``root/folder``, or ``root`` itself when it already is it.

    ``root`` counts as the benchmark folder when its name is ``folder`` or it
    holds one of ``markers`` (the split file, the image folder).

    Raises:
        VispromptError: neither place looks like the benchmark folder.
    """
    candidate = root / folder
    if candidate.is_dir():
        return candidate
    if root.name == folder or any((root / m).exists() for m in markers):
        return root
    raise VispromptError(f"dataset folder {candidate} not found; {layout}")


def read_coop_split(
    split_path: Path, image_dir: Path, layout: str, verify: tuple[str, ...] = SPLITS
) -> tuple[tuple[str, ...], dict[str, tuple[Sample, ...]]]:
    """Read and validate a CoOp split file.

    Args:
        split_path: the ``split_zhou_*.json`` file.
        image_dir: folder the split's relative image paths start from.
        layout: the expected layout, appended to every error.
        verify: the splits whose image files must exist (all by default).

    Returns:
        ``(classnames, {"train": ..., "val": ..., "test": ...})``: class names
        indexed by label, and samples with absolute paths, each split in
        (label, path) order.

    Raises:
        VispromptError: the split file or image folder is missing; the file is
            not a dict with ``train``/``val``/``test`` lists of
            ``[path, label, classname]``; labels are not contiguous 0..K-1 with
            one class name each; listed images do not exist.
    """
    fix_split = (
        f"re-download {split_path.name} from CoOp's DATASETS.md or fix it: a JSON dict with "
        f"train/val/test lists of [path, label, classname] ({layout})"
    )
    if not split_path.is_file():
        raise VispromptError(f"split file {split_path} not found; {layout}")
    if not image_dir.is_dir():
        raise VispromptError(f"image folder {image_dir} not found; {layout}")
    try:
        data = json.loads(split_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VispromptError(
            f"split file {split_path} is malformed (not valid JSON: {exc}); {fix_split}"
        ) from None
    if not isinstance(data, dict):
        raise VispromptError(
            f"split file {split_path} is malformed (a JSON {type(data).__name__}, not a dict); "
            f"{fix_split}"
        )
    splits: dict[str, tuple[Sample, ...]] = {}
    base = str(image_dir)
    for split in SPLITS:
        entries = data.get(split)
        if not isinstance(entries, list):
            problem = "lacks" if split not in data else "has no list under"
            raise VispromptError(
                f"split file {split_path} is malformed (it {problem} the {split!r} key); "
                f"{fix_split}"
            )
        samples = []
        for i, entry in enumerate(entries):
            if not (
                isinstance(entry, list | tuple)
                and len(entry) == 3
                and isinstance(entry[0], str)
                and isinstance(entry[1], int)
                and not isinstance(entry[1], bool)
                and isinstance(entry[2], str)
            ):
                shown = json.dumps(entry)[:80]
                raise VispromptError(
                    f"split file {split_path} is malformed ({split!r} entry {i} is {shown}, "
                    f"not [path, label, classname]); {fix_split}"
                )
            path = os.path.normpath(os.path.join(base, entry[0]))
            samples.append(Sample(path=path, label=entry[1], classname=entry[2]))
        splits[split] = sort_samples(samples)
    everything = [s for split in SPLITS for s in splits[split]]
    classnames = check_contiguous_labels(everything, f"split file {split_path}", fix_split)
    require_files(
        [s for split in verify for s in splits[split]],
        f"split file {split_path}",
        f"check that {image_dir} holds the complete image set ({layout})",
    )
    return classnames, splits


def _reader(bench: CoopBenchmark):
    def read(root: str | Path | None, seed: int = 1) -> DatasetSplits:  # noqa: ARG001 - fixed split
        """Read the benchmark; ``seed`` is unused (CoOp's split is fixed)."""
        path = require_root(root, bench.name, bench.layout)
        dataset_dir = locate_dataset_dir(
            path, bench.folder, (bench.split_file, bench.image_dir), bench.layout
        )
        classnames, splits = read_coop_split(
            dataset_dir / bench.split_file, dataset_dir / bench.image_dir, bench.layout
        )
        return DatasetSplits(name=bench.name, classnames=classnames, **splits)

    read.__name__ = f"read_{bench.name}"
    return read


for _bench in BENCHMARKS:
    register_dataset(
        DatasetSpec(
            name=_bench.name,
            description=_bench.description,
            layout=_bench.layout,
            read=_reader(_bench),
            templates=(_bench.template,),
        )
    )
