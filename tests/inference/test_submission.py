"""Submissions: written in the sample's order, scored like scikit-learn, bad ones rejected with IDs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss

from ich3d.constants import LABELS
from ich3d.errors import InputError
from ich3d.inference.submission import (
    format_g6,
    read_submission_ids,
    score_submission,
    validate_submission,
    write_submission,
)


def _long(path: Path, images: list[str], values: np.ndarray) -> Path:
    ids = [f"{image}_{label}" for image in images for label in LABELS]
    pd.DataFrame({"ID": ids, "Label": values.ravel()}).to_csv(path, index=False)
    return path


@pytest.fixture()
def truth(tmp_path: Path) -> tuple[Path, list[str], np.ndarray]:
    rng = np.random.default_rng(0)
    images = [f"ID_{i:09x}" for i in range(20)]
    y = (rng.random((20, 6)) < 0.3).astype(float)
    y[:, 0] = y[:, 1:].max(axis=1)
    return _long(tmp_path / "labels.csv", images, y), images, y


def test_write_follows_sample_order(tmp_path: Path) -> None:
    images = ["ID_a", "ID_b", "ID_c"]
    sample = _long(tmp_path / "sample.csv", images, np.full((3, 6), 0.5))
    rows = pd.read_csv(sample).sample(frac=1, random_state=1)
    rows.to_csv(sample, index=False)
    probs = pd.DataFrame(np.arange(18).reshape(3, 6) / 20, index=images[::-1])
    write_submission(tmp_path / "sub.csv", probs, sample)
    written = pd.read_csv(tmp_path / "sub.csv")
    assert written["ID"].tolist() == rows["ID"].tolist()
    image, label = written["ID"].iloc[0].rsplit("_", 1)
    assert written["Label"].iloc[0] == pytest.approx(probs.loc[image].iloc[LABELS.index(label)])
    assert list(read_submission_ids(sample)) == list(pd.unique(rows["ID"].str.rsplit("_", n=1).str[0]))


def test_score_equals_sklearn_weighted_log_loss(tmp_path: Path, truth) -> None:
    labels, images, y = truth
    p = np.random.default_rng(1).uniform(0.01, 0.99, y.shape)
    sub = _long(tmp_path / "sub.csv", images, p)
    result = score_submission(sub, labels)
    weights = np.tile([2, 1, 1, 1, 1, 1], len(images))
    expected = log_loss(y.ravel(), p.ravel(), sample_weight=weights)
    assert result["weighted_log_loss"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda f: f.iloc[6:], "missing IDs: ID_000000000_any"),
        (lambda f: pd.concat([f, f.iloc[:1]]), "duplicate IDs: ID_000000000_any"),
        (lambda f: pd.concat([f, pd.DataFrame({"ID": ["ID_zzz_any"], "Label": [0.5]})]), "unknown IDs"),
        (lambda f: f.assign(Label=f["Label"].where(f.index != 3, np.nan)), "NaN or outside [0, 1]: ID_000000000_intraventricular"),
        (lambda f: f.assign(Label=f["Label"].where(f.index != 4, 1.5)), "outside [0, 1]: ID_000000000_subarachnoid"),
    ],
)
def test_bad_submissions_are_rejected_with_ids(tmp_path: Path, truth, mutate, fragment: str) -> None:
    labels, images, y = truth
    good = pd.read_csv(_long(tmp_path / "sub.csv", images, np.full(y.shape, 0.5)))
    mutate(good).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError) as info:
        score_submission(tmp_path / "bad.csv", labels)
    assert fragment in str(info.value)


def test_wrong_columns_and_ids(tmp_path: Path, truth) -> None:
    labels, _, _ = truth
    (tmp_path / "cols.csv").write_text("Image,Prob\nID_a_any,0.5\n")
    with pytest.raises(InputError, match="expected the header ID,Label"):
        score_submission(tmp_path / "cols.csv", labels)
    (tmp_path / "ids.csv").write_text("ID,Label\nID_a_bleed,0.5\n")
    with pytest.raises(InputError, match="unknown label names.*bleed"):
        score_submission(tmp_path / "ids.csv", labels)


def test_validate_lists_each_problem_once_duplicates_in_order_others_sorted() -> None:
    truth = pd.DataFrame({"ID": ["ID_b_any", "ID_a_any", "ID_c_any", "ID_d_any"]})
    sub = pd.DataFrame({"ID": ["ID_c_any", "ID_z_any", "ID_c_any", "ID_y_any", "ID_z_any", "ID_a_any", "ID_y_any"],
                        "Label": [0.5, 0.5, 0.5, 2.0, 0.5, np.nan, 0.5]})
    with pytest.raises(InputError) as info:
        validate_submission(sub, truth)
    assert str(info.value) == ("submission rejected: duplicate IDs: ID_c_any, ID_z_any, ID_y_any; "
                               "missing IDs: ID_b_any, ID_d_any; unknown IDs (not in the labels): ID_y_any, ID_z_any; "
                               "Label NaN or outside [0, 1]: ID_y_any, ID_a_any")
    validate_submission(truth.assign(Label=0.5).iloc[::-1], truth)


def test_format_g6_equals_python_percent_format() -> None:
    rng = np.random.default_rng(0)
    edges = [0.0, -0.0, 1.0, 0.5, 1e-4, 1e-5, 9.999995e-5, 999999.5, 999999.4, 99999.95, 123456.5, 1e6, 1e5,
             0.1234565, 0.1234575, np.inf, -np.inf, 1e-300, 5e-324, 1e300, 0.1, 1 - 1e-7, 1e-7, 0.125, 0.9999995]
    values = np.concatenate([rng.random(20_000), 10 ** rng.uniform(-20, 9, 20_000) * rng.choice([-1, 1], 20_000),
                             np.round(rng.random(20_000), 7), np.round(rng.random(20_000), 6) + 5e-7, edges, [np.nan]])
    expected = ["%.6g" % v for v in values[:-1].tolist()] + [""]
    assert format_g6(values).astype(str).tolist() == expected


@pytest.mark.parametrize("images", [["ID_a", "ID_b", "ID_c"], ["ID_a,1", 'ID_"b"', "ID_c"]])
def test_write_is_byte_identical_to_pandas_float_format(tmp_path: Path, images: list[str]) -> None:
    values = np.array([[0.5, 1e-6, 0.0, 1.0, 0.123456789, np.nan], [1e-5, 2.5e-4, 0.9999995, 0.1, 0.2, 0.3],
                       [0.75, 0.25, 0.125, 0.0625, 1e-300, 0.33333333]])
    probs = pd.DataFrame(values, index=pd.Index(images, name="image_id"), columns=list(LABELS))
    write_submission(tmp_path / "sub.csv", probs)
    ids = [f"{image}_{label}" for image in images for label in LABELS]
    pd.DataFrame({"ID": ids, "Label": values.ravel()}).to_csv(tmp_path / "pandas.csv", index=False, float_format="%.6g")
    assert (tmp_path / "sub.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()


def test_write_refuses_a_sample_image_without_prediction(tmp_path: Path) -> None:
    sample = _long(tmp_path / "sample.csv", ["ID_a", "ID_b"], np.full((2, 6), 0.5))
    probs = pd.DataFrame(np.full((1, 6), 0.1), index=["ID_a"])
    with pytest.raises(InputError, match="1 image.*no prediction: ID_b"):
        write_submission(tmp_path / "sub.csv", probs, sample)


def test_an_id_holding_a_line_break_keeps_its_six_rows_and_is_scored(tmp_path: Path) -> None:
    images = ["ID_plain", "ID_cr\rx", "ID_lf\nx", "ID_crlf\r\nx", 'ID_comma,"quote"']
    y = np.zeros((len(images), 6))
    y[1:3] = 1
    probs = pd.DataFrame(np.full((len(images), 6), 0.25), index=images)
    write_submission(tmp_path / "submission.csv", probs)
    write_submission(tmp_path / "labels.csv", pd.DataFrame(y, index=images))
    rows = pd.read_csv(tmp_path / "submission.csv", dtype=str)
    assert len(rows) == 6 * len(images)  # 30 rows: a CR or LF never starts a row
    assert list(pd.unique(rows["ID"].str.rsplit("_", n=1).str[0])) == images
    result = score_submission(tmp_path / "submission.csv", tmp_path / "labels.csv")  # ich3d accepts its own file
    assert result["weighted_log_loss"] > 0
    text = (tmp_path / "submission.csv").read_bytes()
    assert text.startswith(b"ID,Label\nID_plain_any,0.25\n")  # the other rows stay in the Kaggle format
    assert b'"ID_cr\rx_any",0.25\n' in text and b'"ID_comma,""quote""_any",0.25\n' in text


def test_a_sample_submission_listing_an_id_twice_is_refused(tmp_path: Path) -> None:
    sample = _long(tmp_path / "sample.csv", ["ID_a", "ID_b"], np.full((2, 6), 0.5))
    text = sample.read_text()
    sample.write_text(text + text.splitlines()[1] + "\n")  # ID_a_any again
    with pytest.raises(InputError, match=r"1 ID\(s\) are listed more than once \(ID_a_any\)"):
        read_submission_ids(sample)
    probs = pd.DataFrame(np.full((2, 6), 0.1), index=["ID_a", "ID_b"])
    with pytest.raises(InputError, match="listed more than once"):
        write_submission(tmp_path / "submission.csv", probs, sample)
    assert not (tmp_path / "submission.csv").exists()


@pytest.mark.parametrize("values", [[0.0, 1.0, 1.0], [0.5, 2.5e-5], [0.001], []])
def test_format_g6_of_values_without_one_of_its_forms(values: list[float]) -> None:
    """A submission of only 0/1 (or with no 0.000ddd value) used to fail on an empty selection."""
    assert format_g6(np.array(values)).tolist() == [(b"%.6g" % v) for v in values]
