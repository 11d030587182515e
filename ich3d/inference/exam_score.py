"""Exam-level scoring: ``exams.csv`` against reads in the CQ500 format or a plain exam table.

Two formats of exam labels are read:

* CQ500 reads: ``name, Category, R1:ICH, R1:IPH, R1:IVH, R1:SDH, R1:EDH, R1:SAH, R2:ICH, ...`` — one
  column per reader and finding (ICH = any hemorrhage); the label of an exam is the majority of its
  readers (ties count as positive: two of four readers calling a bleed is a bleed to look at). Reads'
  ``name`` are joined to StudyInstanceUIDs through a mapping file (``name, study_uid``), or else
  matched against the exams' PatientID or StudyInstanceUID; a name that matches nothing is an error
  that lists them.
* a plain table: ``study_uid`` and one 0/1 column per label (``any`` ... ``subdural``).

Per label: ROC-AUC, sensitivity, specificity and the confusion counts at a threshold, with 95 %
intervals that stay honest on a handful of exams: Wilson score intervals for sensitivity and
specificity (4 of 4 detected is 0.51-1.00, not 1.00-1.00), and a bootstrap AUC interval (exams
resampled) only with at least :data:`~ich3d.metrics.MIN_PER_CLASS_FOR_AUC_CI` positive and negative
exams; with fewer, ``auc_low``/``auc_high`` are None and ``auc_note`` says why. Exams without a
usable series have no probability: they are counted apart, not scored as negatives.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ich3d.constants import LABELS
from ich3d.errors import InputError
from ich3d.metrics import MIN_PER_CLASS_FOR_AUC_CI, auc_interval_allowed, bootstrap_auc, wilson_interval
from ich3d.spreadsheet import restore_formulas

#: CQ500 finding → ich3d label.
CQ500_FINDINGS = {"ICH": "any", "EDH": "epidural", "IPH": "intraparenchymal", "IVH": "intraventricular",
                  "SAH": "subarachnoid", "SDH": "subdural"}
_READ_COLUMN = re.compile(r"^R(\d+):(ICH|IPH|IVH|SDH|EDH|SAH)$")
_EXAMPLES = 10


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: the {what} cannot be read as CSV ({' '.join(str(exc).split())})") from None


def _zero_one(frame: pd.DataFrame, columns: list[str], path: Path) -> pd.DataFrame:
    values = frame[columns].apply(pd.to_numeric, errors="coerce")
    bad = ~values.isin([0, 1])
    if bad.any().any():
        where = bad.stack()
        raise InputError(f"{path}: exam labels must be 0 or 1; e.g. rows {sorted(set(i for i, _ in where[where].index))[:5]}")
    return values.astype(float)


def majority_reads(reads: pd.DataFrame, path: Path) -> pd.DataFrame:
    """(n_exams, 6) 0/1 labels of CQ500-style reads: per finding, positive when at least half the readers say so.

    Returns:
        Index ``name``, columns :data:`LABELS`.
    """
    found = {column: _READ_COLUMN.match(column) for column in reads.columns}
    columns = [column for column, match in found.items() if match]
    findings = {match.group(2) for match in found.values() if match}
    missing = sorted(set(CQ500_FINDINGS) - findings)
    if missing:
        raise InputError(f"{path}: CQ500 reads without the findings {missing} (columns R<n>:ICH, R<n>:IPH, ...)")
    votes = _zero_one(reads, columns, path)
    out = pd.DataFrame(index=reads["name"])
    for finding, label in CQ500_FINDINGS.items():
        mine = [c for c in columns if found[c].group(2) == finding]
        out[label] = (votes[mine].mean(axis=1).to_numpy() >= 0.5).astype(float)
    return out[list(LABELS)]


def read_exam_labels(path: Path, exams: pd.DataFrame, mapping: Path | None = None) -> pd.DataFrame:
    """Exam labels indexed by study_uid (columns :data:`LABELS`, 0/1), from either format (module docstring).

    Raises:
        InputError: an unreadable file, neither format, labels other than 0/1, reads whose names match no
            exam (listed), a mapping without ``name, study_uid``.
    """
    table = _read_csv(path, "exam labels")
    if "study_uid" in table and set(LABELS) <= set(table.columns):
        return _zero_one(table, list(LABELS), path).set_axis(pd.Index(table["study_uid"], name="study_uid"))
    if "name" not in table:
        raise InputError(f"{path}: expected CQ500 reads (name, R1:ICH, ...) or a table of study_uid and "
                         f"{', '.join(LABELS)}")
    labels = majority_reads(table, path)
    study = _join_names(labels.index, exams, mapping, path)
    return labels.set_axis(pd.Index(study, name="study_uid"))


def _join_names(names: pd.Index, exams: pd.DataFrame, mapping: Path | None, path: Path) -> np.ndarray:
    """The study_uid of each read name: by the mapping file, else by PatientID or StudyInstanceUID."""
    if mapping is not None:
        table = _read_csv(mapping, "exam mapping")
        if not {"name", "study_uid"} <= set(table.columns):
            raise InputError(f"{mapping}: the mapping needs the columns name, study_uid")
        lookup = dict(zip(table["name"], table["study_uid"]))
    else:
        lookup = dict(zip(exams["patient_id"].astype(str), exams["study_uid"])) | dict(zip(exams["study_uid"],
                                                                                          exams["study_uid"]))
    study = names.map(lambda name: lookup.get(name)).to_numpy(object)
    unknown = sorted(set(names[pd.isna(study)]) | set(names[~pd.Index(study).isin(exams["study_uid"])]))
    if unknown:
        how = f"through {mapping}" if mapping is not None else "to a PatientID or StudyInstanceUID (give --exam-map)"
        raise InputError(f"{path}: {len(unknown)} read name(s) match no exam {how}: {', '.join(unknown[:_EXAMPLES])}"
                         + (" ..." if len(unknown) > _EXAMPLES else ""))
    return study


def score_exams(exams_csv: Path, labels: Path, mapping: Path | None = None, threshold: float = 0.5,
                n_boot: int = 1000) -> dict[str, Any]:
    """Scores the exam probabilities of ``exams_csv`` (written by ``ich3d infer``) against exam labels.

    Returns:
        ``{"n_exams", "n_unscored", "threshold", "labels": {label: {"auc", "auc_low", "auc_high",
        "auc_note", "sensitivity", "sensitivity_low", "sensitivity_high", "specificity",
        "specificity_low", "specificity_high", "tp", "fp", "tn", "fn", "n_positive", "n_negative"}}}``
        (None where undefined; the intervals are 95 %, see the module docstring).
    """
    exams = restore_formulas(_read_csv(exams_csv, "exams table"))  # the values, as spreadsheet.write_table wrote them
    truth = read_exam_labels(labels, exams, mapping)
    probs = exams.set_index("study_uid")[[f"p_{name}" for name in LABELS]].apply(pd.to_numeric, errors="coerce")
    probs = probs.reindex(truth.index)
    scored = probs.notna().all(axis=1).to_numpy()
    result: dict[str, Any] = {"n_exams": len(truth), "n_unscored": int((~scored).sum()), "threshold": threshold,
                              "labels": {}}
    for name in LABELS:
        y, p = truth[name].to_numpy()[scored], probs[f"p_{name}"].to_numpy()[scored]
        result["labels"][name] = _label_scores(y, p, threshold, n_boot)
    return result


def _label_scores(y: np.ndarray, p: np.ndarray, threshold: float, n_boot: int) -> dict[str, Any]:
    call = p > threshold
    tp, fp = int((call & (y == 1)).sum()), int((call & (y == 0)).sum())
    fn, tn = int((~call & (y == 1)).sum()), int((~call & (y == 0)).sum())
    auc, low, high = bootstrap_auc(y, p, n_boot=n_boot)
    note = None
    if not math.isnan(auc) and not auc_interval_allowed(tp + fn, tn + fp):
        low = high = math.nan
        note = (f"no interval: {tp + fn} positive and {tn + fp} negative exams (one is given from "
                f"{MIN_PER_CLASS_FOR_AUC_CI} of each)")

    def value(x: float) -> float | None:
        return None if math.isnan(x) else float(x)

    def share(a: int, b: int) -> float | None:
        return a / (a + b) if a + b else None

    sens_low, sens_high = wilson_interval(tp, tp + fn)
    spec_low, spec_high = wilson_interval(tn, tn + fp)
    return {"auc": value(auc), "auc_low": value(low), "auc_high": value(high), "auc_note": note,
            "sensitivity": share(tp, fn), "sensitivity_low": value(sens_low), "sensitivity_high": value(sens_high),
            "specificity": share(tn, fp), "specificity_low": value(spec_low), "specificity_high": value(spec_high),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n_positive": tp + fn, "n_negative": tn + fp}
