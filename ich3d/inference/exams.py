"""Exam-level results: does this exam show a hemorrhage, of which kind, and where (docs/design.md §11).

One row per study of the dataset (per patient and StudyInstanceUID: a study UID two patients share
gives two rows) (``exams.csv`` and ``exams.json``): the series read, the exam's probability of each
label, its flag (the probability at or above the label's threshold: by default the run's operating
threshold, docs/design.md §4; a subtype only on an exam flagged for ``any``), the key slice (highest
``any``), the slice ranges of each label at or above the threshold, and a status:

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

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from ich3d.constants import LABELS
from ich3d.inference.outputs import PROB_COLUMNS

#: Slices of the moving average the exam probability takes its maximum over.
SMOOTHING_SLICES = 3
#: Default probability at which an exam is flagged and a slice counts for a label's slice ranges.
THRESHOLD = 0.5
FLAG_COLUMNS = [f"flag_{name}" for name in LABELS]
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


_EXAM = ["patient_id", "study_uid"]


def _exam_series(series: pd.DataFrame) -> pd.DataFrame:
    """Per exam (patient, study), the series it is read from: the chosen one when predicted, else the first
    predicted."""
    read = series[series["predict"]].sort_values([*_EXAM, "chosen", "series_id"], ascending=[True, True, False, True])
    return read.drop_duplicates(_EXAM).set_index(_EXAM)


def exam_table(predictions: pd.DataFrame, series: pd.DataFrame,
               threshold: float | Sequence[float] = THRESHOLD) -> pd.DataFrame:
    """One row per study (see the module docstring).

    The rows of every read series are sorted and turned into arrays once; each exam is then a slice
    of those arrays (no per-study pandas lookups: 3,400 RSNA test exams take well under a second).

    Args:
        predictions: the per-image rows (:mod:`ich3d.inference.outputs`).
        series: the dataset's series table (roles and choice).
        threshold: per label (or one for all), the probability at which an exam is flagged and a
            slice counts in the label's slice ranges.

    Returns:
        Columns patient_id, study_uid, status, series_uid, series_id (the stack read), series_description, slice_thickness (mm),
        convolution_kernel, role, n_images, n_predicted, p_<label> ×6, flag_<label> ×6 (bool; empty
        without a usable series), key_slice_index, key_sop_uid, key_image_id, key_position_mm,
        slices_<label> ×6 (ranges of slice_index at or above the threshold), reason.
    """
    thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(LABELS),))
    series, predictions = _exam_keys(series), _exam_keys(predictions)
    chosen = _exam_series(series)
    choices = series.groupby(_EXAM)["choice"].agg(lambda values: "; ".join(sorted(set(values))))
    images = predictions.groupby(_EXAM).size()
    read = predictions[predictions["series_id"].isin(chosen["series_id"])].sort_values(["series_id", "slice_index"])
    bounds = _group_bounds(read["series_id"].to_numpy())
    arrays = _ExamArrays.of(read)
    chosen_rows = chosen.to_dict("index")
    studies = images[images.index.get_level_values("study_uid") != ""].index.union(choices.index)
    rows = []
    for exam in studies:
        reason = choices.get(exam, "no image of the study could be placed in a series")
        row = {"patient_id": exam[0] or None, "study_uid": exam[1] or None, "n_images": int(images.get(exam, 0))}
        if exam not in chosen_rows:
            rows.append(row | {"status": "no usable series", "n_predicted": 0, "reason": reason})
            continue
        series_row = chosen_rows[exam]
        start, stop = bounds[series_row["series_id"]]
        rows.append(row | _exam(arrays, slice(start, stop), series_row, thresholds))
    columns = (["patient_id", "study_uid", "status", "series_uid", "series_id", "series_description", "slice_thickness",
                "convolution_kernel", "role", "n_images", "n_predicted", *PROB_COLUMNS, *FLAG_COLUMNS,
                "key_slice_index", "key_sop_uid", "key_image_id", "key_position_mm"]
               + [f"slices_{name}" for name in LABELS] + ["reason"])
    return pd.DataFrame(rows).reindex(columns=columns)


def _exam_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with absent patient IDs and study UIDs as "" (an exam key, never dropped by a groupby)."""
    return frame.assign(**{column: frame[column].fillna("").astype(str) for column in _EXAM})


def _group_bounds(keys: np.ndarray) -> dict[str, tuple[int, int]]:
    """``{key: (start, stop)}`` of the runs of equal values in a sorted array."""
    if len(keys) == 0:
        return {}
    starts = np.r_[0, np.flatnonzero(keys[1:] != keys[:-1]) + 1]
    stops = np.r_[starts[1:], len(keys)]
    return {keys[a]: (int(a), int(b)) for a, b in zip(starts, stops)}


class _ExamArrays(NamedTuple):
    """The per-image columns the exam fields read, as arrays in (series_id, slice_index) order."""

    probs: np.ndarray  # (N, 6) float64
    slice_index: np.ndarray  # (N,) int64
    by_model: np.ndarray  # (N,) bool
    by_context: np.ndarray  # (N,) bool
    sop_uid: np.ndarray
    image_id: np.ndarray
    position: np.ndarray  # (N,) float64, mm

    @classmethod
    def of(cls, rows: pd.DataFrame) -> _ExamArrays:
        predicted_by = rows["predicted_by"].to_numpy()
        return cls(rows[PROB_COLUMNS].to_numpy(np.float64), rows["slice_index"].to_numpy(np.int64),
                   predicted_by == "model", predicted_by == "context", rows["sop_uid"].to_numpy(object),
                   rows["image_id"].to_numpy(object), rows["position"].to_numpy(np.float64))


def exam_flags(exam_probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(6,) bool: the labels an exam is flagged for. ``any`` at or above its threshold is the finding; a
    subtype is flagged at or above its own threshold on a positive exam only, as the DICOM node answers
    (an exam is never flagged for a subdural and not for a hemorrhage).

    Args:
        exam_probs: (6,) exam probabilities in ``LABELS`` order.
        thresholds: (6,) operating thresholds.
    """
    flags = exam_probs >= thresholds
    return flags & np.r_[True, np.repeat(flags[0], len(LABELS) - 1)]


def _exam(arrays: _ExamArrays, rows: slice, chosen: dict, thresholds: np.ndarray) -> dict:
    """The exam fields of one study read from the series ``chosen`` (its series-table row; ``rows``: its
    rows in ``arrays``)."""
    probs, index = arrays.probs[rows], arrays.slice_index[rows]
    key = int(np.argmax(probs[:, 0]))
    partial = chosen["role"] in PARTIAL_ROLES or not arrays.by_model[rows].all()
    reason = [f"read from {chosen['role']} series"] if chosen["role"] in PARTIAL_ROLES else []
    n_context = int(arrays.by_context[rows].sum())
    if n_context:
        reason.append(f"{n_context} unreadable slices predicted from their neighbours")
    exam_probs = smoothed_maximum(probs)
    flags = exam_flags(exam_probs, thresholds)
    exam = dict(zip(PROB_COLUMNS, exam_probs)) | dict(zip(FLAG_COLUMNS, flags.tolist()))
    ranges = {f"slices_{name}": _ranges(index[probs[:, j] >= thresholds[j]])
              for j, name in enumerate(LABELS)}
    header = {name: None if pd.isna(chosen.get(name)) else chosen.get(name)
              for name in ("series_description", "slice_thickness", "convolution_kernel")}
    return exam | ranges | header | {
        "status": "partial" if partial else "ok", "series_uid": chosen["series_uid"],
        "series_id": chosen["series_id"], "role": chosen["role"],
        "n_predicted": len(index), "key_slice_index": int(index[key]),
        "key_sop_uid": arrays.sop_uid[rows][key], "key_image_id": arrays.image_id[rows][key],
        "key_position_mm": float(arrays.position[rows][key]), "reason": "; ".join(reason)}
