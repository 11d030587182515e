"""Joining inference parts: ``predictions.parquet``, ``submission.csv``, ``exams.csv``/``exams.json``, ``infer.json``.

Every part carries the fingerprint of the dataset it predicted (:func:`write_part`); parts of
different datasets, or of a dataset rebuilt since, are refused. Every file of the dataset's index is
one row of ``predictions.parquet`` (asserted); the submission holds the rows with probabilities (the
sample submission's rows and order when one is given); the exams come from the predictions and the
dataset's series choice (:mod:`ich3d.inference.exams`), written spreadsheet-safe
(:mod:`ich3d.spreadsheet`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ich3d.atomic import atomic_write, write_json_atomic
from ich3d.dataset.index import index_fingerprint, read_meta, write_parquet
from ich3d.dataset.opened import Dataset
from ich3d.errors import InputError
from ich3d.inference.exams import exam_table
from ich3d.inference.outputs import PROB_COLUMNS, check_rows
from ich3d.inference.submission import read_submission_ids, write_submission
from ich3d.layout import InferFolder
from ich3d.metrics import prior_predictions
from ich3d.shard import Shard
from ich3d.spreadsheet import write_table

_EXAMPLES = 10


def requested_images(slices: pd.DataFrame, series: pd.DataFrame, requested: np.ndarray | None,
                     allow_missing: bool) -> None:
    """Checks, before any model pass, that every requested image will get a prediction.

    Raises:
        InputError: requested images without a file, or in series that are not predicted (unless
            ``allow_missing``: they get the prior then).
    """
    if requested is None or allow_missing:
        return
    known = pd.Index(slices["image_id"])
    missing = pd.Index(requested).difference(known)
    if len(missing):
        raise InputError(f"{len(missing)} requested image(s) have no DICOM file in the input "
                         f"(e.g. {', '.join(missing[:_EXAMPLES])}): add the files, or pass --allow-missing to fill "
                         f"them with the training prevalence")
    predicted = set(series.loc[series["predict"], "series_uid"])
    rows = slices.iloc[known.get_indexer(pd.Index(requested))]
    skipped = rows[rows["series_uid"].notna() & ~rows["series_uid"].isin(predicted)]
    if len(skipped):
        raise InputError(f"{len(skipped)} requested image(s) are in series that are not predicted (e.g. "
                         f"{', '.join(skipped['image_id'].head(_EXAMPLES))}): choose their series with --series all "
                         f"or --series-uid, or pass --allow-missing")


def write_part(folder: InferFolder, part: pd.DataFrame, shard: Shard, dataset: Path, meta: dict[str, Any]) -> None:
    """Writes one part's rows, marked with the dataset they predict, and the parts' shared ``meta``.

    Args:
        meta: the job's ``prior``, ``n_index_rows``, exam thresholds and operating points.
    """
    source = {"dataset": str(Path(dataset).resolve()), "dataset_fingerprint": index_fingerprint(dataset)}
    folder.parts.mkdir(exist_ok=True)
    write_parquet(part, folder.part(shard.part_id, shard.num_parts), source)
    write_json_atomic(folder.parts_meta, meta | source | {"num_parts": shard.num_parts})


def _check_sources(paths: list[Path], meta: dict[str, Any]) -> None:
    """All parts predict one dataset, the one ``meta`` names, whose index has not changed since.

    Raises:
        InputError: parts without a fingerprint, of different datasets, or of a dataset rebuilt since.
    """
    sources = [read_meta(path) or {} for path in paths]
    unmarked = [str(path) for path, source in zip(paths, sources) if "dataset_fingerprint" not in source]
    if unmarked:
        raise InputError(f"inference part(s) {', '.join(unmarked)} do not say which dataset they predict (written "
                         f"by an older ich3d): rerun those --part-id jobs")
    found = {source["dataset_fingerprint"]: source["dataset"] for source in sources}
    if len(found) > 1:
        listing = "; ".join(f"{dataset} (index {fingerprint})" for fingerprint, dataset in found.items())
        raise InputError(f"the parts in {paths[0].parent} predict different datasets: {listing}; rerun every "
                         f"--part-id job with one --dataset (or --dicom-dir), into a new --out")
    fingerprint, dataset = found.popitem()
    if index_fingerprint(Path(meta["dataset"])) != fingerprint:
        raise InputError(f"the dataset {dataset} was rebuilt since the parts were predicted (its index is now "
                         f"{index_fingerprint(Path(meta['dataset']))}, the parts' {fingerprint}): rerun the parts")


def merge_parts(folder: InferFolder, sample: Path | None, allow_missing: bool) -> dict[str, Any]:
    """Joins the parts of ``folder`` and writes every output (see the module docstring).

    Raises:
        InputError: no parts, missing parts, parts of different datasets, requested images without a
            prediction (unless ``allow_missing``).
    """
    if not folder.parts_meta.is_file():
        raise InputError(f"{folder.root} holds no inference parts: run `ich3d infer --out {folder.root}` first")
    meta = json.loads(folder.parts_meta.read_text())
    paths = [folder.part(i, meta["num_parts"]) for i in range(meta["num_parts"])]
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        raise InputError(f"missing inference part(s): {', '.join(absent)}: run those --part-id jobs first")
    _check_sources(paths, meta)
    predictions = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    check_rows(predictions, meta["n_index_rows"])
    requested = read_submission_ids(sample) if sample else None
    predictions, n_missing = _fill_requested(predictions, requested, np.asarray(meta["prior"]), allow_missing)
    with atomic_write(folder.predictions) as file:
        predictions.to_parquet(file, index=False)
    scored = predictions[predictions[PROB_COLUMNS[0]].notna()]
    write_submission(folder.submission, scored.set_index("image_id")[PROB_COLUMNS], sample)
    exams = exam_table(predictions, Dataset.open(meta["dataset"]).series, meta.get("exam_threshold", 0.5))
    write_table(folder.exams_csv, exams)
    write_json_atomic(folder.exams_json, json.loads(exams.to_json(orient="records")))
    counts = predictions["predicted_by"].value_counts()
    summary = {"images": int(len(requested) if requested is not None else len(scored)),
               **{by: int(counts.get(by, 0)) for by in ("model", "context", "prior", "skipped")},
               "missing": n_missing, "exams": len(exams), "exams_by_status": exams["status"].value_counts().to_dict(),
               "submission": str(folder.submission), "predictions": str(folder.predictions),
               "exams_csv": str(folder.exams_csv), "exam_threshold": meta.get("exam_threshold", 0.5),
               "provenance": meta.get("provenance")}
    summary["prior"] -= n_missing
    write_json_atomic(folder.summary, summary)
    return summary


def _fill_requested(predictions: pd.DataFrame, requested: np.ndarray | None, prior: np.ndarray,
                    allow_missing: bool) -> tuple[pd.DataFrame, int]:
    """With ``allow_missing``, the prior for requested images without a prediction: new rows for
    images without a file, prior probabilities for skipped ones. Returns the frame and that count."""
    if requested is None:
        return predictions, 0
    keys = pd.Index(predictions["image_id"])
    absent = pd.Index(pd.unique(requested)).difference(keys)
    rows = keys.get_indexer(pd.Index(requested).intersection(keys))
    unscored = rows[predictions[PROB_COLUMNS[0]].isna().to_numpy()[rows]]
    if (len(absent) or len(unscored)) and not allow_missing:
        examples = ", ".join([*absent[:_EXAMPLES], *predictions["image_id"].iloc[unscored[:_EXAMPLES]]])
        raise InputError(f"{len(absent) + len(unscored)} requested image(s) have no prediction (e.g. {examples}): "
                         "add the files or choose their series, or pass --allow-missing to fill them with the "
                         "training prevalence")
    predictions = predictions.copy()
    predictions.loc[predictions.index[unscored], PROB_COLUMNS] = prior_predictions(prior, len(unscored))
    predictions.loc[predictions.index[unscored], "predicted_by"] = "prior"
    filled = pd.DataFrame(prior_predictions(prior, len(absent)), columns=PROB_COLUMNS)
    filled.insert(0, "image_id", absent)
    filled["status"], filled["error"], filled["predicted_by"] = "missing", "no file", "prior"
    filled["reason"] = "requested, no file (--allow-missing)"
    return pd.concat([predictions, filled], ignore_index=True), len(absent) + len(unscored)
