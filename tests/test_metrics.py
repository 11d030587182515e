"""Tests of ich3d.metrics: the RSNA weighted log loss, per-label figures, series AUC, prior baseline."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from ich3d.constants import LABEL_WEIGHTS, LABELS, LOG_LOSS_EPS
from ich3d.metrics import (
    average_precision,
    bootstrap_auc,
    evaluate,
    expected_calibration_error,
    per_label_auc,
    per_label_log_loss,
    prior_predictions,
    reliability,
    series_auc_any,
    weighted_log_loss,
    wilson_interval,
)


def _random_case(n: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = (rng.random((n, len(LABELS))) < 0.3).astype(np.float64)
    y_pred = rng.random((n, len(LABELS)))
    return y_true, y_pred


def _sklearn_long_format(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The Kaggle way: one row per (image, label), sample weight 2 on the ``any`` rows."""
    weights = np.tile(np.asarray(LABEL_WEIGHTS), y_true.shape[0])
    pred = np.clip(y_pred.ravel(), LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    return log_loss(y_true.ravel(), pred, sample_weight=weights, labels=[0, 1])


def test_weighted_log_loss_hand_computed() -> None:
    y_true = np.array([[1, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]], dtype=float)
    y_pred = np.array([[0.8, 0.1, 0.1, 0.1, 0.1, 0.6], [0.2, 0.1, 0.1, 0.1, 0.1, 0.1]])
    row0 = -(2 * math.log(0.8) + 4 * math.log(0.9) + math.log(0.6))
    row1 = -(2 * math.log(0.8) + 5 * math.log(0.9))
    assert weighted_log_loss(y_true, y_pred) == pytest.approx((row0 + row1) / (2 * 7))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_log_loss_equals_sklearn_long_format(seed: int) -> None:
    y_true, y_pred = _random_case(seed=seed)
    y_pred[0, 0], y_pred[1, 1] = 0.0, 1.0  # exercise the clipping
    assert weighted_log_loss(y_true, y_pred) == pytest.approx(_sklearn_long_format(y_true, y_pred), rel=1e-10)


def test_weighted_log_loss_ignores_unlabeled_entries() -> None:
    y_true, y_pred = _random_case()
    with_nan = y_true.copy()
    with_nan[5:10] = np.nan
    expected = weighted_log_loss(np.delete(y_true, range(5, 10), 0), np.delete(y_pred, range(5, 10), 0))
    assert weighted_log_loss(with_nan, y_pred) == pytest.approx(expected)
    assert math.isnan(weighted_log_loss(np.full((2, 6), np.nan), np.full((2, 6), 0.5)))


@pytest.mark.parametrize(
    ("y_true", "y_pred"),
    [
        (np.zeros((3, 5)), np.zeros((3, 5))),
        (np.zeros((3, 6)), np.zeros((4, 6))),
        (np.zeros((3, 6)), np.full((3, 6), np.nan)),
        (np.full((3, 6), 0.5), np.zeros((3, 6))),
    ],
)
def test_bad_inputs_raise(y_true: np.ndarray, y_pred: np.ndarray) -> None:
    with pytest.raises(ValueError):
        weighted_log_loss(y_true, y_pred)


def test_per_label_log_loss_matches_sklearn() -> None:
    y_true, y_pred = _random_case()
    losses = per_label_log_loss(y_true, y_pred)
    assert list(losses) == list(LABELS)
    for j, name in enumerate(LABELS):
        assert losses[name] == pytest.approx(log_loss(y_true[:, j], y_pred[:, j], labels=[0, 1]))
    weighted = sum(w * losses[name] for w, name in zip(LABEL_WEIGHTS, LABELS)) / sum(LABEL_WEIGHTS)
    assert weighted == pytest.approx(weighted_log_loss(y_true, y_pred))


def test_per_label_auc_single_class_is_nan() -> None:
    y_true, y_pred = _random_case()
    y_true[:, 1] = 0.0
    aucs = per_label_auc(y_true, y_pred)
    assert math.isnan(aucs["epidural"])
    assert 0.0 <= aucs["any"] <= 1.0
    perfect = per_label_auc(y_true, y_true * 0.9 + 0.05)
    assert perfect["subdural"] == pytest.approx(1.0)


def test_series_auc_any_uses_max_over_slices() -> None:
    series = np.array(["a", "a", "a", "b", "b", "c", "c"])
    y_true = np.array([0, 1, 0, 0, 0, 0, np.nan])
    # slice-level ranking is poor but the series maxima rank a above b and c
    y_pred = np.array([0.1, 0.9, 0.05, 0.8, 0.2, 0.3, 0.99])
    assert series_auc_any(y_true, y_pred, series) == pytest.approx(0.5)  # c's max 0.99 beats a's 0.9
    y_pred[6] = 0.1
    assert series_auc_any(y_true, y_pred, series) == pytest.approx(1.0)
    assert math.isnan(series_auc_any(np.zeros(3), np.ones(3), ["a", "b", "c"]))


def test_evaluate_keys_and_json() -> None:
    y_true, y_pred = _random_case()
    y_true[:, 2] = 0.0
    series = np.repeat(np.arange(10), 5).astype(str)
    result = evaluate(y_true, y_pred, series_ids=series)
    assert set(result) == {"weighted_log_loss", "log_loss", "auc", "ece", "series_auc_any", "n_images"}
    assert result["n_images"] == 50
    assert result["auc"]["intraparenchymal"] is None
    assert result["weighted_log_loss"] == pytest.approx(weighted_log_loss(y_true, y_pred))
    json.dumps(result, allow_nan=False)
    assert "series_auc_any" not in evaluate(y_true, y_pred)


def test_prior_predictions() -> None:
    prevalence = np.array([2 / 3, 1 / 3, 1 / 3, 0, 0, 1 / 3], dtype=np.float32)
    prior = prior_predictions(prevalence, 4)
    assert prior.shape == (4, 6) and prior.dtype == np.float64
    np.testing.assert_array_equal(prior[2], prevalence.astype(np.float64))
    assert prior_predictions(prevalence, 0).shape == (0, 6)
    for bad in ([0.5] * 5, [np.nan] * 6, [1.5] + [0.0] * 5):
        with pytest.raises(ValueError, match="prevalences"):
            prior_predictions(bad, 3)


def test_metrics_module_imports_no_torch() -> None:
    code = "import sys, ich3d.metrics; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ece_and_reliability() -> None:
    rng = np.random.default_rng(0)
    prob = rng.random(20000)
    calibrated = (rng.random(20000) < prob).astype(float)
    assert expected_calibration_error(calibrated, prob) < 0.02
    overconfident = np.where(prob > 0.5, 0.99, 0.01)
    assert expected_calibration_error(calibrated, overconfident) > 0.2
    mean_prob, rate, count = reliability([0, 1, np.nan, 1], [0.05, 0.95, 0.5, 0.91], bins=10)
    assert count.tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 2] and rate[9] == 1.0 and np.isnan(rate[1])
    assert np.isnan(expected_calibration_error([np.nan], [0.3]))


def test_bootstrap_auc_equals_sklearn_and_brackets_it() -> None:
    rng = np.random.default_rng(1)
    true = (rng.random(400) < 0.3).astype(float)
    score = true * 0.5 + rng.random(400)
    score[:50] = np.round(score[:50], 1)  # ties count half, as in scikit-learn
    auc, lower, upper = bootstrap_auc(true, score, n_boot=300)
    assert auc == pytest.approx(roc_auc_score(true, score))
    assert lower < auc < upper and upper - lower < 0.2
    weights = np.ones((1, 400))
    from ich3d.metrics import _weighted_auc

    assert _weighted_auc(true, score, weights)[0] == pytest.approx(roc_auc_score(true, score))
    groups = np.repeat(np.arange(40), 10)  # clusters: a wider interval than rows
    _, g_low, g_high = bootstrap_auc(true, score, groups=groups, n_boot=300)
    assert g_high - g_low >= 0.8 * (upper - lower)
    assert bootstrap_auc(true, score, n_boot=50, seed=3) == bootstrap_auc(true, score, n_boot=50, seed=3)
    assert all(np.isnan(bootstrap_auc(np.zeros(5), np.arange(5))))


def test_average_precision() -> None:
    from sklearn.metrics import average_precision_score

    true, score = np.array([0, 1, 1, 0, np.nan]), np.array([0.1, 0.9, 0.4, 0.5, 0.2])
    assert average_precision(true, score) == pytest.approx(average_precision_score(true[:4], score[:4]))
    assert np.isnan(average_precision(np.zeros(3), np.arange(3)))


def test_wilson_interval_matches_the_formula_and_brackets_the_share() -> None:
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    low, high = wilson_interval(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)  # the textbook value for 5 / 10
    for k in range(0, 21):
        low, high = wilson_interval(k, 20)
        assert 0 <= low <= k / 20 <= high <= 1 and high - low > 0.05
