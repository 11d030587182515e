"""``ich3d explain`` and the report's overlays: Grad-CAM of images of a dataset by the models of a run,
averaged over the ensemble's calibrated members, drawn over the original slice (docs/design.md §10).

The mathematics (the feature map, the integrated gradient through the sequence head, the weighting
and the mapping back to the original pixel grid) is :mod:`ich3d.inference.gradcam`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch

from ich3d.app.report_figures import figure, figure_png, head_box, overlay
from ich3d.constants import LABELS, WINDOWS, Status
from ich3d.data.windowing import bsb, scaled_window
from ich3d.dataset.crop import cache_box
from ich3d.dataset.opened import Dataset
from ich3d.dataset.pixels import read_pixels, to_hu
from ich3d.errors import InputError
from ich3d.inference import ensemble
from ich3d.inference.gradcam import CamSettings, series_gradcam, to_original
from ich3d.inference.predictor import Predictor, RuntimeOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Explanation:
    """Grad-CAM of one slice for some labels.

    Attributes:
        image_id: the slice.
        probs: (6,) probabilities of the explained forward pass (calibrated as the checkpoint says, no
            test-time augmentation), mean over the ensemble's members, LABELS order.
        labels: the explained labels (names), in the order of ``heatmaps``.
        heatmaps: (L, rows, cols) float32 >= 0 on the original pixel grid (mean over members).
        hu: (rows, cols) float32 Hounsfield units of the original slice.
        truth: (6,) float labels of the index (NaN = unlabeled), LABELS order.
    """

    image_id: str
    probs: np.ndarray
    labels: tuple[str, ...]
    heatmaps: np.ndarray
    hu: np.ndarray
    truth: np.ndarray

    def overlay(self, label: str = "any") -> np.ndarray:
        """(rows, cols, 3) uint8: the brain window with ``label``'s heatmap over it."""
        grey = scaled_window(self.hu, *WINDOWS["brain"])
        return overlay(grey, self.heatmaps[self.labels.index(label)])


class Explainer:
    """Grad-CAM of images of a dataset by the models of ``--run`` arguments (averaged over members).

    Args:
        runs: run folders, fold folders or checkpoints (:func:`ich3d.models.io.model_checkpoints`).
        dataset: the dataset holding the images (index and HU cache), opened or its folder.
        device: "cpu", "cuda", ... or None for the best available.
        settings: feature map, gradient path and weighting (:class:`CamSettings`).
    """

    def __init__(self, runs: Sequence[Path], dataset: Dataset | Path, device: str | None = None,
                 settings: CamSettings = CamSettings()) -> None:
        self.predictor = Predictor.from_runs(runs, RuntimeOptions(device=device, amp=False))
        self.device = self.predictor.runtime.device
        self.settings = settings
        self.dataset = Dataset.of(dataset)
        self.slices = self.dataset.slices

    def explain(self, image_ids: Sequence[str], labels: Sequence[str] = LABELS) -> list[Explanation]:
        """Explanations of ``image_ids`` (in that order) for ``labels``; each series is loaded once.

        Raises:
            InputError: an image the index does not know, outside a series, or with unreadable pixels.
        """
        rows = [self.dataset.find_image(image)[0] for image in image_ids]
        for row in rows:
            if not isinstance(row.get("series_uid"), str):
                raise InputError(f"{row['image_id']}: not part of a series in {self.dataset.root}, nothing to explain")
        found: dict[str, Explanation] = {}
        with _one_cpu_thread(self.device):
            for series_uid, group in pd.DataFrame(rows).groupby("series_uid", sort=False):
                found |= self._explain_series(series_uid, group, tuple(labels))
        return [found[row["image_id"]] for row in rows]

    def _explain_series(self, series_uid: str, wanted: pd.DataFrame, labels: tuple[str, ...]) -> dict[str, Explanation]:
        members = self.slices[self.slices["series_uid"] == series_uid].sort_values("slice_index")
        hu = self.dataset.hu(series_uid)
        readable = (members["status"] == Status.OK).to_numpy()
        targets = wanted["slice_index"].astype(int).tolist()
        probs, maps = [], []
        for member in self.predictor.models:
            p, m = series_gradcam(member.module, hu, readable, member.data, targets, self.settings,
                                  [LABELS.index(name) for name in labels])
            probs.append(ensemble.member_probabilities(member, p))  # as ich3d infer reports them
            maps.append(m)
        out, mean = {}, ensemble.average(probs)
        for k, row in enumerate(wanted.to_dict("records")):
            box, shape = cache_box(row), (int(row["rows"]), int(row["cols"]))
            heat = np.mean([to_original(m[k], box, *shape) for m in maps], axis=0)
            truth = np.array([row[f"label_{name}"] for name in LABELS], dtype=np.float64)
            out[row["image_id"]] = Explanation(row["image_id"], mean[k], labels,
                                               heat.astype(np.float32), _original_hu(row, hu[targets[k]]), truth)
        return out


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """One intra-op thread on the CPU while explaining: its many small kernels (a GRU over a few series
    copies, one slice's encoder) ran 4-10x faster so than on 2 threads of a busy 2-core machine (8 demo
    slices: 2.5-3 s against 11-30 s). The previous setting is restored."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _original_hu(row: dict[str, Any], cached: np.ndarray) -> np.ndarray:
    """(rows, cols) float32 HU of a slice from its DICOM file, or its cached slice mapped back onto
    the original grid when the file can no longer be read."""
    try:
        raw = read_pixels(SimpleNamespace(**row))
        return to_hu(raw, row["rescale_slope"], row["rescale_intercept"], row["bits_stored"],
                     row["pixel_representation"])
    except Exception as exc:  # noqa: BLE001 - pydicom and the file system raise many types
        log.warning("%s: cannot read %s (%s); showing its cached slice", row["image_id"], row["path"], exc)
        return to_original(cached, cache_box(row), int(row["rows"]), int(row["cols"]), fill=-1024.0)


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
    explanation = Explainer(runs, dataset, device).explain([image])[0]
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
