"""RSNA submission files (``ID,Label`` with ``ID_<image>_<label>``): writing, validation, scoring.

Torch-free, so ``ich3d score`` starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ich3d.atomic import atomic_write, write_json_atomic
from ich3d.constants import LABELS
from ich3d.dataset.labels import read_labels, read_long
from ich3d.errors import InputError
from ich3d.metrics import evaluate


def read_submission_ids(path: Path) -> np.ndarray:
    """The image IDs a sample submission asks for, in order of first appearance."""
    return pd.unique(read_long(path, "sample submission")["image_id"])


def write_submission(path: Path, probs: pd.DataFrame, sample: Path | None = None) -> None:
    """Writes six rows per image.

    Args:
        probs: (n_images, 6) probabilities indexed by image_id, columns in ``LABELS`` order.
        sample: when given, exactly its rows in its order; otherwise every image in ``probs`` order.
    """
    values = probs.to_numpy(np.float64)
    if sample is not None:
        rows = read_long(sample, "sample submission")
        position = probs.index.get_indexer(rows["image_id"])
        ids, labels = rows["ID"].to_numpy(), values[position, rows["label"].to_numpy()]
    else:
        ids = (probs.index.to_numpy(str)[:, None] + "_" + np.array(LABELS)[None, :]).ravel()
        labels = values.ravel()
    with atomic_write(Path(path)) as file:
        pd.DataFrame({"ID": ids, "Label": labels}).to_csv(file, index=False, float_format="%.6g")


def _listing(ids: pd.Series | np.ndarray | pd.Index) -> str:
    ids = list(ids)
    more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
    return ", ".join(map(str, ids[:10])) + more


def _id_keys(ids: pd.Series, known: pd.Series) -> np.ndarray:
    """(len(ids),) int64 key of each ID: its row in ``known``, or for an ID not there ``len(known)`` plus
    its rank of first appearance among those; equal IDs get equal keys. One hash pass over the strings
    (pyarrow), so the 4.5 million rows of a full RSNA training set take seconds."""
    row = pc.index_in(pa.array(ids, type=pa.string()), value_set=pa.array(known, type=pa.string()))
    row = row.to_numpy(zero_copy_only=False)  # float64, NaN where not found
    unknown = np.isnan(row)
    key = np.where(unknown, 0, row).astype(np.int64)
    key[unknown] = len(known) + pd.factorize(ids[unknown], use_na_sentinel=False)[0]
    return key


def validate_submission(sub: pd.DataFrame, truth: pd.DataFrame) -> None:
    """Rejects duplicate, missing or unknown IDs and probabilities that are NaN or outside [0, 1].

    Args:
        sub: the submission's rows (``ID``, ``Label``).
        truth: the expected IDs (``ID``, each once).

    Raises:
        InputError: listing the offending IDs (duplicates in order of appearance, the others sorted).
    """
    problems = []
    key = _id_keys(sub["ID"], truth["ID"])
    duplicated = sub["ID"][pd.Index(key).duplicated()]
    if len(duplicated):
        problems.append(f"duplicate IDs: {_listing(duplicated.unique())}")
    covered = np.zeros(len(truth), dtype=bool)
    covered[key[key < len(truth)]] = True
    missing = pd.Index(truth["ID"][~covered]).unique().sort_values()
    if len(missing):
        problems.append(f"missing IDs: {_listing(missing)}")
    unknown = pd.Index(sub["ID"][key >= len(truth)]).unique().sort_values()
    if len(unknown):
        problems.append(f"unknown IDs (not in the labels): {_listing(unknown)}")
    label = pd.to_numeric(sub["Label"], errors="coerce")
    bad = sub.loc[label.isna() | (label < 0) | (label > 1), "ID"]
    if len(bad):
        problems.append(f"Label NaN or outside [0, 1]: {_listing(bad)}")
    if problems:
        raise InputError("submission rejected: " + "; ".join(problems))


def _wide(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    return frame.pivot_table(index="image_id", columns="label", values=value, aggfunc="first").reindex(columns=range(6))


def score_submission(submission: Path, labels: Path, series_of: pd.Series | None = None) -> dict[str, Any]:
    """Scores a submission against labels in the RSNA long format.

    The labels are read as ``build-series`` reads them (:func:`ich3d.dataset.labels.read_labels`):
    labels must be 0 or 1, exact duplicate rows are dropped, and rows that give an ID both 0 and 1
    resolve to 1 (counted in the result's ``labels`` report).

    Args:
        series_of: image_id → series_uid, for the series-level AUC of ``any`` (optional).

    Returns:
        :func:`ich3d.metrics.evaluate`'s dict (weighted log loss, per-label log loss and AUC, ...) and
        ``labels``, the label file's report.

    Raises:
        InputError: unreadable files, labels that are not 0/1 (e.g. a submission given as labels),
            images lacking a label, submissions with duplicate, missing or unknown IDs or bad values.
    """
    table = read_labels(Path(labels))
    if table.n_incomplete:
        raise InputError(f"labels CSV {labels}: {table.n_incomplete} images lack one of the six labels")
    y_true = table.labels
    truth = pd.DataFrame({"ID": (y_true.index.to_numpy(str)[:, None] + "_" + np.array(LABELS)[None, :]).ravel()})
    sub = read_long(submission, "submission")
    validate_submission(sub, truth)
    sub = sub.assign(Label=pd.to_numeric(sub["Label"]))
    y_pred = _wide(sub, "Label").reindex(y_true.index)
    series = series_of.reindex(y_true.index).fillna("unknown").to_numpy() if series_of is not None else None
    return evaluate(y_true.to_numpy(), y_pred.to_numpy(), series_ids=series) | {"labels": table.report()}


def save_score(result: dict[str, Any], path: Path) -> None:
    """Writes the score as JSON (atomically)."""
    write_json_atomic(path, result)


def series_lookup(submission: Path, dataset: Path | None) -> pd.Series | None:
    """image_id → series_uid from a dataset index, or from ``predictions.parquet`` beside the submission."""
    if dataset is not None:
        from ich3d.dataset.index import load_index

        slices, _ = load_index(dataset)
    else:
        predictions = Path(submission).with_name("predictions.parquet")
        if not predictions.is_file():
            return None
        slices = pd.read_parquet(predictions, columns=["image_id", "series_uid"])
    known = slices.dropna(subset=["series_uid"]).drop_duplicates("image_id")
    return known.set_index("image_id")["series_uid"]
