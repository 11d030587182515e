"""Operating thresholds: the highest threshold reaching the target sensitivity, its specificity, and the
default where a label has too few positives."""

from __future__ import annotations

import numpy as np
import pytest

from ich3d.models.operating import (
    DEFAULT_THRESHOLD,
    DEFAULT_TARGETS,
    OperatingPoints,
    default_points,
    fit_operating_points,
    threshold_at_sensitivity,
)


def test_threshold_is_the_highest_reaching_the_target() -> None:
    positives = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1])
    negatives = np.array([0.05, 0.12, 0.25, 0.35, 0.55])
    scores, truth = np.r_[positives, negatives], np.r_[np.ones(10), np.zeros(5)]
    threshold, sensitivity, specificity = threshold_at_sensitivity(scores, truth, 0.9)
    assert threshold == 0.15 and sensitivity == 0.9  # 9 of 10 positives at p >= 0.15
    assert specificity == pytest.approx(2 / 5)  # 0.05 and 0.12 below it
    assert threshold_at_sensitivity(scores, truth, 0.95)[0] == 0.1  # 0.95 of 10 needs all 10
    assert threshold_at_sensitivity(scores, truth, 0.5)[:2] == (0.5, 0.5)


def test_fit_per_label_with_unlabeled_rows_and_rare_labels() -> None:
    rng = np.random.default_rng(0)
    truth = (rng.random((40, 6)) < 0.4).astype(float)
    truth[:, 1] = 0
    truth[:2, 1] = 1  # two positives: too few for a threshold
    truth[5:10, 0] = np.nan
    scores = np.clip(truth * 0.5 + rng.random((40, 6)) * 0.5, 0, 1)
    points = fit_operating_points(scores, truth, "40 test exams")
    assert points.fitted == (True, False, True, True, True, True)
    assert points.threshold[1] == DEFAULT_THRESHOLD and points.specificity[1] is None
    labeled = ~np.isnan(truth[:, 0])
    flagged = scores[labeled, 0] >= points.threshold[0]
    assert flagged[truth[labeled, 0] == 1].mean() >= DEFAULT_TARGETS[0] == 0.95
    assert points.n_positive[0] + points.n_negative[0] == labeled.sum()
    assert OperatingPoints.from_dict(points.to_dict()) == points
    assert points.by_label()["any"]["target"] == 0.95


def test_defaults_and_validation() -> None:
    assert default_points().threshold == (0.5,) * 6 and not any(default_points().fitted)
    with pytest.raises(ValueError, match="6 probabilities"):
        OperatingPoints(threshold=(0.5,) * 5)
