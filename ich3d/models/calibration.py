"""Per-label probability calibration (Platt scaling), fitted on held-out predictions and stored in the model.

A model must not lose to the prior because it is overconfident. For each label, the held-out logit
z = logit(p) is mapped to sigmoid(a · z + b): ``a`` < 1 softens an overconfident model (temperature
1 / a), ``b`` moves its base rate to the one observed. The two numbers per label are fitted by
Newton's method on the binary cross-entropy, pulled towards the identity (a = 1, b = 0) as much as
one series of evidence would (:data:`SERIES_PRIOR`), so a fit on a handful of series moves only part
of the way. Calibration only softens: a fit that would sharpen (a > 1: the held-out slices looked
easier than the model thought) keeps a = 1 and fits b alone, because a few easy validation series are
poor evidence that new exams will be as easy, and sharpening is what makes a model lose to the prior
on data it was not tuned on. A label with fewer than :data:`MIN_CLASS` positives or negatives keeps
the identity. The fit must pay off out of sample: it is fitted on half
of the series and scored on the other half, both ways; a label whose calibrated loss is not lower
than its raw loss there keeps the identity (a handful of validation series can make a calibration
that fits them and hurts new data). With several folds the fit uses the out-of-fold predictions
(every training series predicted by the fold model that did not see it); with one fold, the
validation fold's (docs/design.md §4).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ich3d.constants import LABELS

#: Fewest positives and negatives of a label for a fit; below, the identity is kept.
MIN_CLASS = 5
#: Weight of the pull towards the identity, in series: slices of one series are far from independent
#: evidence, so a handful of validation series pull the fit only part of the way.
SERIES_PRIOR = 1.0
_EPS = 1e-6


def identity() -> dict[str, Any]:
    """The calibration that changes nothing."""
    return {"a": [1.0] * len(LABELS), "b": [0.0] * len(LABELS), "fitted": [False] * len(LABELS)}


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), elementwise, with p clipped to [1e-6, 1 - 1e-6]."""
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)), elementwise: the inverse of :func:`logit`."""
    return 1 / (1 + np.exp(-z))


def _objective(theta: np.ndarray, features: np.ndarray, offset: np.ndarray, y: np.ndarray, centre: np.ndarray,
               ridge: float) -> float:
    """Mean BCE of sigmoid(offset + features @ theta) against y, plus ridge ||theta - centre||²."""
    score = offset + features @ theta
    bce = np.logaddexp(0.0, score) - y * score  # -[y log s + (1 - y) log(1 - s)], stable
    return float(bce.mean() + ridge * np.sum((theta - centre) ** 2))


def _newton(features: np.ndarray, offset: np.ndarray, y: np.ndarray, centre: np.ndarray, ridge: float,
            iterations: int = 50) -> np.ndarray:
    """theta minimising :func:`_objective` from ``centre``: Newton steps, halved until the objective decreases.

    Args:
        features: (N, K) regressors; offset: (N,) fixed part of the score; y: (N,) labels in {0, 1}.
    """
    theta = centre.copy()
    value = _objective(theta, features, offset, y, centre, ridge)
    for _ in range(iterations):
        p = sigmoid(np.clip(offset + features @ theta, -50, 50))
        gradient = features.T @ (p - y) / len(y) + 2 * ridge * (theta - centre)
        hessian = (features * (p * (1 - p))[:, None]).T @ features / len(y) + 2 * ridge * np.eye(len(theta))
        step = np.linalg.solve(hessian, gradient)
        for _ in range(30):
            candidate = theta - step
            new = _objective(candidate, features, offset, y, centre, ridge)
            if new <= value:
                break
            step = step / 2
        else:
            break
        theta, converged, value = candidate, value - new < 1e-12, new
        if converged:
            break
    return theta


def _fit_one(z: np.ndarray, y: np.ndarray, n_groups: int) -> tuple[float, float]:
    """(a, b) of one label, a <= 1: Platt scaling pulled towards the identity with the weight of
    :data:`SERIES_PRIOR` series; where the fit would sharpen (a > 1), only the base rate b is fitted.

    Args:
        z: (N,) held-out logits; y: (N,) labels in {0, 1}; n_groups: the series they come from.
    """
    ridge = SERIES_PRIOR / max(n_groups, 1)
    a, b = _newton(np.stack([z, np.ones_like(z)], axis=1), np.zeros_like(z), y, np.array([1.0, 0.0]), ridge)
    if a > 1.0:
        (b,) = _newton(np.ones((len(z), 1)), z, y, np.zeros(1), ridge)
        a = 1.0
    return float(a), float(b)


def _bce(z: np.ndarray, y: np.ndarray, a: float = 1.0, b: float = 0.0) -> float:
    score = a * z + b
    return float(np.mean(np.logaddexp(0.0, score) - y * score))


def _pays_off(z: np.ndarray, y: np.ndarray, groups: np.ndarray) -> bool:
    """True when Platt scaling fitted on one half of the groups lowers the loss on the other, both ways."""
    names = np.unique(groups)
    first = np.isin(groups, names[::2])
    calibrated = raw = 0.0
    for fit_on in (first, ~first):
        test = ~fit_on
        if min((y[fit_on] == 1).sum(), (y[fit_on] == 0).sum()) < MIN_CLASS or not test.any():
            return False
        a, b = _fit_one(z[fit_on], y[fit_on], len(np.unique(groups[fit_on])))
        calibrated += _bce(z[test], y[test], a, b) * test.sum()
        raw += _bce(z[test], y[test]) * test.sum()
    return calibrated < raw


def fit_calibration(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> dict[str, Any]:
    """Per-label Platt scaling of held-out predictions, where it pays off out of sample.

    Args:
        probs: (N, 6) predicted probabilities of held-out slices.
        labels: (N, 6) labels in {0, 1}, NaN = unlabeled (left out).
        groups: (N,) series of each slice (the halves of the out-of-sample check are whole series);
            None: each slice its own.

    Returns:
        ``{"a": [6 floats], "b": [6 floats], "fitted": [6 bools]}``: plain data for a checkpoint.
    """
    out = identity()
    groups = np.arange(len(probs)) if groups is None else np.asarray(groups)
    for j in range(len(LABELS)):
        labeled = ~np.isnan(labels[:, j])
        y, z = labels[labeled, j], logit(probs[labeled, j])
        if min((y == 1).sum(), (y == 0).sum()) < MIN_CLASS or not _pays_off(z, y, groups[labeled]):
            continue
        out["a"][j], out["b"][j] = _fit_one(z, y, len(np.unique(groups[labeled])))
        out["fitted"][j] = True
    return out


def apply_calibration(probs: np.ndarray, calibration: dict[str, Any] | None) -> np.ndarray:
    """Calibrated probabilities: sigmoid(a · logit(p) + b) per label; ``probs`` itself for None.

    Args:
        probs: (N, 6) probabilities (NaN rows stay NaN).
    """
    if calibration is None:
        return probs
    out = probs.copy()
    for j, (a, b) in enumerate(zip(calibration["a"], calibration["b"])):
        if (a, b) != (1.0, 0.0):  # the identity leaves a label bit-identical
            out[:, j] = sigmoid(logit(probs[:, j]) * a + b)
    return out
