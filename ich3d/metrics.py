"""RSNA 2019 weighted multi-label log loss, per-label log loss and ROC-AUC, series-level AUC (no torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from ich3d.constants import LABEL_WEIGHTS, LABELS, LOG_LOSS_EPS


def _as_label_arrays(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert a (labels, predictions) pair to float64 arrays of shape (N, 6).

    Raises:
        ValueError: wrong shapes, NaN predictions, or labels other than 0, 1 and NaN.
    """
    true = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    if true.ndim != 2 or true.shape[1] != len(LABELS) or true.shape != pred.shape:
        raise ValueError(
            f"expected y_true and y_pred of shape (N, {len(LABELS)}), got {true.shape} and {pred.shape}"
        )
    if np.isnan(pred).any():
        raise ValueError("y_pred contains NaN")
    labeled = true[~np.isnan(true)]
    if not np.isin(labeled, (0.0, 1.0)).all():
        raise ValueError("y_true must contain only 0, 1 or NaN (unlabeled)")
    return true, pred


def _bce(true: np.ndarray, pred: np.ndarray, eps: float) -> np.ndarray:
    """Elementwise binary cross-entropy of clipped probabilities; NaN where ``true`` is NaN."""
    p = np.clip(pred, eps, 1.0 - eps)
    return -(true * np.log(p) + (1.0 - true) * np.log1p(-p))


def weighted_log_loss(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    weights: Sequence[float] = LABEL_WEIGHTS,
    eps: float = LOG_LOSS_EPS,
) -> float:
    """RSNA 2019 weighted multi-label log loss (docs/design.md §5).

    L = -1 / (N * sum(w)) * sum_i sum_j w_j [y_ij log p_ij + (1 - y_ij) log(1 - p_ij)], p clipped to
    [eps, 1 - eps]. Equal to ``sklearn.metrics.log_loss`` over the long ``ID_<img>_<label>`` rows with
    sample weight ``w_j``. Unlabeled entries (NaN in ``y_true``) are left out of both sums.

    Args:
        y_true: (N, 6) labels in {0, 1}, NaN = unlabeled, columns in ``LABELS`` order.
        y_pred: (N, 6) probabilities in [0, 1].
        weights: (6,) label weights (``any`` = 2).
        eps: clipping of the probabilities.

    Returns:
        The loss in nats; NaN when nothing is labeled.

    Raises:
        ValueError: wrong shapes, NaN predictions or labels other than 0/1/NaN.
    """
    true, pred = _as_label_arrays(y_true, y_pred)
    labeled = ~np.isnan(true)
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64), true.shape) * labeled
    if w.sum() == 0:
        return math.nan
    losses = np.where(labeled, _bce(np.nan_to_num(true), pred, eps), 0.0)
    return float((losses * w).sum() / w.sum())


def per_label_log_loss(
    y_true: np.ndarray, y_pred: np.ndarray, eps: float = LOG_LOSS_EPS
) -> dict[str, float]:
    """Mean binary log loss of each label over its labeled rows (NaN when none).

    Args:
        y_true: (N, 6) labels in {0, 1}, NaN = unlabeled.
        y_pred: (N, 6) probabilities.
        eps: clipping of the probabilities.

    Returns:
        ``{label: loss}`` in ``LABELS`` order.
    """
    true, pred = _as_label_arrays(y_true, y_pred)
    result = {}
    for j, name in enumerate(LABELS):
        labeled = ~np.isnan(true[:, j])
        losses = _bce(true[labeled, j], pred[labeled, j], eps)
        result[name] = float(losses.mean()) if losses.size else math.nan
    return result


def _auc(true: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC over the labeled entries; NaN when fewer than two classes are present."""
    labeled = ~np.isnan(true)
    true, score = true[labeled], score[labeled]
    if np.unique(true).size < 2:
        return math.nan
    return float(roc_auc_score(true, score))


def per_label_auc(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """ROC-AUC of each label over its labeled rows.

    Args:
        y_true: (N, 6) labels in {0, 1}, NaN = unlabeled.
        y_pred: (N, 6) probabilities (or any monotone score).

    Returns:
        ``{label: auc}`` in ``LABELS`` order; NaN for a label with a single class (never raises).
    """
    true, pred = _as_label_arrays(y_true, y_pred)
    return {name: _auc(true[:, j], pred[:, j]) for j, name in enumerate(LABELS)}


def series_auc_any(
    y_true_any: np.ndarray, y_pred_any: np.ndarray, series_ids: Sequence[str] | np.ndarray
) -> float:
    """Series-level ROC-AUC of ``any``: a series' label and score are the max over its slices.

    Args:
        y_true_any: (N,) slice labels of ``any`` in {0, 1}, NaN = unlabeled (ignored in the max).
        y_pred_any: (N,) slice probabilities of ``any``.
        series_ids: (N,) series identifier of each slice.

    Returns:
        The AUC over series with at least one labeled slice; NaN when only one class is present.
    """
    true = np.asarray(y_true_any, dtype=np.float64).ravel()
    pred = np.asarray(y_pred_any, dtype=np.float64).ravel()
    ids = np.asarray(series_ids)
    if not true.shape == pred.shape == ids.shape:
        raise ValueError(f"shapes differ: y_true {true.shape}, y_pred {pred.shape}, series_ids {ids.shape}")
    inverse, _ = pd.factorize(ids, use_na_sentinel=False)  # a hash pass: np.unique would sort 750,000 strings
    n_series = int(inverse.max()) + 1 if inverse.size else 0
    series_true = np.full(n_series, np.nan)
    series_pred = np.full(n_series, np.nan)
    np.fmax.at(series_true, inverse, true)  # fmax ignores NaN: unlabeled slices do not count
    np.fmax.at(series_pred, inverse, pred)
    return _auc(series_true, series_pred)


def reliability(y_true: np.ndarray, y_prob: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reliability diagram of one label: equal-width probability bins.

    Args:
        y_true: (N,) labels in {0, 1}, NaN = unlabeled (left out).
        y_prob: (N,) probabilities.
        bins: number of equal-width bins over [0, 1].

    Returns:
        (mean predicted probability, observed positive rate, count) per bin, each (bins,); the first
        two are NaN for empty bins.
    """
    true = np.asarray(y_true, dtype=np.float64).ravel()
    prob = np.asarray(y_prob, dtype=np.float64).ravel()
    labeled = ~np.isnan(true)
    true, prob = true[labeled], np.clip(prob[labeled], 0.0, 1.0)
    which = np.minimum((prob * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(which, prob, minlength=bins) / count
        positive_rate = np.bincount(which, true, minlength=bins) / count
    return mean_prob, positive_rate, count


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, bins: int = 10) -> float:
    """ECE of one label: the count-weighted mean |observed rate - mean probability| over the bins of
    :func:`reliability`; NaN when nothing is labeled."""
    mean_prob, positive_rate, count = reliability(y_true, y_prob, bins)
    if count.sum() == 0:
        return math.nan
    filled = count > 0
    return float((np.abs(positive_rate[filled] - mean_prob[filled]) * count[filled]).sum() / count.sum())


def per_label_ece(y_true: np.ndarray, y_pred: np.ndarray, bins: int = 10) -> dict[str, float]:
    """:func:`expected_calibration_error` of each label, ``{label: ece}`` in ``LABELS`` order."""
    true, pred = _as_label_arrays(y_true, y_pred)
    return {name: expected_calibration_error(true[:, j], pred[:, j], bins) for j, name in enumerate(LABELS)}


def _weighted_auc(true: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC-AUC of ``(B, N)`` sample weights over one labeled set (ties count half): (B,) values.

    Scores are sorted once; each row of weights is one bootstrap resample (Mann-Whitney with weights).
    """
    order = np.argsort(score, kind="stable")
    true, score, weights = true[order], score[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, score[1:] != score[:-1]])  # groups of tied scores
    negative, positive = weights * (true == 0), weights * (true == 1)
    neg_group, pos_group = np.add.reduceat(negative, starts, axis=1), np.add.reduceat(positive, starts, axis=1)
    below = np.cumsum(neg_group, axis=1) - neg_group  # negatives strictly below each tie group
    pairs = (pos_group * (below + 0.5 * neg_group)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pairs / (positive.sum(axis=1) * negative.sum(axis=1))


def bootstrap_auc(y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray | None = None, n_boot: int = 1000,
                  level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """ROC-AUC with a percentile bootstrap confidence interval.

    Args:
        y_true: (N,) labels in {0, 1}, NaN = unlabeled (left out).
        y_score: (N,) scores.
        groups: (N,) cluster of each row (e.g. its series or study): clusters are resampled whole, as
            slices of a series are not independent; None resamples rows.
        n_boot: bootstrap resamples.
        level: coverage of the interval.
        seed: the resampling seed (the same seed gives the same interval).

    Returns:
        (AUC, lower, upper); NaN where only one class is present.
    """
    true = np.asarray(y_true, dtype=np.float64).ravel()
    score = np.asarray(y_score, dtype=np.float64).ravel()
    labeled = ~np.isnan(true)
    true, score = true[labeled], score[labeled]
    auc = _auc(true, score)
    if math.isnan(auc):
        return math.nan, math.nan, math.nan
    cluster = (np.unique(np.asarray(groups)[labeled], return_inverse=True)[1] if groups is not None
               else np.arange(len(true)))
    n_clusters = int(cluster.max()) + 1
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, n_boot, 64):  # (64, N) weights at a time keeps memory flat
        counts = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=min(64, n_boot - start))
        values.append(_weighted_auc(true, score, counts[:, cluster].astype(np.float64)))
    boot = np.concatenate(values)
    boot = boot[np.isfinite(boot)]
    tail = (1 - level) / 2 * 100
    lower, upper = np.percentile(boot, [tail, 100 - tail]) if boot.size else (math.nan, math.nan)
    return auc, float(lower), float(upper)


#: Fewest positives and fewest negatives (exams; series for image-level scores) for which an AUC interval is
#: stated. Below it a bootstrap interval collapses onto the point estimate (8 exams with AUC 1.000 gave
#: "1.000-1.000": no resample can hold a misranked pair that the sample lacks), so none is given and the
#: output says why.
MIN_PER_CLASS_FOR_AUC_CI = 10


def auc_interval_allowed(n_positive: int, n_negative: int) -> bool:
    """Whether an AUC interval is stated for these class counts (:data:`MIN_PER_CLASS_FOR_AUC_CI`)."""
    return min(n_positive, n_negative) >= MIN_PER_CLASS_FOR_AUC_CI


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (e.g. sensitivity = TP / (TP + FN)).

    Unlike the normal-approximation interval it never collapses to a point at 0 or 1 and stays inside
    [0, 1]: 4 of 4 gives about (0.51, 1.00), not (1.00, 1.00).

    Args:
        successes: the count of successes, 0 <= successes <= n.
        n: the number of trials.
        level: coverage of the interval.

    Returns:
        (lower, upper); (NaN, NaN) when ``n`` is 0.
    """
    from statistics import NormalDist

    if n <= 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + level / 2)
    share = successes / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    lower, upper = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if successes == 0 else lower), (1.0 if successes == n else upper)  # exact at the ends


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve, scikit-learn's step definition) over
    the labeled rows; NaN without a positive."""
    from sklearn.metrics import average_precision_score

    true = np.asarray(y_true, dtype=np.float64).ravel()
    score = np.asarray(y_score, dtype=np.float64).ravel()
    labeled = ~np.isnan(true)
    if not (true[labeled] == 1).any():
        return math.nan
    return float(average_precision_score(true[labeled], score[labeled]))


def _json_float(value: float) -> float | None:
    """A float for JSON: None instead of NaN."""
    return None if math.isnan(value) else float(value)


def evaluate(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    series_ids: Sequence[str] | np.ndarray | None = None,
) -> dict:
    """All validation figures in one JSON-serialisable dict (None where a figure is undefined).

    Args:
        y_true: (N, 6) labels in {0, 1}, NaN = unlabeled, columns in ``LABELS`` order.
        y_pred: (N, 6) probabilities.
        series_ids: (N,) series of each row; adds ``series_auc_any`` when given.

    Returns:
        ``{"weighted_log_loss": float, "log_loss": {label: float}, "auc": {label: float},
        "ece": {label: float} (expected calibration error, 10 bins), "series_auc_any": float (only with
        series_ids), "n_images": int}``.
    """
    result: dict = {
        "weighted_log_loss": _json_float(weighted_log_loss(y_true, y_pred)),
        "log_loss": {k: _json_float(v) for k, v in per_label_log_loss(y_true, y_pred).items()},
        "auc": {k: _json_float(v) for k, v in per_label_auc(y_true, y_pred).items()},
        "ece": {k: _json_float(v) for k, v in per_label_ece(y_true, y_pred).items()},
    }
    if series_ids is not None:
        any_col = LABELS.index("any")
        true, pred = np.asarray(y_true), np.asarray(y_pred)
        result["series_auc_any"] = _json_float(series_auc_any(true[:, any_col], pred[:, any_col], series_ids))
    result["n_images"] = int(np.asarray(y_true).shape[0])
    return result


def prior_predictions(prevalence: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    """The prevalence baseline: every row predicts the training label means.

    Args:
        prevalence: (6,) per-label share of positive training slices, in ``LABELS`` order.
        n: number of rows to predict.

    Returns:
        (n, 6) float64 probabilities, each row ``prevalence``.

    Raises:
        ValueError: not six values in [0, 1].
    """
    prior = np.asarray(prevalence, dtype=np.float64)
    if prior.shape != (len(LABELS),) or not ((prior >= 0) & (prior <= 1)).all():
        raise ValueError(f"expected {len(LABELS)} prevalences in [0, 1], got {prior.tolist()}")
    return np.tile(prior, (n, 1))
