"""Ensembles of trained models: calibration, averaging, and the facts members must agree on.

The one place where several :class:`~ich3d.models.io.TrainedModel` become one answer, used by
``ich3d infer`` (through :class:`~ich3d.inference.predictor.Predictor`), ``report`` and ``explain``
alike: each member's probabilities are calibrated with its own calibration, then averaged with equal
weights (docs/design.md §4). The prior is the members' mean prevalence, the thickness thin series
are read at their median training spacing, and the operating thresholds the members' mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ich3d.errors import InputError
from ich3d.models.calibration import apply_calibration
from ich3d.models.io import TrainedModel
from ich3d.models.operating import OperatingPoints


def member_probabilities(model: TrainedModel, probs: np.ndarray, calibrate: bool = True) -> np.ndarray:
    """A member's (N, 6) probabilities as the ensemble averages them: calibrated unless ``calibrate`` is False."""
    return apply_calibration(probs, model.calibration) if calibrate else probs


def average(members: Sequence[np.ndarray]) -> np.ndarray:
    """(N, 6) float32 equal-weight mean of the members' (N, 6) probabilities (summed in float64)."""
    total = np.zeros(members[0].shape)
    for probs in members:
        total += probs
    return (total / len(members)).astype(np.float32)


def prior(models: Sequence[TrainedModel]) -> np.ndarray:
    """(6,) the members' mean training prevalence: what a file outside any series is given."""
    return np.mean([model.prevalence for model in models], axis=0)


def training_spacing(models: Sequence[TrainedModel]) -> float:
    """The members' median training slice spacing, mm (the series choice's target thickness)."""
    return float(np.median([model.slice_spacing for model in models]))


def shared_crop(models: Sequence[TrainedModel]) -> str:
    """The crop every member's cache is made with.

    Raises:
        InputError: members trained on differently cropped caches (they cannot share one dataset).
    """
    crops = {model.crop for model in models}
    if len(crops) > 1:
        raise InputError(f"the --run models read caches built with different --crop ({sorted(crops)}): "
                         f"predict with each group on its own")
    return crops.pop()


def operating_points(models: Sequence[TrainedModel]) -> OperatingPoints:
    """The ensemble's operating thresholds: the members' own when they share them (the folds of one run
    store the same), else their per-label mean, marked as such."""
    first = models[0].operating
    if all(model.operating == first for model in models):
        return first
    thresholds = tuple(float(t) for t in np.mean([model.operating.threshold for model in models], axis=0))
    return OperatingPoints(threshold=thresholds, fitted_on=f"mean of {len(models)} members' thresholds")
