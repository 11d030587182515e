"""`ich3d demo`: synth → build-series → train → infer → score on a synthetic dataset, on the CPU."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ich3d.atomic import write_json_atomic
from ich3d.layout import InferFolder, RunFolder


def run_demo(out: Path, n_series: int = 60, n_test_series: int = 16, config: str = "cpu_small",
             overrides: list[str] | None = None, seed: int = 0, progress: bool = True,
             synth_image_size: int = 256, report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Runs the whole pipeline on freshly generated data with a held-out test split.

    The test split is predicted from its raw DICOM folder (corrupt and junk files included) in the
    sample submission's order, by the final CNN + GRU model and, for comparison, by the slice-only
    model of the first stage; both are scored against the prevalence prior.

    Returns:
        ``score`` (test metrics of the final model), ``slice_score`` and ``prior_score`` (test weighted
        log loss of the slice-only model and of the training prevalence), ``prior_valid``,
        ``slice_valid``, ``sequence_valid`` (best validation weighted log loss), ``seconds``, ``out``,
        ``report`` (the HTML page of the test predictions, ``OUT/report.html``).
    """
    from ich3d.config import load_config
    from ich3d.dataset.build import build_series
    from ich3d.inference.run import predict
    from ich3d.report import write_report
    from ich3d.training.fit import fit

    began = time.perf_counter()
    out = Path(out)
    data, dataset = out / "rsna", out / "dataset"
    run, pred, slice_only = RunFolder(out / "run"), InferFolder(out / "predictions"), InferFolder(out / "predictions_slice_only")
    resolved = load_config(config, overrides)
    _synthesize(data, n_series, n_test_series, synth_image_size, seed, progress)
    build_series([data / "stage_2_train"], dataset, labels_csv=data / "stage_2_train.csv",
                 image_size=resolved.data.image_size, progress=progress)
    fit(dataset, run.root, resolved, fold=0, resume=run.info.is_file(), report=report, progress=progress)
    sample, labels = data / "stage_2_sample_submission.csv", data / "stage_2_test_labels.csv"
    predict([run.root], pred.root, dicom_dirs=[data / "stage_2_test"], sample_submission=sample, progress=progress)
    predict([run.fold(0).encoder], slice_only.root, dataset=pred.dataset, sample_submission=sample, progress=progress)
    result = {
        "score": _score(pred.submission, labels),
        "slice_score": _score(slice_only.submission, labels)["weighted_log_loss"],
        "prior_score": _prior_score(run, sample, labels, pred.root / "prior_submission.csv"),
        **_best_validation(run), "out": str(out),
    }
    result["report"] = write_report(pred.root, out / "report.html", labels=labels, runs=[run.root])["report"]
    result["seconds"] = time.perf_counter() - began
    write_json_atomic(out / "demo.json", result)
    return result


def _synthesize(data: Path, n_series: int, n_test_series: int, image_size: int, seed: int, progress: bool) -> None:
    """Writes the synthetic data, or reuses what an earlier demo with the same settings wrote."""
    from ich3d.errors import InputError
    from ich3d.progress import progress_bar
    from ich3d.synth.generate import count_files, make_synthetic_dataset
    from ich3d.synth.plan import SynthConfig

    config = SynthConfig(n_train_series=n_series, n_test_series=n_test_series, image_size=image_size, seed=seed)
    if (data / "synth.json").is_file():
        if json.loads((data / "synth.json").read_text())["config"] == json.loads(json.dumps(asdict(config))):
            return
        raise InputError(f"{data} holds synthetic data made with other settings: use another --out")
    with progress_bar(progress, "synth", count_files(config)) as advance:
        make_synthetic_dataset(data, config, progress=advance, workers=os.cpu_count() or 1)


def _score(submission: Path, labels: Path) -> dict[str, Any]:
    from ich3d.inference.submission import score_submission, series_lookup

    return score_submission(submission, labels, series_lookup(submission, None))


def _prior_score(run: RunFolder, sample: Path, labels: Path, path: Path) -> float:
    """Test weighted log loss of the training prevalence used as every image's prediction."""
    from ich3d.checkpoint import load_checkpoint
    from ich3d.inference.submission import read_submission_ids, write_submission
    from ich3d.metrics import prior_predictions

    prior = load_checkpoint(run.fold(0).model)["prevalence"]
    ids = read_submission_ids(sample)
    write_submission(path, pd.DataFrame(prior_predictions(prior, len(ids)), index=ids), sample)
    return _score(path, labels)["weighted_log_loss"]


def _best_validation(run: RunFolder) -> dict[str, float | None]:
    """Validation weighted log loss of the prior and the best of the slice and sequence stages."""
    prior = json.loads(run.info.read_text())["per_fold"]["0"]["prior_valid"]["weighted_log_loss"]
    best: dict[str, float] = {}
    for line in run.fold(0).metrics.read_text().splitlines():
        record = json.loads(line)
        loss = record["valid"]["weighted_log_loss"]
        best[record["stage"]] = min(loss, best.get(record["stage"], float("inf")))
    return {"prior_valid": prior, "slice_valid": best.get("slice"), "sequence_valid": best.get("sequence")}
