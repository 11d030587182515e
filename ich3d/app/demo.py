"""`ich3d demo`: synth → build-series → train → infer → score on a synthetic dataset, on the CPU."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ich3d.atomic import write_json_atomic
from ich3d.constants import LABELS
from ich3d.layout import DemoFolder, RunFolder, SynthFolder
from ich3d.spreadsheet import read_table


@dataclass(frozen=True)
class DemoOptions:
    """The demo's data and config.

    Attributes:
        n_series, n_test_series: synthetic training and test series.
        config: the packaged config (or YAML path) trained; ``overrides`` ``key=value`` on top.
        seed: the seed of the synthetic data and of the clinical export.
        synth_image_size: side of the synthetic slices (pixels).
        n_exams: studies of the PACS-style export read as a user's own exams.
    """

    n_series: int = 60
    n_test_series: int = 16
    config: str = "cpu_small"
    overrides: tuple[str, ...] = ()
    seed: int = 0
    synth_image_size: int = 256
    n_exams: int = 4


def run_demo(out: Path, options: DemoOptions = DemoOptions(), progress: bool = True,
             report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Runs the whole pipeline on freshly generated data with a held-out test split, then on a
    PACS-style export of a few exams.

    The test split is predicted from its raw DICOM folder (corrupt and junk files included) in the
    sample submission's order by the final model (calibrated, and raw for comparison) and by the
    slice-only model(s) of the first stage; all are scored against the prevalence prior. The clinical
    export (``n_exams`` studies with topogram, thin, bone, contrast and dose-report series) is read as
    a user's own exams are: one row per exam, scored against its CQ500-style reads.

    Returns:
        ``score`` (test metrics of the final model), ``raw_score``, ``slice_score`` and
        ``prior_score`` (test weighted log loss), ``prior_valid``, ``slice_valid``,
        ``sequence_valid``, ``calibrated_valid`` (validation weighted log loss), ``exams`` (the
        clinical export's exam rows), ``exam_score``, ``seconds``, ``out``, ``report`` (the HTML page
        of the test predictions, ``OUT/report.html``).
    """
    from ich3d.config import load_config
    from ich3d.dataset.build import BuildOptions, build_series
    from ich3d.inference.run import InferOptions, predict
    from ich3d.app.report import write_report
    from ich3d.training.fit import TrainOptions, fit

    began = time.perf_counter()
    folder = DemoFolder(Path(out))
    data, dataset, run, pred = folder.data, folder.dataset, folder.run, folder.predictions
    raw, slice_only = folder.uncalibrated, folder.slice_only
    resolved = load_config(options.config, list(options.overrides))
    _synthesize(data, options, progress)
    build_series([data.split("train")], dataset, labels_csv=data.train_labels,
                 options=BuildOptions(image_size=resolved.data.image_size, crop=resolved.data.crop,
                                      progress=progress))
    trained = fit(dataset, run.root, resolved, options=TrainOptions(resume=run.info.is_file(), progress=progress),
                  report=report)
    sample, labels = data.sample_submission, data.test_labels
    predict([run.root], pred.root, dicom_dirs=[data.split("test")], sample_submission=sample, progress=progress)
    predict([run.root], raw.root, dataset=pred.dataset, sample_submission=sample,
            options=InferOptions(calibrate=False), progress=progress)
    encoders = [run.fold(k).encoder for k in run.folds_present()]
    predict(encoders, slice_only.root, dataset=pred.dataset, sample_submission=sample, progress=progress)
    result = {
        "score": _score(pred.submission, labels), "raw_score": _score(raw.submission, labels)["weighted_log_loss"],
        "slice_score": _score(slice_only.submission, labels)["weighted_log_loss"],
        "prior_score": _prior_score(run, sample, labels, folder.prior_submission),
        **_best_validation(run), "calibrated_valid": trained["calibration"]["after"]["weighted_log_loss"],
        "tta_valid": trained["calibration"]["before"]["weighted_log_loss"],
        "calibrated_labels": [name for name, fitted in zip(LABELS, trained["calibration"]["fitted"]) if fitted],
        "calibration_fitted_on": trained["calibration"]["fitted_on"], "out": str(folder.root),
    }
    result |= _clinical_exams(folder, options, progress)
    result["report"] = write_report(pred.root, folder.report, labels=labels, runs=[run.root])["report"]
    result["seconds"] = time.perf_counter() - began
    write_json_atomic(folder.summary, result)
    return result


def _clinical_exams(folder: DemoFolder, options: DemoOptions, progress: bool) -> dict[str, Any]:
    """The exam table of a small PACS-style export read by the run, and its exam-level score."""
    from ich3d.inference.exam_score import score_exams
    from ich3d.inference.run import predict
    from ich3d.synth.clinical import make_clinical_export
    from ich3d.synth.clinical_plan import ClinicalConfig

    export, exams = folder.clinical, folder.clinical_predictions
    config = ClinicalConfig(n_studies=options.n_exams, image_size=256, seed=options.seed)
    if not export.summary.is_file():
        make_clinical_export(export.root, config, workers=os.cpu_count() or 1)
    summary = predict([folder.run.root], exams.root, dicom_dirs=[export.export], progress=progress)
    table = read_table(exams.exams_csv)
    score = score_exams(exams.exams_csv, export.reads, export.reads_map, n_boot=200)
    return {"exams": json.loads(table.to_json(orient="records")), "exam_score": score,
            "exams_csv": str(exams.exams_csv), "exam_threshold": summary.get("exam_threshold")}


def _synthesize(data: SynthFolder, options: DemoOptions, progress: bool) -> None:
    """Writes the synthetic data, or reuses what an earlier demo with the same settings wrote."""
    from ich3d.errors import InputError
    from ich3d.progress import progress_bar
    from ich3d.synth.generate import count_files, make_synthetic_dataset
    from ich3d.synth.plan import SynthConfig

    config = SynthConfig(n_train_series=options.n_series, n_test_series=options.n_test_series,
                         image_size=options.synth_image_size, seed=options.seed)
    if data.summary.is_file():
        if json.loads(data.summary.read_text())["config"] == json.loads(json.dumps(asdict(config))):
            return
        raise InputError(f"{data.root} holds synthetic data made with other settings: use another --out")
    with progress_bar(progress, "synth", count_files(config)) as advance:
        make_synthetic_dataset(data.root, config, progress=advance, workers=os.cpu_count() or 1)


def _score(submission: Path, labels: Path) -> dict[str, Any]:
    from ich3d.inference.submission import score_submission, series_lookup

    return score_submission(submission, labels, series_lookup(submission, None))


def _prior_score(run: RunFolder, sample: Path, labels: Path, path: Path) -> float:
    """Test weighted log loss of the training prevalence used as every image's prediction."""
    from ich3d.inference.ensemble import prior as ensemble_prior
    from ich3d.inference.submission import read_submission_ids, write_submission
    from ich3d.metrics import prior_predictions
    from ich3d.models.io import load_trained

    prior = ensemble_prior([load_trained(run.fold(k).model) for k in run.folds_present()])
    ids = read_submission_ids(sample)
    write_submission(path, pd.DataFrame(prior_predictions(prior, len(ids)), index=ids), sample)
    return _score(path, labels)["weighted_log_loss"]


def _best_validation(run: RunFolder) -> dict[str, float | None]:
    """Validation weighted log loss (the first fold's) of the prior and the best of the slice and
    sequence stages."""
    fold = run.folds_present()[0]
    prior = json.loads(run.info.read_text())["per_fold"][str(fold)]["prior_valid"]["weighted_log_loss"]
    best: dict[str, float] = {}
    for line in run.fold(fold).metrics.read_text().splitlines():
        record = json.loads(line)
        loss = record["valid"]["weighted_log_loss"]
        best[record["stage"]] = min(loss, best.get(record["stage"], float("inf")))
    return {"prior_valid": prior, "slice_valid": best.get("slice"), "sequence_valid": best.get("sequence")}
