"""The exam-first sections of ``ich3d report``: the exam table (one row per study, flagged studies first,
with the key image and its heat map) and the series choice (study, series, role, read, why).

The HTML builders (:func:`exam_table`, :func:`choice_table`) are pure functions of tables and PNG bytes;
the section functions gather their inputs from the infer folder and dataset. Long UIDs are shortened to
their end (where UIDs differ), with the full value on hover and in a ``<details>`` element, so the table
fits a 1,400 px screen without horizontal scrolling.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from ich3d.app import report_figures as figures
from ich3d.app import report_html as markup
from ich3d.app.console import findings, flagged, label_thresholds, series_read
from ich3d.constants import WINDOWS
from ich3d.data.windowing import scaled_window
from ich3d.dataset.opened import Dataset
from ich3d.inference.exams import THRESHOLD
from ich3d.layout import InferFolder

if TYPE_CHECKING:
    from ich3d.app.report import ReportOptions

Section = tuple[str, str, str]


class ReportInputs(Protocol):
    """What the sections read (:class:`ich3d.app.report` loads it): the infer folder, one row per image,
    the labels aligned with it, the dataset and runs, and Grad-CAM on demand."""

    folder: InferFolder
    predictions: pd.DataFrame  # one row per image: image_id, study/series UIDs, slice_index, p_<label>...
    truth: np.ndarray | None  # (n_images, 6), NaN = unlabelled
    dataset: Dataset | None
    runs: list[Path]

    def explain(self, image_ids: list[str], options: ReportOptions) -> list[Any] | None: ...


#: Characters of a UID kept in tables (its end).
UID_CHARS = 14


@dataclass(frozen=True)
class ExamImages:
    """The pictures of one exam row: the key slice in the brain window and its Grad-CAM overlay (PNG bytes)."""

    key: bytes | None = None
    heat: bytes | None = None


def short_uid(uid: Any) -> str:
    """HTML of a UID cut to its last :data:`UID_CHARS` characters, the full value on hover."""
    if uid is None or (isinstance(uid, float) and math.isnan(uid)):
        return "-"
    text = str(uid)
    shown = text if len(text) <= UID_CHARS else "…" + text[-UID_CHARS:]
    return f"<span class='uid' title='{html.escape(text)}'>{html.escape(shown)}</span>"


def order_exams(exams: pd.DataFrame, thresholds: Sequence[float]) -> pd.DataFrame:
    """Exams flagged for ``any`` (see :func:`ich3d.app.console.flagged`) first, each group by p(any) from the
    highest; exams without a probability (no usable series) last."""
    p = pd.to_numeric(exams["p_any"], errors="coerce") if "p_any" in exams else pd.Series(float("nan"), exams.index)
    flags = [flagged(exam, 0, thresholds) for exam in _records(exams)]
    keys = pd.DataFrame({"unflagged": np.logical_not(flags), "missing": p.isna(), "p": -p.fillna(0.0)},
                        index=exams.index)
    return exams.loc[keys.sort_values(["missing", "unflagged", "p"], kind="stable").index]


def exam_table(exams: pd.DataFrame, images: Mapping[str, ExamImages], truth: Mapping[str, float] | None,
               thresholds: Sequence[float]) -> str:
    """The exam table: one row per study of ``exams`` (rows of ``exams.csv``, in the order given).

    Args:
        exams: rows of ``exams.csv`` (study_uid, patient_id, status, series read, p_<label>, flag_<label>,
            slice ranges...).
        images: study_uid → its key image and heat map (missing studies get none).
        truth: study_uid → the study's labelled ``any`` (1, 0; absent = unlabelled), or None without labels.
        thresholds: (6,) the probability at which an exam is flagged for each label (where the rows
            have no ``flag_<label>``).
    """
    header = ["key slice · heat map", "study", "patient", "series read", "status", "p(any)", "flagged labels"]
    header += ["label"] if truth is not None else []
    rows = []
    for exam in _records(exams):
        p_any, flag = exam.get("p_any"), flagged(exam, 0, thresholds)
        cells = [_pictures(images.get(exam["study_uid"])), _study_cell(exam),
                 html.escape(str(exam.get("patient_id") or "-")), html.escape(series_read(exam)),
                 html.escape(_status(exam)),
                 f"<b>{p_any:.3f}</b>" if flag else ("-" if p_any is None else f"{p_any:.3f}"),
                 html.escape(findings(exam, thresholds) or "-")]
        if truth is not None:
            cells.append(_truth(truth.get(exam["study_uid"])))
        rows.append((cells, flag))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(f"<tr class='{'flagged' if flag else ''}'>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
                   for cells, flag in rows)
    return f"<table class='exams'><tr>{head}</tr>{body}</table>"


def choice_table(series: pd.DataFrame, studies: list[str]) -> str:
    """The series choice of each study (in the order of ``studies``, then the others): every series with its
    description, thickness and kernel, role, whether it was read, and why.

    Args:
        series: the dataset's ``index/series.parquet`` (study_uid, series_uid, series_description,
            slice_thickness, convolution_kernel, role, predict, choice).
        studies: study UIDs in the order to show them (the exam table's).
    """
    rank = {uid: k for k, uid in enumerate(studies)}
    frame = series.assign(_rank=series["study_uid"].map(rank).fillna(len(rank)), _read=~series["predict"].astype(bool))
    frame = frame.sort_values(["_rank", "study_uid", "_read", "series_description"], kind="stable")
    rows = []
    for record in _records(frame):
        read = bool(record.get("predict"))
        rows.append([short_uid(record["study_uid"]), html.escape(series_read(record)),
                     html.escape(str(record.get("role") or "-")), "<b>yes</b>" if read else "no",
                     html.escape(str(record.get("choice") or record.get("role_reason") or ""))])
    return markup.table(["study", "series (description · thickness · kernel)", "role", "read", "why"], rows,
                        escape=False)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts with None for missing values."""
    return [{k: (None if _missing(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _pictures(images: ExamImages | None) -> str:
    if images is None:
        return ""
    return "".join(markup.img(png, alt) for png, alt in ((images.key, "key slice, brain window"),
                                                              (images.heat, "Grad-CAM of p(any)")) if png)


def _study_cell(exam: dict[str, Any]) -> str:
    """The short study UID; the full study, series and key image UIDs in a details element."""
    full = [("study", exam.get("study_uid")), ("series", exam.get("series_uid")),
            ("key image", exam.get("key_image_id"))]
    lines = "".join(f"<div>{name}: <code>{html.escape(str(value))}</code></div>" for name, value in full if value)
    return f"<details><summary>{short_uid(exam['study_uid'])}</summary>{lines}</details>"


def _status(exam: dict[str, Any]) -> str:
    key = exam.get("key_slice_index")
    text = str(exam.get("status") or "-") + (f", key slice {int(key)}" if key is not None else "")
    return text + (f": {exam['reason']}" if exam.get("reason") else "")


def _truth(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "<span class='note'>unlabelled</span>"
    return "<b>bleed</b>" if value == 1 else "no bleed"


# --- the sections: each returns (id, title, html) or None when its inputs are missing ---

def exams_section(inputs: ReportInputs, options: ReportOptions) -> Section | None:
    """The exam table: flagged studies first, by p(any); each row with its key slice and Grad-CAM heat map."""
    if not inputs.folder.exams_csv.is_file() or options.max_exams == 0:
        return None
    thresholds = exam_thresholds(inputs.folder)
    exams = order_exams(pd.read_csv(inputs.folder.exams_csv), thresholds)
    shown = exams.head(options.max_exams)
    keys = dict(zip(shown["study_uid"], _key_images(shown, inputs.predictions)))
    images = _exam_images(inputs, keys, options)
    n_flagged = sum(flagged(exam, 0, thresholds) for exam in _records(exams))
    note = (f"{n_flagged} of {len(exams)} exams flagged (p(any) at or above {thresholds[0]:g}), listed first, then by "
            f"p(any). Per exam: the key slice (highest p(any)) in the brain window"
            + (" and the Grad-CAM of p(any) over it (red = strongest evidence)" if inputs.runs else "")
            + f". Click a study for its full UIDs; every column is in {inputs.folder.exams_csv}."
            + (f" The first {len(shown)} exams are shown." if len(shown) < len(exams) else ""))
    table = exam_table(shown, images, _exam_truth(inputs), thresholds)
    return "exams", "Exams", f"<p class='note'>{html.escape(note)}</p>{table}"


def exam_thresholds(folder: InferFolder) -> list[float]:
    """(6,) the thresholds the exams were flagged with (``infer``'s operating points or ``--threshold``);
    0.5 for outputs that did not record them."""
    meta = json.loads(folder.parts_meta.read_text()) if folder.parts_meta.is_file() else {}
    return label_thresholds(meta.get("exam_threshold", THRESHOLD))


def _exam_images(inputs: ReportInputs, keys: dict[str, str | None],
                 options: ReportOptions) -> dict[str, ExamImages]:
    """study_uid → its key slice (brain window, cut to the head) and, for the first ``options.heat_maps``
    studies, its Grad-CAM overlay (both need the dataset; the overlay a run)."""
    if inputs.dataset is None:
        return {}
    by_id = inputs.predictions.drop_duplicates("image_id").set_index("image_id")
    read = {study: key for study, key in keys.items()
            if key in by_id.index and by_id.loc[key, "predicted_by"] == "model"}
    explain = list(read.values())[:options.heat_maps]
    explained = dict(zip(explain, inputs.explain(explain, options) or []))
    images = {}
    for study, key in read.items():
        row = by_id.loc[key]
        thumb = cache_thumbnail(inputs.dataset, row["series_uid"], int(row["slice_index"]))
        heat = explained[key].overlay("any")[figures.head_box(explained[key].hu)] if key in explained else None
        images[study] = ExamImages(*(None if image is None else figures.image_png(figures.shrink(image, 128))
                                     for image in (thumb, heat)))
    return images


def _exam_truth(inputs: ReportInputs) -> dict[str, float] | None:
    """study_uid → 1 when a labelled image of the study is positive for ``any``, 0 when its labelled images
    are all negative (studies without a labelled image are absent); None without labels."""
    if inputs.truth is None or "study_uid" not in inputs.predictions:
        return None
    frame = pd.DataFrame({"study_uid": inputs.predictions["study_uid"].to_numpy(), "any": inputs.truth[:, 0]})
    return frame.dropna().groupby("study_uid")["any"].max().to_dict()


def choice_section(inputs: ReportInputs, options: ReportOptions) -> Section | None:
    """Which series of each study was read and why (the dataset's series table)."""
    if inputs.dataset is None:
        return None
    series = inputs.dataset.series
    if series["study_uid"].nunique() == len(series):  # one series per study (the RSNA layout): no choice made
        return None
    order = []
    if inputs.folder.exams_csv.is_file():
        exams = pd.read_csv(inputs.folder.exams_csv, usecols=lambda c: c in ("study_uid", "p_any", "flag_any"))
        order = list(order_exams(exams, exam_thresholds(inputs.folder))["study_uid"])
    note = (f"{len(series)} series in {series['study_uid'].nunique()} studies; per study the series read first. "
            "The rules are in docs/design.md §11; override them with --series, --series-uid or --series-rules.")
    return "choice", "Series choice", (f"<p class='note'>{html.escape(note)}</p>"
                                       + choice_table(series, order))


def _key_images(exams: pd.DataFrame, predictions: pd.DataFrame) -> list[str | None]:
    """The key image ID of each exam: from the first ``key*`` column whose values are image IDs or
    SOP UIDs of the predictions (None where there is none)."""
    known = {name: dict(zip(predictions[name].astype(str), predictions["image_id"]))
             for name in ("image_id", "sop_uid") if name in predictions}
    for column in (c for c in exams.columns if c.lower().startswith("key")):
        for lookup in known.values():
            values = exams[column].astype(str)
            if values.isin(lookup.keys()).any():
                return [lookup.get(value) for value in values]
    return [None] * len(exams)


def cache_thumbnail(dataset: Dataset | None, series_uid: str, index: int) -> np.ndarray | None:
    """(h, w) uint8 brain window of a cached slice, cut to the head (None without a dataset or cache file)."""
    if dataset is None or not dataset.folder.cache_file(series_uid).is_file():
        return None
    hu = np.asarray(dataset.hu(series_uid)[index])
    return scaled_window(hu, *WINDOWS["brain"])[figures.head_box(hu)]


def series_descriptions(dataset: Dataset | None) -> dict[str, str]:
    """series_uid → ``description · thickness · kernel`` from the dataset's series table (empty without one)."""
    if dataset is None:
        return {}
    return {row["series_uid"]: series_read(row) for row in dataset.series.to_dict("records")}
