"""Operating thresholds: per label, the exam probability at which a run reaches a target sensitivity.

A probability is not a decision. A triage reader needs a yes/no per exam, and the point where that
switch sits is a property of the trained model, measured once on data it did not train on: the
out-of-fold predictions of a multi-fold run, or the validation fold of a single-fold one. For each
label, at least ``target`` of the positive exams must be flagged (``p >= threshold``); of the
thresholds that flag the same exams, the one halfway in log-odds between the lowest flagged exam and
the next exam below it is taken, so that a new positive a little below the lowest fitted one is not
missed by a hair; the sensitivity and specificity it gives there are recorded with it (docs/design.md
§4). Default targets: 0.95 for ``any`` (a triage tool must miss few bleeds), 0.90 for the five
subtypes (rarer, each a smaller share of the positives, so a slightly lower target keeps their
thresholds from collapsing towards 0). A label with fewer than :data:`MIN_POSITIVES`
positive exams keeps :data:`DEFAULT_THRESHOLD`, marked not fitted. No torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ich3d.constants import LABELS
from ich3d.models.calibration import logit, sigmoid

#: Target sensitivity per label (see the module docstring).
DEFAULT_TARGETS: tuple[float, ...] = tuple(0.95 if name == "any" else 0.90 for name in LABELS)
#: The threshold of a label that could not be fitted (and of checkpoints older than operating thresholds).
DEFAULT_THRESHOLD = 0.5
#: Fewest positive exams of a label for a fitted threshold.
MIN_POSITIVES = 3


@dataclass(frozen=True)
class OperatingPoints:
    """One operating point per label (tuples of 6, in :data:`ich3d.constants.LABELS` order).

    Attributes:
        threshold: exam probability at or above which the exam is flagged.
        target: the sensitivity the threshold was chosen to reach.
        sensitivity, specificity: what it gives on the exams it was fitted on (None: not fitted).
        n_positive, n_negative: those exams per label.
        fitted_on: what the points were measured on, in words.
    """

    threshold: tuple[float, ...]
    target: tuple[float, ...] = DEFAULT_TARGETS
    sensitivity: tuple[float | None, ...] = (None,) * len(LABELS)
    specificity: tuple[float | None, ...] = (None,) * len(LABELS)
    n_positive: tuple[int, ...] = (0,) * len(LABELS)
    n_negative: tuple[int, ...] = (0,) * len(LABELS)
    fitted_on: str = "not fitted (default threshold)"

    def __post_init__(self) -> None:
        if len(self.threshold) != len(LABELS) or not all(0.0 <= t <= 1.0 for t in self.threshold):
            raise ValueError(f"operating thresholds: 6 probabilities in [0, 1], got {self.threshold}")

    @property
    def fitted(self) -> tuple[bool, ...]:
        return tuple(s is not None for s in self.sensitivity)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint or ``run.json``."""
        return {"threshold": list(self.threshold), "target": list(self.target),
                "sensitivity": list(self.sensitivity), "specificity": list(self.specificity),
                "n_positive": list(self.n_positive), "n_negative": list(self.n_negative), "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperatingPoints:
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})

    def by_label(self) -> dict[str, dict[str, Any]]:
        """``{label: {threshold, target, sensitivity, specificity, n_positive, n_negative}}`` (run.json)."""
        keys = ("threshold", "target", "sensitivity", "specificity", "n_positive", "n_negative")
        return {name: {key: getattr(self, key)[j] for key in keys} for j, name in enumerate(LABELS)}


def default_points() -> OperatingPoints:
    """:data:`DEFAULT_THRESHOLD` for every label, nothing measured."""
    return OperatingPoints(threshold=(DEFAULT_THRESHOLD,) * len(LABELS))


def threshold_at_sensitivity(scores: np.ndarray, truth: np.ndarray, target: float) -> tuple[float, float, float]:
    """A threshold t with sensitivity(scores >= t) >= ``target`` that flags as few exams as possible.

    The lowest positive score that must be flagged, p, fixes which exams are flagged; any t in (s, p],
    s the highest score below p, flags the same ones. t is the middle of that gap in log-odds (p itself
    when no score lies below it): the largest margin on both sides, where p would miss a new positive
    just below the lowest fitted one.

    Args:
        scores: (N,) exam probabilities; truth: (N,) 0/1 with at least one positive.

    Returns:
        (threshold, sensitivity, specificity) at it (specificity NaN without negatives).
    """
    positives = np.sort(scores[truth == 1])[::-1]
    needed = max(1, math.ceil(target * len(positives) - 1e-9))
    lowest_flagged = float(positives[needed - 1])
    below = scores[scores < lowest_flagged]
    threshold = lowest_flagged
    if len(below):
        next_below = float(below.max())
        midpoint = float(sigmoid(logit(np.array([lowest_flagged, next_below])).mean()))
        if next_below < midpoint <= lowest_flagged:  # not when the two round to the same float
            threshold = midpoint
    sensitivity = float((positives >= threshold).mean())
    negatives = scores[truth == 0]
    specificity = float((negatives < threshold).mean()) if len(negatives) else float("nan")
    return threshold, sensitivity, specificity


def fit_operating_points(scores: np.ndarray, truth: np.ndarray, fitted_on: str,
                         targets: tuple[float, ...] = DEFAULT_TARGETS) -> OperatingPoints:
    """Per-label thresholds reaching ``targets`` on held-out exams.

    Args:
        scores: (N, 6) held-out exam probabilities (as ``exams.csv`` computes them, calibrated).
        truth: (N, 6) exam labels in {0, 1}, NaN = unlabeled (left out).
        fitted_on: what they are, in words (stored with the points).
        targets: target sensitivity per label.
    """
    default = default_points()
    threshold, sensitivity, specificity = list(default.threshold), list(default.sensitivity), list(default.specificity)
    n_pos, n_neg = [0] * len(LABELS), [0] * len(LABELS)
    for j in range(len(LABELS)):
        labeled = ~np.isnan(truth[:, j])
        y, p = truth[labeled, j], scores[labeled, j]
        n_pos[j], n_neg[j] = int((y == 1).sum()), int((y == 0).sum())
        if n_pos[j] < MIN_POSITIVES:
            continue
        t, sens, spec = threshold_at_sensitivity(p, y, targets[j])
        threshold[j], sensitivity[j] = t, sens
        specificity[j] = None if math.isnan(spec) else spec
    return OperatingPoints(tuple(threshold), tuple(targets), tuple(sensitivity), tuple(specificity), tuple(n_pos),
                           tuple(n_neg), fitted_on)
