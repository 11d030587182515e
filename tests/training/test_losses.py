"""Tests of ich3d.losses.WeightedBCELoss: equal to the RSNA metric, masking, NaN targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss

from ich3d.constants import LABEL_WEIGHTS
from ich3d.metrics import weighted_log_loss
from ich3d.training.losses import WeightedBCELoss


def _case(shape: tuple[int, ...] = (3, 7), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, 6, generator=gen) * 2  # moderate: the metric clips at 1e-7, the loss does not
    targets = (torch.rand(*shape, 6, generator=gen) < 0.3).float()
    return logits, targets


def test_hand_computed_case() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, math.log(3.0)]])  # p = 0.5 x5, 0.75
    targets = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    expected = (2 * math.log(2) + 4 * math.log(2) - math.log(0.75)) / 7
    assert WeightedBCELoss()(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_equals_metric_and_sklearn() -> None:
    logits, targets = _case()
    loss = WeightedBCELoss()(logits, targets).item()
    y_true = targets.reshape(-1, 6).numpy().astype(np.float64)
    y_pred = torch.sigmoid(logits.double()).reshape(-1, 6).numpy()
    assert loss == pytest.approx(weighted_log_loss(y_true, y_pred), rel=1e-5)
    sample_weight = np.tile(LABEL_WEIGHTS, len(y_true))
    assert loss == pytest.approx(log_loss(y_true.ravel(), y_pred.ravel(), sample_weight=sample_weight), rel=1e-5)


def test_mask_and_nan_targets_are_left_out() -> None:
    logits, targets = _case((2, 5))
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    expected = WeightedBCELoss()(logits[mask], targets[mask])
    garbage_logits, nan_targets = logits.clone(), targets.clone()
    garbage_logits[~mask] = float("nan")
    garbage_logits.requires_grad_(True)
    loss = WeightedBCELoss()(garbage_logits, targets, mask)
    loss.backward()
    assert loss.item() == pytest.approx(expected.item())
    assert torch.isfinite(garbage_logits.grad).all()
    assert torch.equal(garbage_logits.grad[~mask], torch.zeros_like(garbage_logits.grad[~mask]))
    nan_targets[~mask] = float("nan")
    assert WeightedBCELoss()(logits, nan_targets).item() == pytest.approx(expected.item())


def test_gradients_finite_and_zero_when_nothing_valid() -> None:
    logits, targets = _case()
    logits.requires_grad_(True)
    targets[:] = float("nan")
    loss = WeightedBCELoss()(logits, targets)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        WeightedBCELoss()(torch.zeros(2, 6), torch.zeros(2, 5))


def test_label_smoothing_is_the_loss_of_softened_targets_with_its_minimum_at_one_minus_half_e() -> None:
    logits, targets = _case()
    soft = targets * 0.9 + 0.05
    assert WeightedBCELoss(label_smoothing=0.1)(logits, targets).item() == pytest.approx(
        WeightedBCELoss()(logits, soft).item(), rel=1e-6)
    positive = torch.ones(1, 6)
    best = math.log(0.95 / 0.05)  # the logit of 1 - e/2
    losses = [WeightedBCELoss(label_smoothing=0.1)(torch.full((1, 6), best + d), positive).item() for d in (-0.5, 0, 0.5)]
    assert losses[1] < losses[0] and losses[1] < losses[2]


@pytest.mark.parametrize("smoothing", [-0.1, 0.5, float("nan")])
def test_label_smoothing_out_of_range_is_refused(smoothing: float) -> None:
    with pytest.raises(ValueError, match="label_smoothing"):
        WeightedBCELoss(label_smoothing=smoothing)
