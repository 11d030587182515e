"""``ich3d explain``: the Grad-CAM figure of a slice (BSB beside each label's map), and the pointing game.

The explanations are :class:`ich3d.inference.explainer.Explainer`'s (averaged over the ensemble's
calibrated members, on the original pixel grid); the mathematics is :mod:`ich3d.inference.gradcam`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ich3d.app.report_figures import figure, figure_png, head_box
from ich3d.constants import LABELS
from ich3d.data.windowing import bsb
from ich3d.inference.explainer import Explainer, Explanation


def explanation_png(explanation: Explanation) -> bytes:
    """The BSB image beside each label's Grad-CAM over the brain window, the probability in each title."""
    fig = figure(20.0, 3.6)
    axes = fig.subplots(1, 1 + len(LABELS), gridspec_kw={"left": 0.005, "right": 0.995, "top": 0.8,
                                                         "bottom": 0.01, "wspace": 0.03})
    head = head_box(explanation.hu)
    axes[0].imshow(np.moveaxis(bsb(explanation.hu), 0, -1)[head], interpolation="nearest")
    axes[0].set_title("BSB (brain / subdural / soft tissue)", fontsize=10)
    for j, (ax, name) in enumerate(zip(axes[1:], LABELS)):
        ax.imshow(explanation.overlay(name)[head], interpolation="nearest")
        truth = explanation.truth[j]
        known = "" if np.isnan(truth) else f" (label {int(truth)})"
        ax.set_title(f"{name}: p = {explanation.probs[j]:.3f}{known}", fontsize=10,
                     color="#d62728" if truth == 1 else "#2b2b2b")
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(f"{explanation.image_id}: Grad-CAM through the sequence model", fontsize=12)
    return figure_png(fig)


def explain_image(runs: Sequence[Path], dataset: Path, image: str, out: Path, device: str | None = None) -> Path:
    """Writes the Grad-CAM figure of one image (:func:`explanation_png`) as a PNG.

    Args:
        runs: run folders, fold folders or checkpoints (averaged).
        dataset: the dataset folder holding the image.
        image: an image ID of the index (or the path of one of its DICOM files).
        out: the PNG to write (folders are created).

    Returns:
        ``out``.
    """
    explanation = Explainer.from_runs(runs, dataset, device).explain([image])[0]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(explanation_png(explanation))
    return out


def pointing_game(heatmap: np.ndarray, mask: np.ndarray, tolerance: float) -> bool:
    """True when the heatmap's maximum lies within ``tolerance`` pixels of the mask.

    Args:
        heatmap: (rows, cols) float.
        mask: (rows, cols) bool, the lesion.
        tolerance: pixels (Euclidean) the maximum may lie outside the mask.
    """
    peak = np.array(np.unravel_index(int(np.argmax(heatmap)), heatmap.shape))
    where = np.argwhere(mask)
    return bool(where.size) and float(np.min(np.hypot(*(where - peak).T))) <= tolerance


def dilate(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """(rows, cols) bool: the pixels within ``tolerance`` pixels of ``mask`` (the pointing game's target)."""
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(~mask) <= tolerance if mask.any() else mask.copy()
