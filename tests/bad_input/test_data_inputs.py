"""The bad-input suite, part 2: dataset files a person can get wrong.

Each row is one input: the command line, the fragment the one-line
``error: ...`` must contain, and the settings it runs under (Pillow's pixel
limit, ``$VISPROMPT_MAX_IMAGE_PIXELS``). As in part 1, a refused command exits
with status 2, names the fix after a ';' and leaves the dataset untouched and no
run folder behind.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from vp_testing import make_folder_dataset, run_overrides, tree_snapshot

from visprompt.cli import main
from visprompt.data.images import MAX_PIXELS_ENV


@dataclass
class DataWorld:
    base: Path  # the datasets (snapshotted)
    cache: Path  # the feature cache (complete entries may be written before a refusal)
    csv: Path  # a folder of CSV files over images/a.png ... images/h.png
    big: Path  # a folder dataset whose images are all 64 x 64 = 4096 pixels

    def train_args(self, root: Path, dataset: str = "folder") -> list[str]:
        sets = run_overrides(root, "coop", **{"data.cache_dir": str(self.cache)})
        sets += [f"data.dataset={dataset}", "data.shots=1", "optim.epochs=1"]
        argv = ["train", "--quiet", "--out", str(self.base / "run")]
        for item in sets:
            argv += ["--set", item]
        return argv


#: name -> CSV text; images a..h exist next to the files.
CSV_FILES = {
    # a quote opened at the start of line 3's path, never closed: lines 3-6 become one cell
    "quote_path.csv": 'path,label,split\nimages/a.png,cat,train\n"images/b.png,cat,train\n'
    "images/c.png,dog,train\nimages/d.png,cat,test\nimages/e.png,dog,test\n",
    # opened in line 3's label
    "quote_label.csv": 'path,label,split\nimages/a.png,cat,train\nimages/b.png,"cat,train\n'
    "images/c.png,dog,train\nimages/d.png,cat,test\nimages/e.png,dog,test\n",
    # opened in an ignored column: the rows after it would silently vanish
    "quote_note.csv": "path,label,split,note\nimages/a.png,cat,train,\n"
    'images/b.png,cat,train,"blurry\nimages/c.png,dog,train,\nimages/d.png,cat,test,\n'
    "images/e.png,dog,test,\n",
    # two CSVs concatenated: line 7 repeats line 2
    "repeated.csv": "path,label,split\nimages/a.png,cat,train\nimages/b.png,dog,train\n"
    "images/c.png,cat,test\nimages/d.png,dog,test\nimages/e.png,cat,train\n"
    "images/a.png,cat,train\n",
    "repeated_nosplit.csv": "path,label\nimages/a.png,cat\nimages/b.png,cat\nimages/c.png,cat\n"
    "images/d.png,dog\nimages/e.png,dog\nimages/f.png,dog\n./images/b.png,cat\n",
    # one image, two classes
    "two_labels.csv": "path,label,split\nimages/a.png,cat,train\nimages/b.png,dog,train\n"
    "images/c.png,cat,test\nimages/d.png,dog,test\nimages/a.png,dog,train\n",
    # one image in train and in test: the test score would be inflated
    "leak.csv": "path,label,split\nimages/a.png,cat,train\nimages/b.png,dog,train\n"
    "images/c.png,cat,train\nimages/d.png,dog,test\nimages/c.png,cat,test\n",
}


@pytest.fixture(scope="module")
def data_world(tmp_path_factory) -> DataWorld:
    base = tmp_path_factory.mktemp("bad_data")
    csv = base / "csv"
    rng = np.random.default_rng(0)
    for name in "abcdefgh":
        (csv / "images").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(csv / "images" / f"{name}.png")
    for name, text in CSV_FILES.items():
        (csv / name).write_text(text)
    big = make_folder_dataset(base / "big", n_train=3, n_test=1, size=64)
    return DataWorld(base, tmp_path_factory.mktemp("bad_data_cache"), csv, big)


def _cases() -> list[tuple[str, object, object, dict]]:
    def check(name, dataset="csv"):
        return lambda w: ["datasets", "check", dataset, "--root", str(w.csv / name), "-q"]

    def at(name, text):
        return lambda w: f"CSV file {w.csv / name} {text}"

    def big(w):
        return w.train_args(w.big)

    too_large = "image is 64x64 = 4,096 pixels, over the limit of {:,} pixels"
    return [
        # -- CSV: an unbalanced quote swallows the lines after it
        ("csv-quote-in-path", check("quote_path.csv"),
         lambda w: f'line 3 of {at("quote_path.csv", "")(w)}has an unbalanced quote (") that '
                   f"swallows lines 3 to 6 into one cell; close the quote or remove it", {}),
        ("csv-quote-in-label", check("quote_label.csv"),
         lambda w: f"line 3 of CSV file {w.csv / 'quote_label.csv'} has an unbalanced quote", {}),
        ("csv-quote-in-ignored-column", check("quote_note.csv"),
         lambda w: f"line 3 of CSV file {w.csv / 'quote_note.csv'} has an unbalanced quote", {}),
        # -- CSV: images listed more than once
        ("csv-repeated-row", check("repeated.csv"),
         at("repeated.csv", "lists images more than once: 1 repeated row (line 7 repeats line 2: "
                            "images/a.png)"), {}),
        ("csv-repeated-row-no-split-column", check("repeated_nosplit.csv"),
         "1 repeated row (line 8 repeats line 3: ./images/b.png)", {}),
        ("csv-image-under-two-labels", check("two_labels.csv"),
         "1 image under two or more labels (images/a.png: 'cat' on line 2, 'dog' on line 6)", {}),
        ("csv-image-in-train-and-test", check("leak.csv"),
         "1 image in two splits (images/c.png: train on line 4, test on line 6)", {}),
        ("csv-image-in-train-and-test-train", lambda w: w.train_args(w.csv / "leak.csv", "csv"),
         "1 image in two splits (images/c.png", {}),
        # -- images over the pixel limit (a decompression-bomb guard): size, limit and fix
        ("image-over-limit-pillow-warns", big, too_large.format(2500), {"pil_limit": 2500}),
        ("image-over-limit-pillow-raises", big, too_large.format(2000), {"pil_limit": 2000}),
        ("image-over-limit-names-the-variable", big,
         f"set {MAX_PIXELS_ENV}=4100 (or none) or downscale it", {"pil_limit": 2000}),
        ("image-over-limit-from-the-variable", big, too_large.format(3000), {"env": "3000"}),
        ("max-pixels-variable-malformed-check",
         lambda w: ["datasets", "check", "folder", "--root", str(w.big), "-q"],
         f"{MAX_PIXELS_ENV} is 'lots', not a number of pixels; set it to a whole number",
         {"env": "lots"}),
        ("max-pixels-variable-malformed-train", big, f"{MAX_PIXELS_ENV} is '12k'",
         {"env": "12k"}),
    ]  # fmt: skip


CASES = _cases()


@pytest.mark.parametrize(
    ("argv", "fragment", "setting"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_refused_in_one_line_with_nothing_touched(
    data_world, capsys, monkeypatch, argv, fragment, setting
):
    if "pil_limit" in setting:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", setting["pil_limit"])
    if "env" in setting:
        monkeypatch.setenv(MAX_PIXELS_ENV, setting["env"])
    else:
        monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    fragment = fragment(data_world) if callable(fragment) else fragment
    before = tree_snapshot(data_world.base)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # ours, not Pillow's
        code = main(argv(data_world))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err and err[-1].startswith("error: ") and fragment in err[-1], err
    assert ";" in err[-1], "the message names the fix after a ';'"
    assert tree_snapshot(data_world.base) == before
    assert not (data_world.base / "run").exists()
