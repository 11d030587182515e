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
  when none is that large; a timm backbone's candidates are its ``feature_info`` stages). The final 4 x 4 map of the small net at 128 px cannot point at a lesion;
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

This module is the model mathematics; drawing and the per-image command are :mod:`ich3d.app.explain`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ich3d.config import DataConfig
from ich3d.constants import LABELS
from ich3d.data.batching import series_input
from ich3d.dataset.crop import CacheBox
from ich3d.errors import InputError
from ich3d.models.model import IchModel
from ich3d.runtime import Runtime

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
