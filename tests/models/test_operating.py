"""Operating thresholds: the threshold reaching the target sensitivity, halfway to the next exam below
it; its specificity; the default where a label has too few positives."""

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


def _halfway_in_log_odds(a: float, b: float) -> float:
    return float(1 / (1 + np.exp(-(np.log(a / (1 - a)) + np.log(b / (1 - b))) / 2)))


def test_threshold_flags_the_fewest_exams_reaching_the_target_halfway_to_the_next_exam() -> None:
    positives = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1])
    negatives = np.array([0.05, 0.12, 0.25, 0.35, 0.55])
    scores, truth = np.r_[positives, negatives], np.r_[np.ones(10), np.zeros(5)]
    threshold, sensitivity, specificity = threshold_at_sensitivity(scores, truth, 0.9)
    # 9 of 10 positives are flagged from 0.15 down to just above 0.12 (a negative): the middle of that gap
    assert threshold == pytest.approx(_halfway_in_log_odds(0.15, 0.12)) and 0.12 < threshold < 0.15
    assert sensitivity == 0.9 and specificity == pytest.approx(2 / 5)  # 0.05 and 0.12 below it
    threshold, sensitivity, _ = threshold_at_sensitivity(scores, truth, 0.95)  # needs all 10
    assert threshold == pytest.approx(_halfway_in_log_odds(0.1, 0.05)) and sensitivity == 1.0
    threshold, sensitivity, _ = threshold_at_sensitivity(scores, truth, 0.5)  # 0.5, then the positive 0.4
    assert threshold == pytest.approx(_halfway_in_log_odds(0.5, 0.4)) and sensitivity == 0.5


def test_a_new_positive_just_below_the_lowest_fitted_one_is_still_flagged() -> None:
    # five confident validation positives, the highest negative far below: a threshold on the lowest
    # positive's own score (0.992) would miss a test exam at 0.968
    scores = np.array([0.999, 0.998, 0.996, 0.994, 0.992, 0.30, 0.10, 0.02])
    truth = np.array([1, 1, 1, 1, 1, 0, 0, 0])
    threshold, sensitivity, specificity = threshold_at_sensitivity(scores, truth, 0.95)
    assert sensitivity == 1.0 and specificity == 1.0
    assert 0.30 < threshold < 0.968


def test_threshold_is_the_lowest_positive_when_nothing_lies_below_it() -> None:
    scores, truth = np.array([0.9, 0.6, 0.7]), np.array([1, 1, 0])
    assert threshold_at_sensitivity(scores, truth, 0.95)[:2] == (0.6, 1.0)
    nearly_one = np.array([1 - 1e-9, 1 - 2e-9, 0.5])  # equal after the logit's clip (1e-6): no gap to split
    assert threshold_at_sensitivity(nearly_one, np.array([1, 0, 0]), 0.95)[:3] == (1 - 1e-9, 1.0, 1.0)


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
