"""`ich3d demo`: synth → build-series → train → infer → score on a synthetic dataset, on the CPU."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ich3d.constants import MODEL_CHECKPOINT, RUN_METRICS_FILE


def run_demo(out: Path, n_series: int = 60, n_test_series: int = 16, config: str = "cpu_small",
             overrides: list[str] | None = None, seed: int = 0, progress: bool = True,
             synth_image_size: int = 256, report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Runs the whole pipeline on freshly generated data with a held-out test split.

    Returns:
        ``score`` (the test metrics), ``prior_score`` (the training prevalence as prediction),
        ``slice_valid`` / ``sequence_valid`` (validation weighted log loss of the slice-only and GRU
        models), ``seconds`` and ``out``.
    """
    from ich3d.build import build_series
    from ich3d.checkpoint import load_checkpoint
    from ich3d.config import load_config
    from ich3d.infer import predict
    from ich3d.submission import score_submission, series_lookup, write_submission
    from ich3d.progress import progress_bar
    from ich3d.synth import SynthConfig, count_files, make_synthetic_dataset
    from ich3d.train import fit

    began = time.perf_counter()
    out = Path(out)
    data, dataset, run, pred = out / "rsna", out / "dataset", out / "run", out / "predictions"
    resolved = load_config(config, overrides)
    synth_config = SynthConfig(n_train_series=n_series, n_test_series=n_test_series,
                               image_size=synth_image_size, seed=seed)
    with progress_bar(progress, "synth", count_files(synth_config)) as advance:
        make_synthetic_dataset(data, synth_config, progress=advance, workers=os.cpu_count() or 1)
    build_series([data / "stage_2_train"], dataset, labels_csv=data / "stage_2_train.csv",
                 image_size=resolved.data.image_size, progress=progress)
    fit(dataset, run, resolved, fold=0, resume=(run / "last.pt").is_file(), report=report)
    predict([run], pred, dicom_dirs=[data / "stage_2_test"],
            sample_submission=data / "stage_2_sample_submission.csv", progress=progress)
    labels = data / "stage_2_test_labels.csv"
    score = score_submission(pred / "submission.csv", labels, series_lookup(pred / "submission.csv", None))
    prior = np.asarray(load_checkpoint(run / MODEL_CHECKPOINT)["prevalence"])
    prior_file = pred / "prior_submission.csv"
    ids = pd.read_csv(data / "stage_2_sample_submission.csv")["ID"].str.rsplit("_", n=1).str[0].unique()
    write_submission(prior_file, pd.DataFrame(np.tile(prior, (len(ids), 1)), index=ids),
                     data / "stage_2_sample_submission.csv")
    prior_score = score_submission(prior_file, labels)["weighted_log_loss"]
    result = {"score": score, "prior_score": prior_score, **_best_validation(run), "out": str(out),
              "seconds": time.perf_counter() - began}
    (out / "demo.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def _best_validation(run: Path) -> dict[str, float | None]:
    """Validation weighted log loss of the prior and the best of the slice and sequence stages."""
    prior = json.loads((run / "run.json").read_text())["prior_valid"]["weighted_log_loss"]
    best: dict[str, float] = {}
    for line in (run / RUN_METRICS_FILE).read_text().splitlines():
        record = json.loads(line)
        loss = record["valid"]["weighted_log_loss"]
        best[record["stage"]] = min(loss, best.get(record["stage"], float("inf")))
    return {"prior_valid": prior, "slice_valid": best.get("slice"), "sequence_valid": best.get("sequence")}
