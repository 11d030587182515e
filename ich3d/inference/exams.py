"""Exam-level results: does this exam show a hemorrhage, of which kind, and where (docs/design.md §11).

One row per study of the dataset (``exams.csv`` and ``exams.json``): the series read, the exam's
probability of each label, the key slice (highest ``any``), the slice ranges of each label above the
threshold, and a status:

* ``ok``                — the study's soft-kernel, non-contrast axial series was read, every slice by
  the model;
* ``partial``           — read from a fallback (a contrast or a short series), or some slices could
  not be read and were predicted from their neighbours;
* ``no usable series``  — nothing in the study could be read for hemorrhage (only a topogram, a dose
  report, bone-kernel or reformatted series...).

The exam probability of a label is the maximum, over the series' slices, of the probability
averaged over three neighbouring slices (:data:`SMOOTHING_SLICES`): a finding must hold over
neighbouring slices to count fully, so a single spurious slice weighs a third, while a bleed
visible on two or three 5 mm slices keeps most of its probability. The maximum of the raw slice
probabilities would turn every spike into an exam-level call; their mean would dilute a small
bleed over the whole head.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ich3d.constants import LABELS
from ich3d.inference.outputs import PROB_COLUMNS

#: Slices of the moving average the exam probability takes its maximum over.
SMOOTHING_SLICES = 3
#: Default probability above which a slice counts for a label's slice ranges.
THRESHOLD = 0.5
STATUSES = ("ok", "partial", "no usable series")
PARTIAL_ROLES = ("contrast", "too_short")


def _ranges(indices: np.ndarray) -> str:
    """``[3, 4, 5, 9]`` → ``"3-5, 9"``."""
    if len(indices) == 0:
        return ""
    breaks = np.flatnonzero(np.diff(indices) != 1)
    starts, ends = np.r_[indices[0], indices[breaks + 1]], np.r_[indices[breaks], indices[-1]]
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in zip(starts, ends))


def smoothed_maximum(probs: np.ndarray, width: int = SMOOTHING_SLICES) -> np.ndarray:
    """(6,) the maximum over slices of the centred moving average of ``probs`` (N, 6) along the series
    (windows shortened at the ends)."""
    kernel = np.ones(width)
    summed = np.stack([np.convolve(probs[:, j], kernel, mode="same") for j in range(probs.shape[1])], axis=1)
    counts = np.convolve(np.ones(len(probs)), kernel, mode="same")[:, None]
    return (summed / counts).max(axis=0)


def _exam_series(predictions: pd.DataFrame, series: pd.DataFrame) -> pd.DataFrame:
    """Per study, the series its exam is read from: the chosen one when predicted, else the first predicted."""
    read = series[series["predict"]].sort_values(["study_uid", "chosen", "series_uid"], ascending=[True, False, True])
    return read.drop_duplicates("study_uid").set_index("study_uid")


def exam_table(predictions: pd.DataFrame, series: pd.DataFrame, threshold: float = THRESHOLD) -> pd.DataFrame:
    """One row per study (see the module docstring).

    Args:
        predictions: the per-image rows (:mod:`ich3d.inference.outputs`).
        series: the dataset's series table (roles and choice).
        threshold: probability above which a slice counts in a label's slice ranges.

    Returns:
        Columns patient_id, study_uid, status, series_uid, series_description, role, n_images,
        n_predicted, p_<label> ×6, key_slice_index, key_sop_uid, key_image_id, key_position_mm,
        slices_<label> ×6 (ranges of slice_index above ``threshold``), reason.
    """
    chosen = _exam_series(predictions, series)
    per_study = series.groupby("study_uid").agg(patient_id=("patient_id", "first"))
    images = predictions.groupby("study_uid").size()
    by_series = predictions.groupby("series_uid", sort=False)
    rows = []
    for study, patient in per_study["patient_id"].items():
        row = {"patient_id": patient, "study_uid": study, "n_images": int(images.get(study, 0))}
        if study not in chosen.index:
            rows.append(row | {"status": "no usable series", "n_predicted": 0,
                               "reason": "; ".join(sorted(set(series.loc[series["study_uid"] == study, "choice"])))})
            continue
        rows.append(row | _exam(by_series.get_group(chosen.at[study, "series_uid"]), chosen.loc[study], threshold))
    columns = (["patient_id", "study_uid", "status", "series_uid", "series_description", "role", "n_images",
                "n_predicted", *PROB_COLUMNS, "key_slice_index", "key_sop_uid", "key_image_id", "key_position_mm"]
               + [f"slices_{name}" for name in LABELS] + ["reason"])
    return pd.DataFrame(rows).reindex(columns=columns)


def _exam(rows: pd.DataFrame, chosen: pd.Series, threshold: float) -> dict:
    """The exam fields of one study read from the series ``chosen`` (``rows``: its per-image rows)."""
    rows = rows.sort_values("slice_index")
    probs = rows[PROB_COLUMNS].to_numpy(np.float64)
    key = int(np.argmax(probs[:, 0]))
    partial = chosen["role"] in PARTIAL_ROLES or (rows["predicted_by"] != "model").any()
    reason = [f"read from {chosen['role']} series"] if chosen["role"] in PARTIAL_ROLES else []
    n_context = int((rows["predicted_by"] == "context").sum())
    if n_context:
        reason.append(f"{n_context} unreadable slices predicted from their neighbours")
    exam = dict(zip(PROB_COLUMNS, smoothed_maximum(probs)))
    index = rows["slice_index"].to_numpy(np.int64)
    ranges = {f"slices_{name}": _ranges(index[probs[:, j] > threshold])
              for j, name in enumerate(LABELS)}
    description = chosen.get("series_description")
    return exam | ranges | {
        "status": "partial" if partial else "ok", "series_uid": chosen["series_uid"],
        "series_description": None if pd.isna(description) else description, "role": chosen["role"],
        "n_predicted": len(rows), "key_slice_index": int(index[key]),
        "key_sop_uid": rows["sop_uid"].iloc[key], "key_image_id": rows["image_id"].iloc[key],
        "key_position_mm": float(rows["position"].iloc[key]), "reason": "; ".join(reason)}
