"""One inference job of a :class:`~ich3d.inference.predictor.Predictor`: a dataset or DICOM folders in, an
``ich3d infer`` output folder out.

From DICOM folders a dataset is built in ``OUT/dataset`` with the series choice of
:mod:`ich3d.dataset.roles` (thickness target: the members' training slice spacing) at the members'
size and crop, its requested images checked before the pixel pass. The predicted series of the job's
shard are read by the ensemble; every file of the index gets a row (:mod:`ich3d.inference.outputs`),
written as ``OUT/parts/part-I-of-K.parquet``; a whole job (one part) then merges into
``predictions.parquet``, ``submission.csv`` and the exam table (:mod:`ich3d.inference.merge`), whose
flags use the members' operating thresholds unless a threshold is given. The output folder is
checked before any model pass and locked while the job writes it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ich3d.constants import LABELS
from ich3d.data.tables import build_table
from ich3d.dataset.build import BuildOptions, build_series, require_usable
from ich3d.dataset.index import part_series
from ich3d.dataset.opened import Dataset
from ich3d.dataset.roles import SeriesRules
from ich3d.errors import InputError, UsageError
from ich3d.folders import FolderLock, prepare_output
from ich3d.inference.merge import merge_parts, requested_images, write_part
from ich3d.inference.outputs import other_rows, predicted_rows
from ich3d.inference.submission import read_submission_ids
from ich3d.layout import InferFolder
from ich3d.provenance import provenance
from ich3d.shard import Shard

if TYPE_CHECKING:
    from ich3d.inference.predictor import Predictor, Reading


@dataclass(frozen=True)
class PredictOptions:
    """What one job asks of a :class:`~ich3d.inference.predictor.Predictor` (its machine settings are the
    predictor's own).

    Attributes:
        resample: ``auto`` (thin series read as slabs of each member's training spacing) or ``off``.
        calibrate: apply each member's calibration.
        series_rules: the series choice when building from DICOM folders (None: ``auto`` with the
            members' training spacing as the target thickness).
        exam_threshold: one probability for every label's exam flag and slice ranges (None: the
            members' operating thresholds, docs/design.md §4).
        sample_submission: the rows (and their order) the submission must have.
        allow_missing: fill requested images without a prediction with the prior instead of failing.
        shard: this job's part of the series.
        progress: progress bars.
    """

    resample: str = "auto"
    calibrate: bool = True
    series_rules: SeriesRules | None = None
    exam_threshold: float | None = None
    sample_submission: Path | None = None
    allow_missing: bool = False
    shard: Shard = field(default_factory=Shard)
    progress: bool = False

    def __post_init__(self) -> None:
        if self.exam_threshold is not None and not 0 < self.exam_threshold < 1:
            raise InputError(f"--threshold {self.exam_threshold}: must be between 0 and 1")
        self.reading()  # checks resample

    def reading(self) -> Reading:
        from ich3d.inference.predictor import Reading

        return Reading(resample=self.resample, calibrate=self.calibrate)


@dataclass(frozen=True)
class PredictionResult:
    """What a job wrote.

    Attributes:
        folder: the output folder's layout (``folder.predictions``, ``folder.exams_csv``, ...).
        dataset: the dataset predicted (built in ``folder.dataset`` from DICOM folders).
        summary: counts by ``predicted_by``, ``missing``, exams, output paths, ``timings`` (s).
        predictions: one row per file of the index (None for one part of a sharded job).
        exams: one row per study (None for one part of a sharded job).
    """

    folder: InferFolder
    dataset: Path
    summary: dict[str, Any]
    predictions: pd.DataFrame | None = None
    exams: pd.DataFrame | None = None


def run_job(predictor: Predictor, out: Path, options: PredictOptions, *, dataset: Dataset | Path | None = None,
            dicom_dirs: list[Path] | None = None) -> PredictionResult:
    """Predicts ``dataset`` (opened or a folder) or ``dicom_dirs`` into ``out`` (see the module docstring)."""
    if (dataset is None) == (not dicom_dirs):
        raise UsageError("give exactly one of --dataset DATASET or --dicom-dir DIR")
    if dataset is not None and options.series_rules is not None:
        raise UsageError("--series, --series-rules and --series-uid choose the series of --dicom-dir; a --dataset is "
                         "predicted as it was built: rebuild it with those options, or give --dicom-dir")
    shard = options.shard
    requested = read_submission_ids(options.sample_submission) if options.sample_submission else None
    folder = InferFolder(prepare_output(Path(out), "--out"))
    lock = folder.lock if shard.whole else folder.part_lock(shard.part_id, shard.num_parts)
    with FolderLock(lock, f"output folder {folder.root}" + ("" if shard.whole else f" (part {shard.part_id})")):
        clock = _Clock()
        if dicom_dirs:
            _build(predictor, dicom_dirs, folder.dataset, options, requested)
            dataset = folder.dataset
        opened = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
        if opened.crop not in (None, predictor.crop):
            raise InputError(f"--dataset {opened.root} was built with --crop {opened.crop}, the model reads "
                             f"--crop {predictor.crop} caches: rebuild it with --crop {predictor.crop}, or give --dicom-dir")
        clock.lap("read_s")
        summary = _predict_parts(predictor, folder, opened, options, requested, clock)
    if not shard.whole:
        return PredictionResult(folder, opened.root, summary)
    exams = pd.DataFrame(json.loads(folder.exams_json.read_text()))
    return PredictionResult(folder, opened.root, summary, pd.read_parquet(folder.predictions), exams)


def _predict_parts(predictor: Predictor, folder: InferFolder, dataset: Dataset, options: PredictOptions,
                   requested: np.ndarray | None, clock: _Clock) -> dict[str, Any]:
    """The shard's part file (and, for a whole job, the merged outputs) of an index."""
    from ich3d.progress import progress_bar

    shard = options.shard
    slices, series = dataset.slices, dataset.series
    requested_images(slices, series, requested, options.allow_missing)
    table = build_table(dataset.root, slices, part_series(dataset.predicted, shard))
    with progress_bar(options.progress, "predict", len(table.series_uids) * len(predictor.models)) as advance:
        probs, reasons = predictor.predict_table(table, options.reading(), advance)
    clock.lap("model_s")
    prior = predictor.prior
    part = predicted_rows(table, probs, slices, reasons)
    if shard.part_id == 0:
        part = pd.concat([part, other_rows(slices, series, prior)], ignore_index=True)
    operating = predictor.operating
    thresholds = (list(operating.threshold) if options.exam_threshold is None
                  else [options.exam_threshold] * len(LABELS))
    facts = provenance(predictor.runtime.device, predictor.options.workers)
    write_part(folder, part, shard, dataset.root, {"prior": prior.tolist(), "n_index_rows": len(slices),
                                                   "exam_threshold": thresholds,
                                                   "operating_points": operating.to_dict(), "provenance": facts})
    summary = merge_parts(folder, options.sample_submission, options.allow_missing) if shard.whole else {
        "part": str(folder.part(shard.part_id, shard.num_parts)), "images": len(part)}
    clock.lap("write_s")
    return summary | {"timings": clock.laps}


def _build(predictor: Predictor, dicom_dirs: list[Path], dataset: Path, options: PredictOptions,
           requested: np.ndarray | None) -> None:
    """The dataset of ``dicom_dirs`` at the members' size and crop, its requested images checked before the
    pixel pass."""
    rules = options.series_rules or SeriesRules(target_thickness=predictor.training_spacing)
    build = BuildOptions(image_size=predictor.image_size, crop=predictor.crop, workers=predictor.options.workers,
                         shard=options.shard, series_rules=rules, progress=options.progress)
    summary = build_series(dicom_dirs, dataset, options=build,  # one pass: the files and the index are logged once
                           before_pixels=lambda slices, series: requested_images(slices, series, requested,
                                                                                 options.allow_missing))
    require_usable(summary, dataset)


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
