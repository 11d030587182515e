"""Grad-CAM through the whole sequence model, mapped back to the original pixel grid (docs/design.md §10).

A slice's logit depends on its neighbours through the GRU, so a slice is explained in its series: the
encoder embeds every readable slice, the head runs over the whole sequence, and the slice's logit of
each label is backpropagated through the head and the encoder to the slice's own feature map. The
neighbours' embeddings are constants of that pass: they shape the gradient (the head sees the whole
series), but the map shows where in *this* slice's pixels the evidence lies. With 2.5D input the
neighbours' windows are channels of the slice's input and share its map.

Three choices, each measured on the synthetic lesion masks (BENCHMARKS.md, "Grad-CAM pointing game"):

* the feature map: the encoder's last activation of at least ``min_side`` x ``min_side`` cells (found
  with forward hooks, so every encoder of the registry works; the last one with more than one cell
  when none is that large). The final 4 x 4 map of the small net at 128 px cannot point at a lesion;
* the gradient: integrated along the straight path in embedding space from the model's missing-slice
  embedding (what the head sees when a slice has no pixels) to the slice's embedding (``steps``
  points), so the map shows what the pixels add to the context's prediction; the local gradient of a
  saturated GRU mostly follows where the slice lies in the head, not the blood (``steps`` 0: the
  local gradient, as in classic Grad-CAM);
* the weighting: Layer-CAM (Jiang et al., 2021: ReLU of the sum over channels of the positive
  element-wise gradient times the activation, sharper on shallower maps) or classic Grad-CAM
  (channel weights = the gradient's spatial mean).

The map is upsampled bilinearly through the cache's square (``cache_box``: the resize, the padding of
non-square images, a head crop) onto the original (rows, cols) pixels, zero outside it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ich3d.config import DataConfig
from ich3d.constants import LABELS, WINDOWS, Status
from ich3d.data.windowing import bsb, scaled_window
from ich3d.dataset.crop import CacheBox, cache_box
from ich3d.dataset.opened import Dataset
from ich3d.dataset.pixels import read_pixels, to_hu
from ich3d.errors import InputError
from ich3d.data.batching import series_input
from ich3d.inference import ensemble
from ich3d.inference.predictor import Predictor, RuntimeOptions
from ich3d.models.model import IchModel
from ich3d.app.report_figures import figure, figure_png, head_box, overlay
from ich3d.runtime import Runtime

log = logging.getLogger(__name__)
WEIGHTINGS = ("layercam", "gradcam")


@dataclass(frozen=True)
class CamSettings:
    """How a slice is explained (see the module docstring).

    Attributes:
        min_side: the feature map is the encoder's last one of at least this many cells a side.
        steps: points on the path from the missing-slice embedding (0: the local gradient).
        weighting: "layercam" or "gradcam".
    """

    min_side: int = 16
    steps: int = 32
    weighting: str = "layercam"

    def __post_init__(self) -> None:
        if self.min_side < 1 or self.steps < 0 or self.weighting not in WEIGHTINGS:
            raise InputError(f"Grad-CAM settings: min_side >= 1, steps >= 0 and weighting in {WEIGHTINGS} "
                             f"(got {self})")


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


@contextlib.contextmanager
def last_feature_map(encoder: nn.Module, min_side: int = 1) -> Iterator[list[torch.Tensor]]:
    """Records, during a forward pass of ``encoder``, its last 4-D activation of at least
    ``min_side`` x ``min_side`` pixels (or, when none is that large, its last one with more than one pixel).

    A timm backbone's candidates are its stages (``feature_info``), whose outputs (NCHW, NHWC or
    transformer tokens) become maps (:meth:`ich3d.models.timm_encoder.TimmEncoder.feature_map`);
    any other encoder's are the outputs of all its modules.

    Yields:
        A list that holds, after the forward pass, that (M, K, h, w) activation (still in the graph).
    """
    found: list[torch.Tensor] = []
    fallback: list[torch.Tensor] = []

    def record(fmap: Any) -> None:
        if isinstance(fmap, torch.Tensor) and fmap.ndim == 4 and fmap.shape[-1] * fmap.shape[-2] > 1:
            (found if min(fmap.shape[-2:]) >= min_side else fallback)[:] = [fmap]

    def stage_hook(channels: int) -> Callable[..., Any]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            fmap, output = encoder.feature_map(output, channels)
            record(fmap)
            return output
        return hook

    stages = encoder.feature_modules() if hasattr(encoder, "feature_modules") else []
    handles = ([module.register_forward_hook(stage_hook(channels)) for module, channels in stages] if stages else
               [module.register_forward_hook(lambda m, i, output: record(output)) for module in encoder.modules()])
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()
        found[:] = found or fallback


def series_gradcam(model: IchModel, hu: np.ndarray, readable: np.ndarray, data: DataConfig,
                   targets: Sequence[int], settings: CamSettings = CamSettings(),
                   labels: Sequence[int] = tuple(range(len(LABELS)))) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of slices of one series through the encoder and the sequence head.

    Args:
        model: the model, in eval mode, on the device where the maps are computed.
        hu: (N, S0, S0) int16 HU cache of the series.
        readable: (N,) bool, slices whose pixels were read.
        data: the model's input settings (windows, 2.5D context, size).
        targets: slice indices to explain (readable ones).
        settings: feature map, gradient path and weighting.
        labels: the labels to explain (positions in LABELS); each costs one more series copy per path point.

    Returns:
        probs (T, 6) float32 and maps (T, L, h, w) float32 >= 0 on the feature grid, which covers the
        (S0, S0) cached slice.

    Raises:
        InputError: a target slice whose pixels could not be read.
    """
    runtime = Runtime(device=next(model.parameters()).device)
    batch = {"hu": torch.from_numpy(np.array(hu))[None], "readable": torch.from_numpy(np.array(readable))[None],
             "mask": torch.ones((1, len(hu)), dtype=torch.bool)}
    x, keep = series_input(batch, data, runtime)
    row_of = torch.cumsum(keep[0].long(), 0) - 1  # slice -> its row of x
    with torch.no_grad():
        context = x.new_zeros((1, len(hu), model.out_features))
        context[keep] = model.encode(x)
    probs, maps = [], []
    # cuDNN's RNN backward refuses eval mode; the native kernels give the same numbers
    with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
        for t in targets:
            if not readable[t]:
                raise InputError(f"slice {t} of the series could not be read: it has no pixels to explain")
            with last_feature_map(model.encoder, settings.min_side) as found:
                embedding = model.encode(x[row_of[t]][None])
            activation = found[0]
            logits, grads = _logit_gradients(model, context, embedding, t, keep, settings.steps, labels)
            cams = []
            for k in range(len(labels)):  # chain rule from the embedding's gradient down to the feature map
                (grad,) = torch.autograd.grad(embedding, activation, grads[k:k + 1], retain_graph=k < len(labels) - 1)
                cams.append(_weigh(grad, activation, settings.weighting)[0])
            probs.append(torch.sigmoid(logits).float().cpu().numpy())
            maps.append(torch.stack(cams).detach().float().cpu().numpy())
    return np.stack(probs), np.stack(maps)


def _weigh(grad: torch.Tensor, activation: torch.Tensor, weighting: str) -> torch.Tensor:
    """(M, h, w) map from (M, K, h, w) gradients and activations: Layer-CAM or Grad-CAM."""
    if weighting == "layercam":
        return torch.relu((torch.relu(grad) * activation).sum(dim=1))
    return torch.relu((grad.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1))


def _logit_gradients(model: IchModel, context: torch.Tensor, embedding: torch.Tensor, t: int, keep: torch.Tensor,
                     steps: int, labels: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's logits at slice ``t`` and their gradients with respect to its embedding.

    The gradients are averaged over ``steps`` midpoints of the straight path from the head's
    missing-slice embedding to ``embedding`` (0 steps: the gradient at ``embedding``). One backward
    pass gives them all: the series is one batch row per (path point, label), row (p, k)
    backpropagating logit ``labels[k]`` into its own copy of the slice's embedding.

    Args:
        context: (1, N, F) embeddings of the series (constants).
        embedding: (1, F) the embedding of slice ``t``.
        keep: (1, N) bool, real readable slices.

    Returns:
        logits (6,) at ``embedding``, detached, and (L, F) gradients: row k for logit ``labels[k]``.
    """
    n, point = len(labels), embedding.detach()
    if steps:
        start = model.head.missing_embedding.detach().to(point.dtype)[None]
        alphas = (torch.arange(steps, device=point.device, dtype=point.dtype) + 0.5) / steps
        point = torch.cat([start + alphas[:, None] * (point - start), point])  # the path, then the embedding
    leaf = point.repeat_interleave(n, dim=0).requires_grad_(True)  # row p * n + j
    copies = context.expand(len(leaf), -1, -1)
    emb = torch.cat([copies[:, :t], leaf[:, None], copies[:, t + 1:]], dim=1)
    mask = torch.ones_like(keep).expand(len(leaf), -1)
    logits = model.head(emb, mask, keep.expand(len(leaf), -1))[:, t].reshape(len(point), n, len(LABELS))
    chosen = logits[:, torch.arange(n, device=leaf.device), torch.as_tensor(labels, device=leaf.device)]
    (grads,) = torch.autograd.grad(chosen.sum(), leaf)
    grads = grads.reshape(len(point), n, -1)
    return logits[-1, 0].detach(), grads[:-1].mean(dim=0) if steps else grads[0]


def _taps(n_out: int, n_in: int, start: float, side: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps from ``n_in`` samples spread over [start, start + side) to pixels 0..n_out-1 (pixel
    centres aligned, clamped at the ends).

    Returns:
        (n_out,) lower and upper sample indices, the upper's float32 weight, and the pixels inside
        [start, start + side) (bool).
    """
    where = (np.arange(n_out) + 0.5 - start) / side
    source = np.clip(where * n_in - 0.5, 0, n_in - 1)
    lower = np.floor(source).astype(np.int64)
    return lower, np.minimum(lower + 1, n_in - 1), (source - lower).astype(np.float32), (where >= 0) & (where < 1)


def to_original(image: np.ndarray, box: CacheBox, rows: int, cols: int, fill: float = 0.0) -> np.ndarray:
    """Maps an image covering a cached slice onto the original pixel grid (bilinear).

    Args:
        image: (..., h, w) float values over the cached (S, S) square (heatmaps, or the cached HU slice).
        box: where that square lies in the original grid (:func:`ich3d.dataset.crop.cache_box`).
        rows, cols: the original image's shape.
        fill: the value of original pixels outside the square.

    Returns:
        (..., rows, cols) float32.
    """
    image = np.asarray(image, dtype=np.float32)
    low, high, weight, row_inside = _taps(rows, image.shape[-2], box.top, box.side)
    across = image[..., low, :] * (1 - weight)[:, None] + image[..., high, :] * weight[:, None]
    low, high, weight, col_inside = _taps(cols, image.shape[-1], box.left, box.side)
    out = across[..., low] * (1 - weight) + across[..., high] * weight  # elementwise: no BLAS threads
    out[..., ~(row_inside[:, None] & col_inside[None, :])] = fill
    return out


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
