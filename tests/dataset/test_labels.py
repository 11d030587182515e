"""RSNA long-format label CSVs: validation, duplicates, conflicts, wide table and join."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ich3d.constants import LABEL_COLUMNS, LABELS
from ich3d.dataset.labels import join_labels, read_labels
from ich3d.errors import InputError


def write_csv(path: Path, rows: list[tuple[str, object]], header: str = "ID,Label") -> Path:
    path.write_text(header + "\n" + "".join(f"{i},{v}\n" for i, v in rows))
    return path


def long_rows(image: str, values: tuple[int, ...]) -> list[tuple[str, int]]:
    return [(f"{image}_{name}", value) for name, value in zip(LABELS, values)]


def test_pivot_to_wide_like_the_seed_notebook(tmp_path: Path) -> None:
    rows = long_rows("ID_000039fa0", (1, 0, 0, 1, 0, 0)) + long_rows("ID_00005679d", (0,) * 6)
    table = read_labels(write_csv(tmp_path / "train.csv", rows[::-1]))
    assert table.labels.index.tolist() == ["ID_000039fa0", "ID_00005679d"]
    assert list(table.labels.columns) == list(LABEL_COLUMNS) and (table.labels.dtypes == np.float32).all()
    np.testing.assert_array_equal(table.labels.to_numpy(), [[1, 0, 0, 1, 0, 0], [0] * 6])
    seed = pd.DataFrame(rows, columns=["ID", "Label"])
    seed["sub_type"] = seed["ID"].str.split("_").str[-1]
    seed["image"] = seed["ID"].str.rsplit("_", n=1).str[0]
    pivot = pd.pivot_table(seed, index="image", columns="sub_type", values="Label")[list(LABELS)]
    np.testing.assert_array_equal(table.labels.to_numpy(), pivot.to_numpy())


def test_exact_duplicates_are_counted_and_dropped(tmp_path: Path) -> None:
    rows = long_rows("ID_a", (0, 0, 0, 0, 0, 0))
    table = read_labels(write_csv(tmp_path / "dup.csv", rows + rows[:2] + rows[:1]))
    assert table.n_rows == 9 and table.n_exact_duplicates == 3 and table.conflicts == []
    assert len(table.labels) == 1


def test_conflicting_duplicates_are_reported_and_resolved_by_max(tmp_path: Path) -> None:
    rows = long_rows("ID_a", (0, 0, 0, 0, 1, 0)) + [("ID_a_any", 1), ("ID_a_subarachnoid", 0)]
    table = read_labels(write_csv(tmp_path / "conflict.csv", rows))
    assert table.conflicts == ["ID_a_any", "ID_a_subarachnoid"]
    np.testing.assert_array_equal(table.labels.loc["ID_a"].to_numpy(), [1, 0, 0, 0, 1, 0])
    report = table.report()
    assert report["n_conflicts"] == 2 and report["conflict_resolution"].startswith("max")


def test_incomplete_images_keep_nan(tmp_path: Path) -> None:
    table = read_labels(write_csv(tmp_path / "partial.csv", [("ID_a_any", 1), ("ID_a_subdural", 1)]))
    row = table.labels.loc["ID_a"]
    assert row["label_any"] == 1 and row["label_subdural"] == 1 and row.isna().sum() == 4
    assert table.n_incomplete == 1


def test_image_ids_with_underscores_split_on_the_last_one(tmp_path: Path) -> None:
    table = read_labels(write_csv(tmp_path / "ids.csv", long_rows("ID_weird_name", (0,) * 6)))
    assert table.labels.index.tolist() == ["ID_weird_name"]


@pytest.mark.parametrize(("content", "message"), [
    ("Image,Label\nID_a_any,1\n", "expected the header ID,Label"),
    ("ID,Label,Extra\nID_a_any,1,2\n", "expected the header ID,Label"),
    ("ID,Label\nID_a_bleed,1\n", "unknown label names \\['bleed'\\]"),
    ("ID,Label\nnounderscore,1\n", "ID_<hex>_<label>"),
    ("ID,Label\nID_a_any,0.5\n", "submission file"),
    ("ID,Label\nID_a_any,yes\n", "Label must be 0 or 1"),
    ("ID,Label\nID_a_any,\n", "Label must be 0 or 1"),
])
def test_bad_csvs_raise_input_errors_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as error:
        read_labels(path)
    assert str(path) in str(error.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_labels(tmp_path / "nope.csv")


def test_join_by_image_id_and_report_labels_without_image(tmp_path: Path) -> None:
    rows = long_rows("ID_a", (1, 1, 0, 0, 0, 0)) + long_rows("ID_b", (0,) * 6) + long_rows("ID_gone", (0,) * 6)
    table = read_labels(write_csv(tmp_path / "train.csv", rows))
    slices = pd.DataFrame({"image_id": pd.Series(["ID_b", "ID_new", "ID_a"], dtype="str"), "x": [1, 2, 3]})
    joined, report = join_labels(slices, table)
    assert joined["x"].tolist() == [1, 2, 3]
    np.testing.assert_array_equal(joined.loc[2, list(LABEL_COLUMNS)].to_numpy(np.float32), [1, 1, 0, 0, 0, 0])
    assert joined.loc[1, list(LABEL_COLUMNS)].isna().all() and joined["label_any"].dtype == np.float32
    assert report["n_labeled_images"] == 2
    assert report["n_labels_without_image"] == 1 and report["labels_without_image_examples"] == ["ID_gone"]


def test_join_without_labels_leaves_every_slice_unlabeled() -> None:
    joined, report = join_labels(pd.DataFrame({"image_id": ["ID_a"]}), None)
    assert joined[list(LABEL_COLUMNS)].isna().all(axis=None) and report == {"labels_csv": None}
