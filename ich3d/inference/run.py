"""`ich3d infer` and `ich3d merge`: per-image predictions and RSNA submissions for every requested image.

Every image asked for gets six rows. Images are predicted

* ``model``   — readable slices, by the encoder and the sequence head over their series;
* ``context`` — slices whose pixels could not be read but whose header placed them in a series: the
  head predicts them from their neighbours (missing-slice embedding);
* ``prior``   — files whose header could not be read (no series), and, with ``--allow-missing``,
  requested images that were not found at all: the training prevalence, counted and reported.

Large test sets shard by series (``--num-parts K --part-id I``); each part writes
``OUT/parts/part-I-of-K.parquet`` and ``merge`` joins them into ``submission.csv``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ich3d.dataset.build import build_series, load_index, part_series
from ich3d.config import DataConfig, InferConfig
from ich3d.constants import LABELS, MODEL_CHECKPOINT
from ich3d.data.tables import build_table
from ich3d.errors import InputError
from ich3d.inference.submission import read_submission_ids, write_submission

log = logging.getLogger(__name__)
PROB_COLUMNS = [f"p_{name}" for name in LABELS]
PARTS_DIR = "parts"


def _part_file(out: Path, part_id: int, num_parts: int) -> Path:
    return out / PARTS_DIR / f"part-{part_id}-of-{num_parts}.parquet"


def predict(runs: list[Path], out: Path, dataset: Path | None = None, dicom_dirs: list[Path] | None = None,
            sample_submission: Path | None = None, allow_missing: bool = False, num_parts: int = 1,
            part_id: int = 0, device: str | None = None, workers: int | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Predicts every image of a dataset (or DICOM folders) with one or more trained runs.

    Args:
        runs: run folders (each with ``model.pt``); their probabilities are averaged.
        out: output folder (``submission.csv``, ``predictions.parquet``; ``dataset/`` when built here).
        dataset: a dataset folder from ``build-series``; or ``dicom_dirs`` to build one in ``out``.
        sample_submission: the rows (and their order) the submission must have.
        allow_missing: fill requested images that do not exist with the prior instead of failing.
        num_parts, part_id: this job's shard of the series.

    Returns:
        Summary counts (``model``, ``context``, ``prior``, ``missing``) and output paths.
    """
    from ich3d.training.engine import load_model
    from ich3d.runtime import setup_runtime

    if (dataset is None) == (not dicom_dirs):
        raise InputError("give exactly one of --dataset DATASET or --dicom-dir DIR")
    if not 0 <= part_id < num_parts:
        raise InputError(f"--part-id {part_id} must be in 0..{num_parts - 1}")
    out.mkdir(parents=True, exist_ok=True)
    runtime = setup_runtime(device, amp=True)
    models = [load_model(_checkpoint_of(run), runtime.device) for run in runs]
    if dicom_dirs:
        dataset = out / "dataset"
        size = max(checkpoint["image_size"] for _, checkpoint in models)
        build_series(dicom_dirs, dataset, image_size=size, workers=workers, num_parts=num_parts,
                     part_id=part_id, progress=progress)
    slices, series = load_index(dataset)
    mine = part_series(series, num_parts, part_id)
    table = build_table(dataset, slices, list(mine))
    probs = _ensemble(models, table, runtime, progress)
    prior = np.mean([checkpoint["prevalence"] for _, checkpoint in models], axis=0)
    part = _part_frame(table, probs, slices, prior if part_id == 0 else None)
    path = _part_file(out, part_id, num_parts)
    path.parent.mkdir(exist_ok=True)
    part.to_parquet(path, index=False)
    (out / PARTS_DIR / "prior.json").write_text(json.dumps({"prior": prior.tolist(), "num_parts": num_parts}))
    if num_parts == 1:
        return merge(out, sample_submission, allow_missing)
    return {"part": str(path), "images": len(part)}


def _checkpoint_of(run: Path) -> Path:
    path = Path(run) / MODEL_CHECKPOINT if Path(run).is_dir() else Path(run)
    if not path.is_file():
        raise InputError(f"no trained model at {path}: train one with `ich3d train --out {run}` (or point --run at a run folder)")
    return path


def _ensemble(models: list, table: Any, runtime: Any, progress: bool = False) -> np.ndarray:
    """(n_slices, 6) probabilities averaged over the runs (each with its own TTA settings)."""
    from ich3d.inference.predictor import predict_table
    from ich3d.progress import progress_bar

    series_ids = np.arange(len(table.series_uids))
    if len(series_ids) == 0:
        return np.zeros((0, len(LABELS)), dtype=np.float32)
    total = np.zeros((table.n_slices, len(LABELS)))
    with progress_bar(progress, "predict", len(series_ids) * len(models)) as advance:
        for model, checkpoint in models:
            data = DataConfig(**checkpoint["config"]["data"])
            tta = InferConfig(**checkpoint["config"]["infer"])
            total += predict_table(model, table, data, runtime, series_ids, tta.tta_flip, tta.tta_reverse,
                                   tta.batch_series, checkpoint["config"]["num_workers"], advance)
    return (total / len(models)).astype(np.float32)


def _part_frame(table: Any, probs: np.ndarray, slices: pd.DataFrame, prior: np.ndarray | None) -> pd.DataFrame:
    """One row per image of this part: identifiers, status, how it was predicted, six probabilities."""
    frame = pd.DataFrame(probs, columns=PROB_COLUMNS)
    frame.insert(0, "image_id", table.image_ids)
    frame.insert(1, "series_uid", table.series_uids[table.series_of_slice()])
    frame.insert(2, "slice_index", np.concatenate([np.arange(n) for n in table.lengths]) if len(probs) else [])
    frame["predicted_by"] = np.where(table.readable, "model", "context")
    frame = frame.merge(slices[["image_id", "status", "error"]], on="image_id", how="left")
    if prior is not None:
        orphans = slices.loc[slices["series_uid"].isna(), ["image_id", "status", "error"]]
        filled = pd.DataFrame(np.tile(prior, (len(orphans), 1)), columns=PROB_COLUMNS)
        filled = pd.concat([orphans.reset_index(drop=True), filled], axis=1)
        filled["predicted_by"] = "prior"
        frame = pd.concat([frame, filled], ignore_index=True)
    return frame


def merge(out: Path, sample_submission: Path | None = None, allow_missing: bool = False) -> dict[str, Any]:
    """Joins the parts in ``out/parts`` into ``predictions.parquet`` and ``submission.csv``.

    Raises:
        InputError: a part is missing, or a requested image has no prediction (without ``allow_missing``).
    """
    prior_file = out / PARTS_DIR / "prior.json"
    if not prior_file.is_file():
        raise InputError(f"{out} holds no inference parts: run `ich3d infer --out {out}` first")
    meta = json.loads(prior_file.read_text())
    paths = [_part_file(out, i, meta["num_parts"]) for i in range(meta["num_parts"])]
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        raise InputError(f"missing inference part(s): {', '.join(absent)}: run those --part-id jobs first")
    predictions = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    requested = read_submission_ids(sample_submission) if sample_submission else predictions["image_id"].to_numpy()
    predictions, n_missing = _fill_missing(predictions, requested, np.asarray(meta["prior"]), allow_missing)
    predictions.to_parquet(out / "predictions.parquet", index=False)
    write_submission(out / "submission.csv", predictions.set_index("image_id")[PROB_COLUMNS], sample_submission)
    counts = predictions["predicted_by"].value_counts().to_dict()
    summary = {"images": int(len(np.unique(requested))), "model": int(counts.get("model", 0)),
               "context": int(counts.get("context", 0)), "prior": int(counts.get("prior", 0)) - n_missing,
               "missing": n_missing, "submission": str(out / "submission.csv"),
               "predictions": str(out / "predictions.parquet")}
    (out / "infer.json").write_text(json.dumps(summary, indent=1))
    return summary


def _fill_missing(predictions: pd.DataFrame, requested: np.ndarray, prior: np.ndarray,
                  allow_missing: bool) -> tuple[pd.DataFrame, int]:
    """Adds prior rows for requested images that were never found (only with ``allow_missing``)."""
    missing = pd.Index(np.unique(requested)).difference(pd.Index(predictions["image_id"]))
    if len(missing) and not allow_missing:
        examples = ", ".join(missing[:10])
        raise InputError(f"{len(missing)} requested image(s) have no DICOM file in the input (e.g. {examples}): "
                         "add the files, or pass --allow-missing to fill them with the training prevalence")
    filled = pd.DataFrame(np.tile(prior, (len(missing), 1)), columns=PROB_COLUMNS)
    filled.insert(0, "image_id", missing)
    filled["status"], filled["error"], filled["predicted_by"] = "missing", "no file", "prior"
    return pd.concat([predictions, filled], ignore_index=True), len(missing)
