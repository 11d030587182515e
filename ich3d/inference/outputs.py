"""Per-image outputs: one row per file of the index, every file exactly once, built by position.

``predictions.parquet`` holds a row for every row of the dataset's index: the image's identifiers
(patient, study, series, SOPInstanceUID, frame, relative path, slice index, InstanceNumber,
position), its status, how it was predicted (``predicted_by``) and why (``reason``), and six
probabilities:

* ``model``   — a readable slice of a predicted series;
* ``context`` — an unreadable slice of a predicted series, predicted from its neighbours;
* ``prior``   — a file that could not be placed in a series (unreadable header, no geometry): the
  training prevalence;
* ``skipped`` — a slice of a series that is not predicted (its series' choice says why), a
  duplicate of another file, or a non-CT object: no probabilities.

Rows are taken from the index by position (:attr:`ich3d.data.tables.SeriesTable.index_rows`), never
joined on a key, and the row count is asserted wherever tables meet (docs/design.md §11).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ich3d.constants import LABELS, Status
from ich3d.data.tables import SeriesTable
from ich3d.dataset.roles import CT_SOP_CLASSES
from ich3d.metrics import prior_predictions

PROB_COLUMNS = [f"p_{name}" for name in LABELS]
#: Identifier columns of a per-image row, as the index has them.
IDENTITY_COLUMNS = ["image_id", "patient_id", "study_uid", "series_uid", "series_id", "sop_uid", "frame", "relative_path",
                    "slice_index", "instance_number", "position", "status", "error"]
PREDICTED_BY = ("model", "context", "prior", "skipped")


def _identity(slices: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    columns = [c for c in IDENTITY_COLUMNS if c in slices]
    return slices[columns].iloc[rows].reset_index(drop=True)


def predicted_rows(table: SeriesTable, probs: np.ndarray, slices: pd.DataFrame, reasons: np.ndarray) -> pd.DataFrame:
    """The rows of the slices of a predicted table.

    Args:
        table: the predicted series (rows point into ``slices``).
        probs: (table.n_slices, 6) probabilities.
        slices: the index.
        reasons: (table.n_slices,) str, e.g. how a thin series was resampled ("" when nothing to say).
    """
    frame = _identity(slices, table.index_rows)
    frame["predicted_by"] = np.where(table.readable, "model", "context")
    frame["reason"] = reasons
    frame[PROB_COLUMNS] = probs
    return frame


def other_rows(slices: pd.DataFrame, series: pd.DataFrame, prior: np.ndarray) -> pd.DataFrame:
    """The rows of every file outside the predicted series: ``prior`` or ``skipped``, with the reason."""
    predicted = set(series.loc[series["predict"], "series_id"])
    outside = ~slices["series_id"].isin(predicted).to_numpy()
    rows = np.flatnonzero(outside)
    frame = _identity(slices, rows)
    choice = series.set_index("series_id")["choice"]
    in_series = frame["series_id"].notna().to_numpy()
    duplicate = (frame["status"] == str(Status.DUPLICATE)).to_numpy()
    non_ct = _non_ct_objects(slices.iloc[rows]) & ~in_series
    skipped = in_series | duplicate | non_ct
    reason = np.where(in_series, frame["series_id"].map(choice).to_numpy(object),
                      np.where(duplicate, frame["error"].to_numpy(object),
                               np.where(non_ct, "not a CT image", "no series: " + frame["error"].astype(str))))
    frame["predicted_by"] = np.where(skipped, "skipped", "prior")
    frame["reason"] = reason
    frame[PROB_COLUMNS] = np.where(skipped[:, None], np.nan, prior_predictions(prior, len(frame)))
    return frame


def _non_ct_objects(rows: pd.DataFrame) -> np.ndarray:
    """(n,) bool: files whose header says they are not a CT image (dose reports, SR, other modalities)."""
    empty = pd.Series("", index=rows.index)
    modality = rows["modality"].fillna("").astype(str).str.upper() if "modality" in rows else empty
    sop_class = rows["sop_class_uid"].fillna("").astype(str) if "sop_class_uid" in rows else empty
    other_class = (sop_class != "") & ~sop_class.isin(list(CT_SOP_CLASSES))
    other_modality = (modality != "") & (modality != "CT")
    return (other_class | other_modality).to_numpy(bool)


def check_rows(predictions: pd.DataFrame, n_index_rows: int) -> None:
    """Every index row exactly once: the per-image output neither multiplies nor drops a file.

    Raises:
        AssertionError: another count, or a repeated key (a programming error, never a user's).
    """
    if len(predictions) != n_index_rows or not predictions["image_id"].is_unique:
        raise AssertionError(f"per-image rows: {len(predictions)} rows ({predictions['image_id'].nunique()} keys) "
                             f"for {n_index_rows} files")
