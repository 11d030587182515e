"""``ich3d infer``: per-image predictions, exam results and RSNA submissions for a dataset or DICOM folders.

``--run`` takes run folders (every ``fold_<K>/model.pt`` in it is an ensemble member), fold folders
or checkpoint files; members' probabilities are calibrated and averaged (:mod:`ich3d.inference.ensemble`).
:func:`predict` loads them into a :class:`~ich3d.inference.predictor.Predictor` and runs one job
(:mod:`ich3d.inference.job`): from ``--dicom-dir`` a dataset is built in ``OUT/dataset``; every file of
the index gets a row, every study an exam row.

Large test sets shard by series (``--num-parts K --part-id I``); each part writes
``OUT/parts/part-I-of-K.parquet`` and :func:`merge` joins them. Inputs and the output folder are
checked before any model pass, every result is written atomically, and the output folder is locked
while a job writes it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ich3d.dataset.roles import SeriesRules
from ich3d.errors import UsageError
from ich3d.folders import FolderLock
from ich3d.inference.merge import merge_parts
from ich3d.inference.submission import read_submission_ids
from ich3d.layout import InferFolder
from ich3d.models.io import model_checkpoints
from ich3d.shard import Shard

if TYPE_CHECKING:  # imported where used: the predictor pulls in torch
    from ich3d.inference.job import PredictOptions
    from ich3d.inference.predictor import RuntimeOptions

__all__ = ["InferOptions", "merge", "model_checkpoints", "predict"]


@dataclass(frozen=True)
class InferOptions:
    """Settings of ``ich3d infer`` (the model's own settings, e.g. TTA, come from its checkpoint).

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
        exam_threshold: one probability for every label's exam flag and slice ranges; None: the
            models' operating thresholds (docs/design.md §4).
        allow_missing: fill requested images without a prediction with the prior instead of failing.
        shard: this job's part of the series.
        follow_links: when building from DICOM folders, follow symbolic links that lead out of them.
        engine: ``torch``, or ``onnxruntime`` with ``--run`` folders written by ``ich3d export``.
    """

    device: str | None = None
    batch_series: int = 8
    workers: int | None = None
    amp: bool = True
    resample: str = "auto"
    series_rules: SeriesRules | None = None
    calibrate: bool = True
    exam_threshold: float | None = None
    allow_missing: bool = False
    shard: Shard = field(default_factory=Shard)
    follow_links: bool = False
    engine: str = "torch"

    def __post_init__(self) -> None:
        self.runtime()
        self.job()

    def runtime(self) -> RuntimeOptions:
        """The machine settings of the :class:`~ich3d.inference.predictor.Predictor`."""
        from ich3d.inference.predictor import RuntimeOptions

        return RuntimeOptions(device=self.device, amp=self.amp, batch_series=self.batch_series, workers=self.workers,
                              engine=self.engine)

    def job(self, sample_submission: Path | None = None, progress: bool = False) -> PredictOptions:
        """The per-job settings of :meth:`~ich3d.inference.predictor.Predictor.predict_dataset`."""
        from ich3d.inference.job import PredictOptions

        return PredictOptions(resample=self.resample, calibrate=self.calibrate, series_rules=self.series_rules,
                              exam_threshold=self.exam_threshold, sample_submission=sample_submission,
                              allow_missing=self.allow_missing, shard=self.shard, progress=progress,
                              follow_links=self.follow_links)


def predict(runs: Sequence[Path], out: Path, *, dataset: Path | None = None, dicom_dirs: Sequence[Path] = (),
            sample_submission: Path | None = None, options: InferOptions = InferOptions(),
            progress: bool = True) -> dict[str, Any]:
    """Predicts every image of a dataset (or DICOM folders) with one or more trained models.

    Args:
        runs: run folders, fold folders or checkpoints (see :func:`model_checkpoints`); averaged.
        out: output folder (``submission.csv``, ``predictions.parquet``, ``exams.csv``; ``dataset/``
            when built here).
        dataset: a dataset folder from ``build-series``; or ``dicom_dirs`` to build one in ``out``.
        sample_submission: the rows (and their order) the submission must have.
        options: device, batch size, workers, mixed precision, resampling, series choice, threshold,
            ``allow_missing``, the shard.

    Returns:
        Summary counts by ``predicted_by``, ``missing``, the number of exams, output paths, timings.

    Raises:
        InputError: bad arguments or inputs, an output folder that cannot be written or is in use,
            requested images without a prediction (unless ``allow_missing``), detected before the
            model pass.
    """
    from ich3d.inference.predictor import Predictor

    if (dataset is None) == (not dicom_dirs):
        raise UsageError("give exactly one of --dataset DATASET or --dicom-dir DIR")
    if options.engine == "torch":
        model_checkpoints(runs)  # a run without a model fails before anything else
    if sample_submission:
        read_submission_ids(sample_submission)  # a bad file fails before the models load
    began = time.perf_counter()
    predictor = Predictor.from_runs(list(map(Path, runs)), options.runtime())
    load_s = round(time.perf_counter() - began, 4)
    job = options.job(sample_submission, progress)
    if dataset is not None:
        result = predictor.predict_dataset(Path(dataset), Path(out), job)
    else:
        result = predictor.predict_folder([Path(d) for d in dicom_dirs], Path(out), job)
    return result.summary | {"timings": {"load_s": load_s, **result.summary["timings"]}}


def merge(out: Path, sample_submission: Path | None = None, allow_missing: bool = False) -> dict[str, Any]:
    """Joins the parts in ``out/parts`` into ``predictions.parquet``, ``submission.csv`` and the exams.

    Raises:
        InputError: a part is missing, or a requested image has no prediction (without ``allow_missing``).
    """
    folder = InferFolder(Path(out))
    with FolderLock(folder.lock, f"output folder {folder.root}"):
        return merge_parts(folder, sample_submission, allow_missing)
