"""``ich3d infer`` and ``ich3d merge``: per-image predictions and RSNA submissions for every requested image.

Every image asked for gets six rows. Images are predicted

* ``model``   — readable slices, by the encoder and the sequence head over their series;
* ``context`` — slices whose pixels could not be read but whose header placed them in a series: the
  head predicts them from their neighbours (missing-slice embedding);
* ``prior``   — files whose header could not be read (no series), and, with ``--allow-missing``,
  requested images that were not found at all: the training prevalence, counted and reported.

``--run`` takes run folders (every ``fold_<K>/model.pt`` in it is an ensemble member), fold folders
or checkpoint files; members' probabilities are averaged. Large test sets shard by series
(``--num-parts K --part-id I``); each part writes ``OUT/parts/part-I-of-K.parquet`` and ``merge``
joins them into ``submission.csv``. Inputs and the output folder are checked before any model pass,
every result is written atomically, and the output folder is locked while a job writes it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ich3d.atomic import atomic_write, write_json_atomic
from ich3d.config import DataConfig, InferConfig
from ich3d.constants import LABELS
from ich3d.data.tables import SeriesTable, build_table
from ich3d.dataset.build import build_series
from ich3d.dataset.index import load_index, part_series
from ich3d.errors import InputError
from ich3d.folders import FolderLock, prepare_output
from ich3d.inference.submission import read_submission_ids, write_submission
from ich3d.layout import InferFolder, RunFolder
from ich3d.metrics import prior_predictions

log = logging.getLogger(__name__)
PROB_COLUMNS = [f"p_{name}" for name in LABELS]


@dataclass(frozen=True)
class InferOptions:
    """Settings of the machine at inference (the model's own settings, e.g. TTA, come from its checkpoint).

    Attributes:
        device: "cpu", "cuda", "cuda:1"... or None for CUDA when available, else the CPU.
        batch_series: series per encoder batch.
        workers: processes reading DICOM (default: all cores) and data-loader workers (default 1).
        amp: mixed precision on CUDA.
    """

    device: str | None = None
    batch_series: int = 8
    workers: int | None = None
    amp: bool = True

    def __post_init__(self) -> None:
        if self.batch_series < 1 or (self.workers is not None and self.workers < 1):
            raise InputError(f"--batch {self.batch_series} and --workers {self.workers} must be at least 1")


def model_checkpoints(runs: Sequence[Path]) -> list[Path]:
    """The model checkpoints of ``--run`` arguments: run folders (every fold's ``model.pt``), fold
    folders (their ``model.pt``) or checkpoint files.

    Raises:
        InputError: an argument that holds no trained model.
    """
    found = []
    for run in map(Path, runs):
        if run.is_file():
            found.append(run)
            continue
        folds = RunFolder(run).folds_present()
        members = [RunFolder(run).fold(k).model for k in folds] if folds else [run / "model.pt"]
        members = [path for path in members if path.is_file()]
        if not members:
            raise InputError(f"no trained model at {run}: train one with `ich3d train --out {run}` "
                             f"(or point --run at a run folder, a fold folder or a model.pt)")
        found += members
    return found


def predict(runs: Sequence[Path], out: Path, *, dataset: Path | None = None, dicom_dirs: Sequence[Path] = (),
            sample_submission: Path | None = None, allow_missing: bool = False, num_parts: int = 1,
            part_id: int = 0, options: InferOptions = InferOptions(), progress: bool = True) -> dict[str, Any]:
    """Predicts every image of a dataset (or DICOM folders) with one or more trained models.

    Args:
        runs: run folders, fold folders or checkpoints (see :func:`model_checkpoints`); averaged.
        out: output folder (``submission.csv``, ``predictions.parquet``; ``dataset/`` when built here).
        dataset: a dataset folder from ``build-series``; or ``dicom_dirs`` to build one in ``out``.
        sample_submission: the rows (and their order) the submission must have.
        allow_missing: fill requested images that do not exist with the prior instead of failing.
        num_parts, part_id: this job's shard of the series.
        options: device, batch size, workers, mixed precision.

    Returns:
        Summary counts (``model``, ``context``, ``prior``, ``missing``) and output paths.

    Raises:
        InputError: bad arguments or inputs, an output folder that cannot be written or is in use,
            requested images without a file (unless ``allow_missing``), detected before the model pass.
    """
    if (dataset is None) == (not dicom_dirs):
        raise InputError("give exactly one of --dataset DATASET or --dicom-dir DIR")
    if not 0 <= part_id < num_parts:
        raise InputError(f"--part-id {part_id} must be in 0..{num_parts - 1}")
    checkpoints = model_checkpoints(runs)
    requested = read_submission_ids(sample_submission) if sample_submission else None
    folder = InferFolder(prepare_output(Path(out), "--out"))
    lock = folder.lock if num_parts == 1 else folder.part_lock(part_id, num_parts)
    with FolderLock(lock, f"output folder {folder.root}" + (f" (part {part_id})" if num_parts > 1 else "")):
        return _predict(checkpoints, folder, dataset, list(dicom_dirs), sample_submission, requested, allow_missing,
                        (num_parts, part_id), options, progress)


def _predict(checkpoints: list[Path], folder: InferFolder, dataset: Path | None, dicom_dirs: list[Path],
             sample: Path | None, requested: np.ndarray | None, allow_missing: bool, parts: tuple[int, int],
             options: InferOptions, progress: bool) -> dict[str, Any]:
    from ich3d.models.io import load_model
    from ich3d.runtime import setup_runtime

    num_parts, part_id = parts
    clock = _Clock()
    runtime = setup_runtime(options.device, options.amp)
    models = [load_model(path, runtime.device) for path in checkpoints]
    clock.lap("load_s")
    if dicom_dirs:
        dataset = folder.dataset
        size = max(checkpoint["image_size"] for _, checkpoint in models)
        build = dict(image_size=size, workers=options.workers, num_parts=num_parts, part_id=part_id, progress=progress)
        build_series(dicom_dirs, dataset, index_only=True, **build)
        _check_requested(load_index(dataset)[0], requested, allow_missing)
        build_series(dicom_dirs, dataset, **build)
    clock.lap("read_s")
    slices, series = load_index(dataset)
    _check_requested(slices, requested, allow_missing)
    table = build_table(dataset, slices, part_series(series, num_parts, part_id))
    probs = _ensemble(models, table, runtime, options, progress)
    clock.lap("model_s")
    prior = np.mean([checkpoint["prevalence"] for _, checkpoint in models], axis=0)
    part = _part_frame(table, probs, slices, prior if part_id == 0 else None)
    folder.parts.mkdir(exist_ok=True)
    with atomic_write(folder.part(part_id, num_parts)) as file:
        part.to_parquet(file, index=False)
    write_json_atomic(folder.parts_meta, {"prior": prior.tolist(), "num_parts": num_parts})
    summary = _merge(folder, sample, allow_missing) if num_parts == 1 else {
        "part": str(folder.part(part_id, num_parts)), "images": len(part)}
    clock.lap("write_s")
    return summary | {"timings": clock.laps}


class _Clock:
    """Wall time of consecutive phases (CUDA work included), in seconds."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 4)
        self._last = now


def _check_requested(slices: pd.DataFrame, requested: np.ndarray | None, allow_missing: bool) -> None:
    """Raises before the model pass when requested images have no file (unless allowed)."""
    if requested is None or allow_missing:
        return
    missing = pd.Index(requested).difference(pd.Index(slices["image_id"]))
    if len(missing):
        raise InputError(f"{len(missing)} requested image(s) have no DICOM file in the input "
                         f"(e.g. {', '.join(missing[:10])}): add the files, or pass --allow-missing to fill them "
                         f"with the training prevalence")


def _ensemble(models: list, table: SeriesTable, runtime: Any, options: InferOptions, progress: bool) -> np.ndarray:
    """(n_slices, 6) probabilities averaged over the members (each with its own TTA settings)."""
    from ich3d.inference.predictor import predict_table
    from ich3d.progress import progress_bar

    series_ids = np.arange(len(table.series_uids))
    if len(series_ids) == 0:
        return np.zeros((0, len(LABELS)), dtype=np.float32)
    loader_workers = options.workers if options.workers is not None else 1
    total = np.zeros((table.n_slices, len(LABELS)))
    with progress_bar(progress, "predict", len(series_ids) * len(models)) as advance:
        for model, checkpoint in models:
            data = DataConfig(**checkpoint["config"]["data"])
            tta = InferConfig(**checkpoint["config"]["infer"])
            total += predict_table(model, table, data, runtime, series_ids, tta, options.batch_series,
                                   loader_workers, advance)
    return (total / len(models)).astype(np.float32)


def _part_frame(table: SeriesTable, probs: np.ndarray, slices: pd.DataFrame, prior: np.ndarray | None) -> pd.DataFrame:
    """One row per image of this part: identifiers, status, how it was predicted, six probabilities."""
    frame = pd.DataFrame(probs, columns=PROB_COLUMNS)
    frame.insert(0, "image_id", table.image_ids)
    frame.insert(1, "series_uid", table.series_uids[table.series_of_slice()])
    frame.insert(2, "slice_index", np.concatenate([np.arange(n) for n in table.lengths]) if len(probs) else [])
    frame["predicted_by"] = np.where(table.readable, "model", "context")
    frame = frame.merge(slices[["image_id", "status", "error"]], on="image_id", how="left")
    if prior is not None:
        orphans = slices.loc[slices["series_uid"].isna(), ["image_id", "status", "error"]]
        filled = pd.DataFrame(prior_predictions(prior, len(orphans)), columns=PROB_COLUMNS)
        filled = pd.concat([orphans.reset_index(drop=True), filled], axis=1)
        filled["predicted_by"] = "prior"
        frame = pd.concat([frame, filled], ignore_index=True)
    return frame


def merge(out: Path, sample_submission: Path | None = None, allow_missing: bool = False) -> dict[str, Any]:
    """Joins the parts in ``out/parts`` into ``predictions.parquet`` and ``submission.csv``.

    Raises:
        InputError: a part is missing, or a requested image has no prediction (without ``allow_missing``).
    """
    folder = InferFolder(Path(out))
    with FolderLock(folder.lock, f"output folder {folder.root}"):
        return _merge(folder, sample_submission, allow_missing)


def _merge(folder: InferFolder, sample: Path | None, allow_missing: bool) -> dict[str, Any]:
    if not folder.parts_meta.is_file():
        raise InputError(f"{folder.root} holds no inference parts: run `ich3d infer --out {folder.root}` first")
    meta = json.loads(folder.parts_meta.read_text())
    paths = [folder.part(i, meta["num_parts"]) for i in range(meta["num_parts"])]
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        raise InputError(f"missing inference part(s): {', '.join(absent)}: run those --part-id jobs first")
    predictions = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    requested = read_submission_ids(sample) if sample else predictions["image_id"].to_numpy()
    predictions, n_missing = _fill_missing(predictions, requested, np.asarray(meta["prior"]), allow_missing)
    with atomic_write(folder.predictions) as file:
        predictions.to_parquet(file, index=False)
    write_submission(folder.submission, predictions.set_index("image_id")[PROB_COLUMNS], sample)
    counts = predictions["predicted_by"].value_counts().to_dict()
    summary = {"images": int(len(np.unique(requested))), "model": int(counts.get("model", 0)),
               "context": int(counts.get("context", 0)), "prior": int(counts.get("prior", 0)) - n_missing,
               "missing": n_missing, "submission": str(folder.submission), "predictions": str(folder.predictions)}
    write_json_atomic(folder.summary, summary)
    return summary


def _fill_missing(predictions: pd.DataFrame, requested: np.ndarray, prior: np.ndarray,
                  allow_missing: bool) -> tuple[pd.DataFrame, int]:
    """Adds prior rows for requested images that were never found (only with ``allow_missing``)."""
    missing = pd.Index(np.unique(requested)).difference(pd.Index(predictions["image_id"]))
    if len(missing) and not allow_missing:
        examples = ", ".join(missing[:10])
        raise InputError(f"{len(missing)} requested image(s) have no DICOM file in the input (e.g. {examples}): "
                         "add the files, or pass --allow-missing to fill them with the training prevalence")
    filled = pd.DataFrame(prior_predictions(prior, len(missing)), columns=PROB_COLUMNS)
    filled.insert(0, "image_id", missing)
    filled["status"], filled["error"], filled["predicted_by"] = "missing", "no file", "prior"
    return pd.concat([predictions, filled], ignore_index=True), len(missing)
