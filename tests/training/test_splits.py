"""Folds are grouped by patient, deterministic, and every fold has positives when possible."""

from __future__ import annotations

import pandas as pd
import pytest

from ich3d.errors import ConfigError, InputError
from ich3d.training.splits import load_splits, make_folds, save_splits, split_series


def _series(n_patients: int = 12, per_patient: int = 2) -> pd.DataFrame:
    rows = [{"series_id": f"S{p}_{k}", "patient_id": f"P{p}", "n_labeled": 30, "n_any": 5 if p % 3 == 0 else 0}
            for p in range(n_patients) for k in range(per_patient)]
    return pd.DataFrame(rows)


def test_patients_never_span_folds_and_seed_is_stable(tmp_path) -> None:
    series = _series()
    folds = make_folds(series, 4, seed=3)
    patient_folds = series.assign(fold=series["series_id"].map(folds)).groupby("patient_id")["fold"].nunique()
    assert (patient_folds == 1).all()
    assert folds == make_folds(series, 4, seed=3)
    assert folds != make_folds(series, 4, seed=4)
    positive = series.assign(fold=series["series_id"].map(folds)).query("n_any > 0")["fold"].nunique()
    assert positive == 4
    save_splits(tmp_path / "splits.json", folds, series, 3)
    assert load_splits(tmp_path / "splits.json") == folds


def test_split_series_and_errors() -> None:
    folds = make_folds(_series(), 3, seed=0)
    train, valid = split_series(folds, 1)
    assert set(train).isdisjoint(valid) and len(train) + len(valid) == len(folds)
    with pytest.raises(ConfigError, match="fold 5 does not exist"):
        split_series(folds, 5)
    with pytest.raises(InputError, match="no labeled series"):
        make_folds(_series().assign(n_labeled=0), 3, seed=0)
    with pytest.raises(InputError, match="fewer than folds"):
        make_folds(_series(n_patients=2), 3, seed=0)
