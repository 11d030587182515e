"""training/folds.py: a fold trained through its stages, calibrated once, its operating thresholds fitted on
its held-out series as exams are scored and stored in model.pt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_stages import context

from ich3d.inference.exams import smoothed_maximum
from ich3d.inference.predictor import Predictor
from ich3d.models.calibration import apply_calibration
from ich3d.models.io import load_trained
from ich3d.models.operating import MIN_POSITIVES
from ich3d.training.folds import CALIBRATION, calibrate, train_folds
from ich3d.training.stages import stage_runtime


@pytest.fixture(scope="module")
def fold(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    ctx = context(tiny_dataset, tmp_path_factory.mktemp("folds"))
    return ctx, train_folds([ctx], [None])


def test_stages_then_calibration_are_recorded(fold: tuple) -> None:
    ctx, report = fold
    assert ctx.completed == ["slice", "sequence", CALIBRATION]
    trained = load_trained(ctx.folder.model)
    assert trained.stage == "sequence" and trained.calibration_report == report
    assert report["fitted_on"] == "validation fold 0" and set(report["operating_points"]) >= {"any", "subdural"}
    assert [report["operating_points"][name]["threshold"] for name in report["operating_points"]] == \
        list(trained.operating.threshold)


def test_a_calibrated_fold_is_not_fitted_again(fold: tuple) -> None:
    ctx, report = fold
    before = ctx.folder.model.stat().st_mtime_ns
    assert calibrate([ctx]) == report and ctx.folder.model.stat().st_mtime_ns == before


def test_thresholds_reach_their_target_on_the_held_out_series(fold: tuple) -> None:
    ctx, _ = fold
    trained = load_trained(ctx.folder.model)
    valid = ctx.data.valid
    probs = Predictor([trained], ctx.runtime, stage_runtime(ctx)).predict_member(0, valid)
    scores, truth = [], []
    for s in range(len(valid.series_uids)):
        rows = slice(valid.offsets[s], valid.offsets[s + 1])
        scores.append(smoothed_maximum(apply_calibration(probs[rows], trained.calibration)))
        truth.append(np.fmax.reduce(valid.labels[rows], axis=0))
    scores, truth = np.stack(scores), np.stack(truth)
    operating = trained.operating
    for j, fitted in enumerate(operating.fitted):
        positives = truth[:, j] == 1
        assert operating.n_positive[j] == positives.sum()
        if positives.sum() < MIN_POSITIVES:
            assert not fitted
            continue
        assert fitted
        sensitivity = (scores[positives, j] >= operating.threshold[j]).mean()
        assert sensitivity >= operating.target[j] and sensitivity == pytest.approx(operating.sensitivity[j])
