"""Grad-CAM explanations of slices of a dataset by a predictor's members, averaged over the ensemble's
calibrated members, on the original pixel grid (docs/design.md §10). ``ich3d explain``, the report and
the DICOM node's key images draw them; the mathematics is :mod:`ich3d.inference.gradcam`.
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

from ich3d.constants import LABELS, WINDOWS, Status
from ich3d.data.windowing import scaled_window
from ich3d.dataset.crop import cache_box
from ich3d.dataset.opened import Dataset
from ich3d.dataset.pixels import read_pixels, to_hu
from ich3d.errors import InputError
from ich3d.inference import ensemble
from ich3d.inference.gradcam import CamSettings, series_gradcam, to_original
from ich3d.inference.predictor import Predictor, RuntimeOptions

log = logging.getLogger(__name__)


def heat_overlay(grey: np.ndarray, heat: np.ndarray, opacity: float = 0.6) -> np.ndarray:
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
        return heat_overlay(grey, self.heatmaps[self.labels.index(label)])


class Explainer:
    """Grad-CAM of images of a dataset by a predictor's members (averaged over them).

    A process that keeps a :class:`~ich3d.inference.predictor.Predictor` warm (the DICOM node) explains
    with it; :meth:`from_runs` loads one for a single command.

    Args:
        predictor: the ensemble whose members are explained.
        dataset: the dataset holding the images (index and HU cache), opened or its folder.
        settings: feature map, gradient path and weighting (:class:`CamSettings`).
    """

    def __init__(self, predictor: Predictor, dataset: Dataset | Path, settings: CamSettings = CamSettings()) -> None:
        self.predictor = predictor
        self.device = predictor.runtime.device
        self.settings = settings
        self.dataset = Dataset.of(dataset)
        self.slices = self.dataset.slices

    @classmethod
    def from_runs(cls, runs: Sequence[Path], dataset: Dataset | Path, device: str | None = None,
                  settings: CamSettings = CamSettings()) -> Explainer:
        """An explainer with its own predictor (full precision: gradients of mixed precision are coarse)."""
        return cls(Predictor.from_runs(runs, RuntimeOptions(device=device, amp=False)), dataset, settings)

    def explain(self, image_ids: Sequence[str], labels: Sequence[str] = LABELS) -> list[Explanation]:
        """Explanations of ``image_ids`` (in that order) for ``labels``; each series is loaded once.

        Raises:
            InputError: an image the index does not know, outside a series, or with unreadable pixels.
        """
        rows = [self.dataset.find_image(image)[0] for image in image_ids]
        for row in rows:
            if not isinstance(row.get("series_id"), str):
                raise InputError(f"{row['image_id']}: not part of a series in {self.dataset.root}, nothing to explain")
        found: dict[str, Explanation] = {}
        with _one_cpu_thread(self.device):
            for series_id, group in pd.DataFrame(rows).groupby("series_id", sort=False):
                found |= self._explain_series(series_id, group, tuple(labels))
        return [found[row["image_id"]] for row in rows]

    def _explain_series(self, series_id: str, wanted: pd.DataFrame, labels: tuple[str, ...]) -> dict[str, Explanation]:
        members = self.slices[self.slices["series_id"] == series_id].sort_values("slice_index")
        hu = self.dataset.hu(series_id)
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
