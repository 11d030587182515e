"""Calibration: Platt scaling per label fixes an overconfident predictor and leaves a calibrated one alone."""

from __future__ import annotations

import numpy as np

from ich3d.metrics import expected_calibration_error, weighted_log_loss
from ich3d.models.calibration import apply_calibration, fit_calibration, identity


def _case(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true probabilities (N, 6); the any column is their max."""
    rng = np.random.default_rng(seed)
    truth = rng.beta(0.5, 3.0, size=(n, 6))
    labels = (rng.random((n, 6)) < truth).astype(float)
    return truth, labels


def _overconfident(p: np.ndarray, power: float = 4.0) -> np.ndarray:
    logit = np.log(p) - np.log1p(-p)
    return 1 / (1 + np.exp(-power * logit))


def test_calibration_lowers_the_loss_of_an_overconfident_predictor() -> None:
    truth, labels = _case()
    confident = _overconfident(truth)
    calibration = fit_calibration(confident, labels)
    assert all(calibration["fitted"]) and all(a < 0.5 for a in calibration["a"])  # temperature about 4
    test_truth, test_labels = _case(seed=1)
    before = _overconfident(test_truth)
    after = apply_calibration(before, calibration)
    assert weighted_log_loss(test_labels, after) < 0.85 * weighted_log_loss(test_labels, before)
    assert expected_calibration_error(test_labels[:, 0], after[:, 0]) < 0.5 * expected_calibration_error(
        test_labels[:, 0], before[:, 0])


def test_a_calibrated_predictor_stays_as_it_is_and_rare_labels_keep_the_identity() -> None:
    truth, labels = _case()
    calibration = fit_calibration(truth, labels)
    np.testing.assert_allclose(calibration["a"], 1.0, atol=0.15)
    np.testing.assert_allclose(calibration["b"], 0.0, atol=0.15)
    labels[:, 1] = 0.0
    labels[:3, 1] = 1.0  # three positives: too few to fit
    rare = fit_calibration(truth, labels)
    assert not rare["fitted"][1] and (rare["a"][1], rare["b"][1]) == (1.0, 0.0)
    np.testing.assert_array_equal(apply_calibration(truth, identity()), truth.astype(truth.dtype))
    labels[:100, 2] = np.nan  # unlabeled rows are left out
    assert fit_calibration(truth, labels)["fitted"][2]


def test_a_calibration_that_does_not_pay_off_out_of_sample_is_not_applied() -> None:
    """Half the series bleed more often than predicted, half less: a fit on either half hurts the other."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(8), 50)
    probs = np.clip(0.7 + rng.normal(0, 0.02, (400, 6)), 0, 1)
    rate = np.where(groups % 2 == 0, 0.9, 0.5)
    labels = (rng.random((400, 6)) < rate[:, None]).astype(float)
    by_series = fit_calibration(probs, labels, groups)
    assert not any(by_series["fitted"]) and by_series["a"] == [1.0] * 6
    mixed = np.roll(groups, 25)  # halves that mix both kinds of series: there the fit pays off
    assert any(fit_calibration(probs, labels, mixed)["fitted"])


def test_calibration_never_sharpens_and_few_series_move_it_part_of_the_way() -> None:
    """An underconfident predictor keeps a = 1 (only its base rate moves); a base-rate shift seen in
    four series moves b less than the same shift seen in four hundred."""
    truth, labels = _case()
    underconfident = _overconfident(truth, power=0.5)
    calibration = fit_calibration(underconfident, labels)
    assert calibration["a"] == [1.0] * 6
    rng = np.random.default_rng(0)
    probs = np.full((4000, 6), 0.2)
    shifted = (rng.random((4000, 6)) < 0.35).astype(float)  # bleeds more often than predicted
    many = fit_calibration(probs, shifted, np.repeat(np.arange(400), 10))
    few = fit_calibration(probs, shifted, np.repeat(np.arange(4), 1000))
    assert all(many["fitted"]) and all(few["fitted"])
    assert all(0 < f < m for f, m in zip(few["b"], many["b"]))
