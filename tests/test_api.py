"""The front door: ``import ich3d`` is cheap, and its functions run the whole pipeline without the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
from conftest import TINY_TRAINING

import ich3d


def test_import_is_cheap_and_lists_the_api() -> None:
    code = "import sys, ich3d; assert 'torch' not in sys.modules and 'pandas' not in sys.modules; print(dir(ich3d))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    for name in ("build_series", "load_index", "fit", "predict", "merge", "score_submission", "load_config"):
        assert name in done.stdout


def test_the_pipeline_through_the_front_door(synthetic_rsna: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    summary = ich3d.build_series([synthetic_rsna / "stage_2_train"], dataset, labels_csv=synthetic_rsna / "stage_2_train.csv",
                                 options=ich3d.BuildOptions(image_size=32, workers=1, progress=False))
    slices, series = ich3d.load_index(dataset)
    assert summary["n_files"] == len(slices) and summary["n_series"] == len(series)
    config = ich3d.load_config("cpu_small", TINY_TRAINING)
    result = ich3d.fit(dataset, tmp_path / "run", config)
    assert result["folds"] == [0] and result["metrics"]["weighted_log_loss"] > 0
    sample = synthetic_rsna / "stage_2_sample_submission.csv"
    out = tmp_path / "pred"
    counts = ich3d.predict([tmp_path / "run"], out, dicom_dirs=[synthetic_rsna / "stage_2_test"],
                           sample_submission=sample, progress=False)
    assert counts["images"] == len(pd.read_csv(sample)) // 6
    score = ich3d.score_submission(out / "submission.csv", synthetic_rsna / "stage_2_test_labels.csv")
    assert 0 < score["weighted_log_loss"] < 1
    assert ich3d.merge(out, sample)["images"] == counts["images"]  # the parts merge again to the same rows
