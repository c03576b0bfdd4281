"""The CSV reader: path,label[,split] rows, relative paths, automatic splits, bad files."""

from __future__ import annotations

from collections import Counter

import pytest

from visprompt.data import DATASETS
from visprompt.errors import VispromptError

read = DATASETS.get("csv").read


def test_reads_explicit_splits(make_csv, csv_rows_fn):
    rows = (
        csv_rows_fn({"cat": 4, "dog": 4}, "train")
        + csv_rows_fn({"cat": 2, "dog": 1}, "val")
        + csv_rows_fn({"cat": 2}, "TEST")
    )
    path = make_csv(rows)
    splits = read(path)
    assert splits.classnames == ("cat", "dog")
    assert splits.sizes() == {"train": 8, "val": 3, "test": 2}
    assert splits.train[0].path == str(path.parent / "images" / "cat_train_0.png")
    # A folder holding exactly one CSV works the same.
    assert read(path.parent) == splits


def test_header_order_case_and_extra_columns(make_csv, csv_rows_fn):
    rows = [[label, "x", p] for p, label in csv_rows_fn({"b": 3, "a": 3})]
    for i, row in enumerate(rows):
        row[1] = "test" if i % 3 == 0 else "train"
    path = make_csv(rows, header=("Label", "Split", "PATH"))
    splits = read(path)
    assert splits.classnames == ("a", "b")
    assert splits.sizes()["test"] == 2


def test_numeric_class_names_sort_numerically(make_csv, csv_rows_fn):
    path = make_csv(csv_rows_fn({"10": 5, "2": 5, "1": 5}), header=("path", "label"))
    assert read(path).classnames == ("1", "2", "10")


def test_without_split_column_a_seeded_split(make_csv, csv_rows_fn):
    path = make_csv(
        csv_rows_fn({"cat": 10, "dog": 5, "eel": 2, "fox": 1}), header=("path", "label")
    )
    splits = read(path, seed=3)
    count = {s: Counter(x.classname for x in getattr(splits, s)) for s in ("train", "val", "test")}
    # 10 -> 2 test, 2 val; 5 -> 1 test, 1 val; 2 -> 0 test, 1 val; 1 -> train only.
    assert count["test"] == {"cat": 2, "dog": 1}
    assert count["val"] == {"cat": 2, "dog": 1, "eel": 1}
    assert count["train"] == {"cat": 6, "dog": 3, "eel": 1, "fox": 1}
    every = [s.path for s in splits.train + splits.val + splits.test]
    assert len(every) == len(set(every)) == 18
    assert read(path, seed=3) == splits
    assert any(read(path, seed=s).test != splits.test for s in range(4, 9))


def test_split_column_without_val_rows_holds_out_val(make_csv, csv_rows_fn):
    rows = csv_rows_fn({"cat": 5, "dog": 5}, "train") + csv_rows_fn({"cat": 1}, "test")
    splits = read(make_csv(rows))
    assert splits.sizes() == {"train": 8, "val": 2, "test": 1}


def test_empty_csv(make_csv):
    with pytest.raises(VispromptError, match=r"CSV file .*data.csv is empty; expected a CSV"):
        read(make_csv([], header=None))
    with pytest.raises(VispromptError, match=r"is empty \(a header but no rows\)"):
        read(make_csv([]))


def test_missing_columns(make_csv):
    path = make_csv([["images/a.png", "cat"]], header=("file", "class"))
    with pytest.raises(VispromptError) as exc:
        read(path)
    assert "lacks the column(s) path,label in its header (found: file,class)" in str(exc.value)
    assert "expected a CSV file with a header path,label[,split]" in str(exc.value)


def test_unknown_split_value_and_empty_cells(make_csv, csv_rows_fn):
    rows = csv_rows_fn({"cat": 2}, "train") + [["images/x.png", "cat", "holdout"]]
    with pytest.raises(VispromptError, match="line 4 of CSV file .* has split 'holdout'; use"):
        read(make_csv(rows))
    rows = csv_rows_fn({"cat": 2}, "train") + [["images/y.png", "", "test"]]
    with pytest.raises(VispromptError, match="line 4 of CSV file .* has an empty label"):
        read(make_csv(rows))


def test_missing_image_files(make_csv, csv_rows_fn):
    rows = csv_rows_fn({"cat": 3}, "train") + [["missing/gone.png", "cat", "test"]]
    path = make_csv(rows)
    with pytest.raises(VispromptError) as exc:
        read(path)
    assert "1 of 4 images listed in CSV file" in str(exc.value)
    assert f"(first: {path.parent / 'missing' / 'gone.png'})" in str(exc.value)


def test_no_test_rows_and_unknown_test_label(make_csv, csv_rows_fn):
    with pytest.raises(VispromptError, match="has no test rows; mark some rows split=test"):
        read(make_csv(csv_rows_fn({"cat": 3}, "train")))
    rows = csv_rows_fn({"cat": 3}, "train") + csv_rows_fn({"dog": 1}, "test")
    with pytest.raises(VispromptError, match="has test label 'dog', which no train row has"):
        read(make_csv(rows))


def test_root_folder_with_no_or_two_csvs(make_csv, csv_rows_fn, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VispromptError, match="holds no .csv file; pass --root FILE.csv"):
        read(tmp_path / "empty")
    make_csv(csv_rows_fn({"cat": 3}), header=("path", "label"))
    path = make_csv(csv_rows_fn({"cat": 3}), header=("path", "label"), name="other.csv")
    with pytest.raises(VispromptError, match="holds 2 .csv files"):
        read(path.parent)


def _write(path, text: str):
    path.write_text(text)
    return path


def test_a_quoted_note_over_two_lines_is_fine_and_later_lines_keep_their_numbers(
    make_csv, csv_rows_fn
):
    path = make_csv(csv_rows_fn({"cat": 3}, "train") + csv_rows_fn({"cat": 1}, "test"))
    rows = path.read_text().splitlines()
    text = "path,label,split,note\n"
    text += f'{rows[1]},"seen twice,\nonce blurred"\n'
    text += "\n".join(rows[2:]) + "\nimages/cat_x_9.png,,train\n"
    with pytest.raises(VispromptError, match=r"^line 7 of CSV file .* has an empty label"):
        read(_write(path, text))
    _write(path, text.replace("images/cat_x_9.png,,train\n", ""))
    assert read(path).sizes() == {"train": 2, "val": 1, "test": 1}


def test_allow_duplicates_drops_exact_repeats_and_keeps_the_rest_with_a_warning(
    make_csv, csv_rows_fn
):
    from visprompt.data.datasets.csv_dataset import DuplicateImagesWarning

    base = csv_rows_fn({"cat": 3, "dog": 3}, "train") + csv_rows_fn({"cat": 1}, "test")
    rows = base + [base[0], base[1], [base[2][0], "dog", "train"], [base[3][0], "dog", "test"]]
    path = make_csv(rows)
    with pytest.raises(VispromptError) as exc:
        read(path)
    message = str(exc.value)
    assert (
        "2 repeated rows (line 9 repeats line 2: images/cat_train_0.png, line 10 repeats" in message
    )
    assert (
        "1 image under two or more labels (images/cat_train_2.png: 'cat' on line 4, 'dog'"
        in message
    )
    assert (
        "1 image in two splits (images/dog_train_0.png: train on line 5, test on line 12)"
        in message
    )
    assert message.count(";") == 1 and "set data.allow_duplicates=true" in message
    with pytest.warns(DuplicateImagesWarning, match="2 exact repeats dropped"):
        splits = DATASETS.get("csv").read(path, allow_duplicates=True)
    every = splits.train + splits.val + splits.test
    assert len(every) == len(rows) - 2  # the repeats dropped, the rest as listed
    assert sum(s.path.endswith("cat_train_2.png") for s in every) == 2
