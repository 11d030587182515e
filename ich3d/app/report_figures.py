"""The figures of ``ich3d report`` and ``ich3d explain``, drawn from plain arrays (no files, no torch).

Matplotlib through its object API on an Agg canvas (no pyplot), as in :mod:`ich3d.app.viz`; every function
returns PNG bytes, ready to embed in the HTML page or to write to a file.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ich3d.constants import LABELS

#: One colour per label (matplotlib's tab10), in LABELS order.
LABEL_COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
_DPI = 80
#: Pixels above this many HU are the head (thumbnails are cut to it; the pointing game's head area).
HEAD_HU = -300.0
#: Layout of the six-panel (one per label) figures.
_PANELS = {"hspace": 0.4, "wspace": 0.25, "left": 0.05, "right": 0.98, "top": 0.88, "bottom": 0.08}


def figure(width: float, height: float) -> Any:
    """A matplotlib Figure on its own Agg canvas (inches)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Any) -> bytes:
    """The PNG bytes of a figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, facecolor="white")
    return buffer.getvalue()


def image_png(image: np.ndarray) -> bytes:
    """PNG bytes of an image: (H, W) uint8 grey levels or (H, W, 3) uint8 RGB."""
    import matplotlib.image

    buffer = io.BytesIO()
    rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image
    matplotlib.image.imsave(buffer, np.ascontiguousarray(rgb), format="png")
    return buffer.getvalue()


def head_box(hu: np.ndarray, margin: int = 3) -> tuple[slice, slice]:
    """The rows and columns of the head (pixels above HEAD_HU) and a margin; all of them without a head."""
    rows, cols = np.nonzero(hu > HEAD_HU)
    if not rows.size:
        return slice(None), slice(None)
    return (slice(max(int(rows.min()) - margin, 0), int(rows.max()) + margin + 1),
            slice(max(int(cols.min()) - margin, 0), int(cols.max()) + margin + 1))


def shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    """Block-mean downsampling of (H, W[, 3]) uint8 by the smallest integer factor that brings its
    longer side to at most ``max_side`` (edge rows and columns that do not fill a block are dropped)."""
    factor = -(-max(image.shape[:2]) // max_side)
    if factor <= 1:
        return image
    rows, cols = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[:rows * factor, :cols * factor].reshape(rows, factor, cols, factor, *image.shape[2:])
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


def overlay(grey: np.ndarray, heat: np.ndarray, opacity: float = 0.6) -> np.ndarray:
    """A heatmap over a grey image: the ``jet`` colour of the heatmap, blended in proportion to its value.

    Args:
        grey: (H, W) uint8 image (e.g. the brain window).
        heat: (H, W) float >= 0; scaled to its maximum (an all-zero map leaves the image as it is).
        opacity: blend weight at the heatmap's maximum.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    from matplotlib import colormaps

    peak = float(heat.max()) if heat.size else 0.0
    level = np.clip(heat / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(heat, dtype=np.float64)
    colour = colormaps["jet"](level)[..., :3]
    weight = (opacity * level)[..., None]
    blended = (1 - weight) * (grey[..., None] / 255.0) + weight * colour
    return np.rint(blended * 255).astype(np.uint8)


def curves_png(y_true: np.ndarray, y_pred: np.ndarray, kind: str) -> bytes:
    """ROC or precision-recall curves, one panel per label.

    Args:
        y_true: (N, 6) labels in {0, 1}, NaN = unlabeled.
        y_pred: (N, 6) probabilities.
        kind: "roc" or "pr".
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    from ich3d.metrics import average_precision, per_label_auc

    fig = figure(13.5, 7.0)
    axes = fig.subplots(2, 3, gridspec_kw=_PANELS)
    aucs = per_label_auc(y_true, y_pred)
    for j, (ax, name) in enumerate(zip(axes.flat, LABELS)):
        labeled = ~np.isnan(y_true[:, j])
        true, score = y_true[labeled, j], y_pred[labeled, j]
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        if len(np.unique(true)) < 2:
            ax.text(0.5, 0.5, "one class only", ha="center", va="center", color="#7f7f7f")
        elif kind == "roc":
            fpr, tpr, _ = roc_curve(true, score)
            ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=1, ls="--")
            ax.plot(fpr, tpr, color=LABEL_COLORS[j], lw=2, drawstyle="steps-post")
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
            name = f"{name}: AUC {aucs[name]:.3f}"
        else:
            precision, recall, _ = precision_recall_curve(true, score)
            ax.axhline(true.mean(), color="#bbbbbb", lw=1, ls="--")
            ax.plot(recall, precision, color=LABEL_COLORS[j], lw=2, drawstyle="steps-post")
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
            name = f"{name}: AP {average_precision(true, score):.3f} (prevalence {true.mean():.3f})"
        ax.set_title(name, fontsize=11)
        ax.grid(alpha=0.3)
    fig.suptitle("ROC curves" if kind == "roc" else "Precision-recall curves (dashed: prevalence)", fontsize=13)
    return figure_png(fig)


def reliability_png(y_true: np.ndarray, y_pred: np.ndarray, bins: int = 10) -> bytes:
    """Reliability diagrams, one panel per label: observed positive rate against mean predicted
    probability in equal-width bins (marker area ~ count), the diagonal, and the ECE in the title."""
    from ich3d.metrics import expected_calibration_error, reliability

    fig = figure(13.5, 7.0)
    axes = fig.subplots(2, 3, gridspec_kw=_PANELS)
    for j, (ax, name) in enumerate(zip(axes.flat, LABELS)):
        mean_prob, rate, count = reliability(y_true[:, j], y_pred[:, j], bins)
        filled = count > 0
        ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=1, ls="--")
        ax.plot(mean_prob[filled], rate[filled], color=LABEL_COLORS[j], lw=1.5)
        ax.scatter(mean_prob[filled], rate[filled], s=12 + 200 * count[filled] / max(count.sum(), 1),
                   color=LABEL_COLORS[j], zorder=3)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("mean predicted probability")
        ax.set_ylabel("observed rate")
        ax.set_title(f"{name}: ECE {expected_calibration_error(y_true[:, j], y_pred[:, j], bins):.4f}", fontsize=11)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Reliability ({bins} bins; marker area ~ slices in the bin)", fontsize=13)
    return figure_png(fig)


def strip_png(probs: np.ndarray, truth: np.ndarray | None, marks: Sequence[int]) -> bytes:
    """One series along its slices: each label's probability, the ground truth shaded, key slices marked.

    Args:
        probs: (N, 6) probabilities in slice order.
        truth: (N, 6) labels (NaN = unlabeled) or None; runs of slices positive for ``any`` are shaded,
            each positive subtype is a row of squares in its colour under the curves.
        marks: positions of the key slices (dotted lines).

    The colours are LABEL_COLORS; the title and legend are the page's (text costs most of the drawing).
    """
    n = len(probs)
    fig = figure(9.0, 2.2)
    ax = fig.add_axes((0.065, 0.2, 0.925, 0.76))
    if truth is not None:
        positive = np.flatnonzero(truth[:, 0] == 1)
        for run in np.split(positive, np.flatnonzero(np.diff(positive) > 1) + 1) if positive.size else []:
            ax.axvspan(run[0] - 0.5, run[-1] + 0.5, color="#f4c7c3", lw=0)
        for j in range(1, len(LABELS)):
            rows = np.flatnonzero(truth[:, j] == 1)
            ax.scatter(rows, np.full(len(rows), -0.03 * j), marker="s", s=8, color=LABEL_COLORS[j])
    for j, name in enumerate(LABELS):
        ax.plot(np.arange(n), probs[:, j], color=LABEL_COLORS[j], lw=2.2 if j == 0 else 1.2, label=name)
    for index in marks:
        ax.axvline(index, color="#555555", lw=0.8, ls=":")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(-0.18 if truth is not None else -0.02, 1.02)  # room for the label squares
    ax.set_xlabel("slice", fontsize=8, labelpad=1)
    ax.set_ylabel("probability", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    return figure_png(fig)


def training_png(records: Sequence[Mapping[str, Any]]) -> bytes:
    """Train loss and validation weighted log loss per epoch, one panel per stage (metrics.jsonl records)."""
    from matplotlib.ticker import MaxNLocator

    stages = list(dict.fromkeys(record["stage"] for record in records))
    fig = figure(6.0 * len(stages), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(stages), gridspec_kw={"left": 0.08, "right": 0.98, "top": 0.86,
                                                                   "bottom": 0.16, "wspace": 0.25}))
    for ax, stage in zip(axes, stages):
        mine = [record for record in records if record["stage"] == stage]
        epochs = [record["epoch"] for record in mine]
        ax.plot(epochs, [record["train_loss"] for record in mine], marker="o", ms=3, label="train loss")
        valid = [record["valid"].get("weighted_log_loss") for record in mine]
        ax.plot(epochs, [np.nan if v is None else v for v in valid], marker="o", ms=3,
                label="validation weighted log loss")
        ax.set_title(f"stage {stage}", fontsize=11)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return figure_png(fig)
