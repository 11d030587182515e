"""``ich3d infer``: per-image predictions, exam results and RSNA submissions for a dataset or DICOM folders.

``--run`` takes run folders (every ``fold_<K>/model.pt`` in it is an ensemble member), fold folders
or checkpoint files; members' probabilities are averaged. From ``--dicom-dir`` a dataset is built in
``OUT/dataset`` with the series choice of :mod:`ich3d.dataset.roles` (thickness target: the models'
training slice spacing). The predicted series are read by each member, thin ones resampled into
slabs of its training thickness (``--resample auto``); every file of the index gets a row
(:mod:`ich3d.inference.outputs`), every study an exam row (:mod:`ich3d.inference.exams`).

Large test sets shard by series (``--num-parts K --part-id I``); each part writes
``OUT/parts/part-I-of-K.parquet`` and ``merge`` joins them. Inputs and the output folder are
checked before any model pass, every result is written atomically, and the output folder is locked
while a job writes it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ich3d.atomic import atomic_write, write_json_atomic
from ich3d.config import DataConfig, InferConfig
from ich3d.constants import LABELS, RSNA_SLICE_SPACING_MM
from ich3d.data.tables import SeriesTable, build_table
from ich3d.dataset.build import build_series
from ich3d.dataset.index import dataset_crop, load_index, part_series
from ich3d.dataset.roles import SeriesRules
from ich3d.errors import InputError
from ich3d.folders import FolderLock, prepare_output
from ich3d.inference.merge import merge_parts, requested_images
from ich3d.inference.outputs import other_rows, predicted_rows
from ich3d.inference.submission import read_submission_ids
from ich3d.layout import InferFolder, RunFolder
from ich3d.models.calibration import apply_calibration

log = logging.getLogger(__name__)
RESAMPLE_MODES = ("auto", "off")
ENGINES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class InferOptions:
    """Settings of the job (the model's own settings, e.g. TTA, come from its checkpoint).

    Attributes:
        device: "cpu", "cuda", "cuda:1"... or None for CUDA when available, else the CPU.
        batch_series: series per encoder batch.
        workers: processes reading DICOM (default: all cores) and data-loader workers (default 1).
        amp: mixed precision on CUDA.
        resample: ``auto`` reads series less than half as thick as a model's training slice spacing as slabs
            of that thickness; ``off`` reads every series as it is.
        series_rules: the series choice when building from DICOM folders (None: ``auto`` with the
            models' training spacing as the target thickness).
        calibrate: apply each member's calibration (fitted on held-out predictions in training).
        exam_threshold: probability above which a slice counts in an exam's slice ranges.
    """

    device: str | None = None
    batch_series: int = 8
    workers: int | None = None
    amp: bool = True
    resample: str = "auto"
    series_rules: SeriesRules | None = None
    calibrate: bool = True
    exam_threshold: float = 0.5
    engine: str = "torch"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise InputError(f"--engine {self.engine}: must be one of {', '.join(ENGINES)}")
        if self.batch_series < 1 or (self.workers is not None and self.workers < 1):
            raise InputError(f"--batch {self.batch_series} and --workers {self.workers} must be at least 1")
        if self.resample not in RESAMPLE_MODES:
            raise InputError(f"--resample {self.resample}: must be one of {', '.join(RESAMPLE_MODES)}")
        if not 0 < self.exam_threshold < 1:
            raise InputError(f"--threshold {self.exam_threshold}: must be between 0 and 1")


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
        out: output folder (``submission.csv``, ``predictions.parquet``, ``exams.csv``; ``dataset/``
            when built here).
        dataset: a dataset folder from ``build-series``; or ``dicom_dirs`` to build one in ``out``.
        sample_submission: the rows (and their order) the submission must have.
        allow_missing: fill requested images without a prediction with the prior instead of failing.
        num_parts, part_id: this job's shard of the series.
        options: device, batch size, workers, mixed precision, resampling, series choice.

    Returns:
        Summary counts by ``predicted_by``, ``missing``, the number of exams, output paths, timings.

    Raises:
        InputError: bad arguments or inputs, an output folder that cannot be written or is in use,
            requested images without a prediction (unless ``allow_missing``), detected before the
            model pass.
    """
    if (dataset is None) == (not dicom_dirs):
        raise InputError("give exactly one of --dataset DATASET or --dicom-dir DIR")
    if not 0 <= part_id < num_parts:
        raise InputError(f"--part-id {part_id} must be in 0..{num_parts - 1}")
    checkpoints = model_checkpoints(runs) if options.engine == "torch" else list(map(Path, runs))
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
    if options.engine == "onnxruntime":
        from ich3d.inference.onnx_engine import load_export

        models = [member for folder in checkpoints for member in load_export(folder, options.device)]
    else:
        models = [load_model(path, runtime.device) for path in checkpoints]
    clock.lap("load_s")
    crop = _members_crop(models)
    if dicom_dirs:
        dataset = folder.dataset
        _build(dicom_dirs, dataset, models, crop, options, parts, requested, allow_missing, progress)
    elif dataset_crop(dataset) not in (None, crop):
        raise InputError(f"--dataset {dataset} was built with --crop {dataset_crop(dataset)}, the model reads "
                         f"--crop {crop} caches: rebuild it with --crop {crop}, or give --dicom-dir")
    clock.lap("read_s")
    slices, series = load_index(dataset)
    requested_images(slices, series, requested, allow_missing)
    table = build_table(dataset, slices, part_series(series[series["predict"]], num_parts, part_id))
    probs, reasons = _ensemble(models, table, runtime, options, progress)
    clock.lap("model_s")
    prior = np.mean([checkpoint["prevalence"] for _, checkpoint in models], axis=0)
    part = predicted_rows(table, probs, slices, reasons)
    if part_id == 0:
        part = pd.concat([part, other_rows(slices, series, prior)], ignore_index=True)
    folder.parts.mkdir(exist_ok=True)
    with atomic_write(folder.part(part_id, num_parts)) as file:
        part.to_parquet(file, index=False)
    write_json_atomic(folder.parts_meta, {"prior": prior.tolist(), "num_parts": num_parts, "n_index_rows": len(slices),
                                          "dataset": str(Path(dataset).resolve()),
                                          "exam_threshold": options.exam_threshold})
    summary = merge_parts(folder, sample, allow_missing) if num_parts == 1 else {
        "part": str(folder.part(part_id, num_parts)), "images": len(part)}
    clock.lap("write_s")
    return summary | {"timings": clock.laps}


def _members_crop(models: list) -> str:
    """The crop every member's cache is made with.

    Raises:
        InputError: members trained on differently cropped caches (they cannot share one dataset).
    """
    crops = {checkpoint["config"]["data"].get("crop", "none") for _, checkpoint in models}
    if len(crops) > 1:
        raise InputError(f"the --run models read caches built with different --crop ({sorted(crops)}): "
                         f"predict with each group on its own")
    return crops.pop()


def _build(dicom_dirs: list[Path], dataset: Path, models: list, crop: str, options: InferOptions,
           parts: tuple[int, int], requested: np.ndarray | None, allow_missing: bool, progress: bool) -> None:
    """The dataset of ``dicom_dirs`` at the models' size and crop, its requested images checked before the
    pixel pass."""
    size = max(checkpoint["image_size"] for _, checkpoint in models)
    rules = options.series_rules or SeriesRules(target_thickness=_training_spacing(models))
    build = dict(image_size=size, crop=crop, workers=options.workers, num_parts=parts[0], part_id=parts[1],
                 series_rules=rules, progress=progress)
    build_series(dicom_dirs, dataset, index_only=True, **build)
    requested_images(*load_index(dataset), requested, allow_missing)
    build_series(dicom_dirs, dataset, **build)


def _training_spacing(models: list) -> float:
    """The members' median training slice spacing (mm)."""
    return float(np.median([checkpoint.get("slice_spacing") or RSNA_SLICE_SPACING_MM for _, checkpoint in models]))


def _ensemble(models: list, table: SeriesTable, runtime: Any, options: InferOptions,
              progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """(n_slices, 6) probabilities averaged over the members (each with its own TTA settings and, with
    ``resample auto``, its own slab thickness), and (n_slices,) notes on how each slice was read."""
    from ich3d.data.resample import resample_table
    from ich3d.inference.predictor import predict_table
    from ich3d.progress import progress_bar

    reasons = np.full(table.n_slices, "", dtype=object)
    if len(table.series_uids) == 0:
        return np.zeros((0, len(LABELS)), dtype=np.float32), reasons
    loader_workers = options.workers if options.workers is not None else 1
    total = np.zeros((table.n_slices, len(LABELS)))
    with progress_bar(progress, "predict", len(table.series_uids) * len(models)) as advance:
        for model, checkpoint in models:
            data = DataConfig(**checkpoint["config"]["data"])
            known = {f.name for f in fields(InferConfig)}  # a checkpoint of 0.1 also stored its batch size
            tta = InferConfig(**{k: v for k, v in checkpoint["config"]["infer"].items() if k in known})
            read, slab_of = table, np.arange(table.n_slices)
            if options.resample == "auto":
                thickness = checkpoint.get("slice_spacing") or RSNA_SLICE_SPACING_MM
                read, slab_of = resample_table(table, thickness)
                reasons[read.slabs.count[slab_of] > 1] = f"thin series read as {thickness:g} mm slabs"
            series_ids = np.arange(len(read.series_uids))
            probs = predict_table(model, read, data, runtime, series_ids, tta, options.batch_series, loader_workers,
                                  advance)
            if options.calibrate:
                probs = apply_calibration(probs, checkpoint.get("calibration"))
            total += probs[slab_of]
    return (total / len(models)).astype(np.float32), reasons


def merge(out: Path, sample_submission: Path | None = None, allow_missing: bool = False) -> dict[str, Any]:
    """Joins the parts in ``out/parts`` into ``predictions.parquet``, ``submission.csv`` and the exams.

    Raises:
        InputError: a part is missing, or a requested image has no prediction (without ``allow_missing``).
    """
    folder = InferFolder(Path(out))
    with FolderLock(folder.lock, f"output folder {folder.root}"):
        return merge_parts(folder, sample_submission, allow_missing)


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
