"""Training loss: label-weighted binary cross-entropy, the differentiable twin of the RSNA metric."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ich3d.constants import LABEL_WEIGHTS, LABELS


class WeightedBCELoss(nn.Module):
    """Binary cross-entropy with label weights (``any`` = 2), averaged like the RSNA metric.

    loss = sum_{i,j valid} w_j BCE(logit_ij, y_ij) / sum_{i,j valid} w_j, where an entry is valid when
    its slice is unmasked and its target is not NaN (unlabeled). With every entry valid and no smoothing
    this is the mean over slices of sum_j w_j BCE_ij / sum_j w_j, i.e. ``ich3d.metrics.weighted_log_loss``
    of ``sigmoid(logits)`` (without the metric's 1e-7 clipping). Computed in float32 under autocast.

    Args:
        weights: (6,) label weights in ``LABELS`` order.
        label_smoothing: e in [0, 0.5): each target y becomes y(1 - e) + e/2 before the cross-entropy,
            so the loss is smallest at sigmoid(logit) = 1 - e/2 rather than at an infinite logit.
    """

    weights: torch.Tensor

    def __init__(self, weights: Sequence[float] = LABEL_WEIGHTS, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if len(weights) != len(LABELS):
            raise ValueError(f"expected {len(LABELS)} label weights, got {len(weights)}")
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32), persistent=False)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: (..., 6) float logits, e.g. (B, N, 6) for series or (M, 6) for slices.
            targets: (..., 6) float in [0, 1]; NaN = unlabeled (left out).
            mask: (...) bool, True = a real slice to score; None = all.

        Returns:
            Scalar float32 loss; 0 (still differentiable) when nothing is valid.
        """
        if logits.shape != targets.shape or logits.shape[-1] != len(LABELS):
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must be (..., 6)")
        valid = ~torch.isnan(targets)
        if mask is not None:
            valid = valid & mask.unsqueeze(-1)
        # Zero invalid entries first so that garbage (NaN) there reaches neither the loss nor the gradient.
        logits = torch.where(valid, logits.float(), 0.0)
        targets = torch.where(valid, targets.float(), 0.0) * (1 - self.label_smoothing) + self.label_smoothing / 2
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        weights = self.weights.to(logits.device) * valid
        total = (bce * weights).sum()
        return total / weights.sum().clamp_min(torch.finfo(torch.float32).tiny)
