"""Batch transforms on the training device: HU → windowed channels, resizing, augmentation.

Everything here works on whole batches (no per-slice Python loops) and draws its randomness from an
explicit CPU ``torch.Generator``, so results are identical on any device for a given seed. Augmentation
parameters are drawn per *group* (a series) and shared by all of its slices: a series is flipped,
rotated and re-windowed as one volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ich3d.config import AugmentConfig
from ich3d.constants import BSB_WINDOWS, WINDOWS
from ich3d.data.windowing import window

_BSB = torch.tensor([WINDOWS[name] for name in BSB_WINDOWS])  # (3, 2) centre, width in HU
#: Control points per side of the elastic warp's displacement field (bicubic between them).
ELASTIC_GRID = 5


@dataclass
class AugmentParams:
    """Per-group augmentation parameters.

    Attributes:
        flip: (G,) bool, left-right flip.
        theta: (G, 2, 3) float32 affine matrices for ``F.affine_grid`` (normalised coordinates).
        windows: (G, 3, 2) float32 jittered (centre, width) of the BSB windows in HU.
        warp: (G, 2, ELASTIC_GRID, ELASTIC_GRID) float32 elastic displacements (x, y) at the control
            points, in normalised coordinates (2 = the image side); None when the elastic warp is off.
    """

    flip: torch.Tensor
    theta: torch.Tensor
    windows: torch.Tensor
    warp: torch.Tensor | None = None

    def take(self, group: torch.Tensor) -> "AugmentParams":
        """Parameters of each item, given its (M,) int64 group index."""
        return AugmentParams(self.flip[group], self.theta[group], self.windows[group],
                             None if self.warp is None else self.warp[group])

    @staticmethod
    def cat(parts: list["AugmentParams"]) -> "AugmentParams":
        """The parameters of several draws, one after the other."""
        warps = [part.warp for part in parts]
        return AugmentParams(torch.cat([part.flip for part in parts]), torch.cat([part.theta for part in parts]),
                             torch.cat([part.windows for part in parts]),
                             None if any(w is None for w in warps) else torch.cat(warps))  # fmt: skip


def sample_augment(groups: int, cfg: AugmentConfig, generator: torch.Generator) -> AugmentParams:
    """Draws flip, affine, window-jitter and (when on) elastic parameters for ``groups`` groups (on the CPU).
    With the elastic warp off nothing more is drawn, so the other parameters do not depend on it."""

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator) * 2 - 1

    flip = (torch.rand(groups, generator=generator) < 0.5) if cfg.flip else torch.zeros(groups, dtype=torch.bool)
    angle = uniform(groups) * math.radians(cfg.rotate_deg)
    scale = 1 + uniform(groups) * cfg.scale
    shift = uniform(groups, 2) * cfg.translate * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], -1), torch.stack([sin, cos, shift[:, 1]], -1)], 1)
    jitter = 1 + uniform(groups, 3, 2) * cfg.window_jitter
    warp = None
    if cfg.elastic > 0:  # standard deviation cfg.elastic x the image side, 2 normalised units
        warp = torch.randn((groups, 2, ELASTIC_GRID, ELASTIC_GRID), generator=generator) * (2 * cfg.elastic)
    return AugmentParams(flip, theta.float(), _BSB[None] * jitter, warp)


def to_input(hu: torch.Tensor, size: int, params: AugmentParams | None = None, augment: bool = False) -> torch.Tensor:
    """Turns int16 HU slices into windowed, optionally augmented network input.

    Args:
        hu: (M, K, S0, S0) int16 Hounsfield units, K neighbouring slices per item (K = 1 for BSB).
        size: output side S; the cache is resized (antialiased) when S0 != S.
        params: per-item parameters (already expanded to M items); None for the plain BSB windows.
        augment: apply the flip and affine parts of ``params`` (window jitter always applies).

    Returns:
        (M, 3 * K, S, S) float32 in [0, 1], channels ordered (slice, window).
    """
    m, k = hu.shape[:2]
    x = hu.float()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    windows = (params.windows if params is not None else _BSB[None].expand(m, 3, 2)).to(x.device)
    centre = windows[:, None, :, 0, None, None]  # (M, 1, 3, 1, 1)
    width = windows[:, None, :, 1, None, None]
    x = window(x[:, :, None], centre, width).reshape(m, 3 * k, size, size)
    if augment and params is not None:
        x = _affine_flip(x, params)
    return x


def _affine_flip(x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Applies per-item affine and elastic warps, then flips, to (M, C, S, S) windowed images (0 = outside)."""
    grid = F.affine_grid(params.theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    if params.warp is not None:  # one sampling: the smooth displacement field is added to the affine grid
        field = F.interpolate(params.warp.to(x.device, x.dtype), size=x.shape[-2:], mode="bicubic", align_corners=True)
        grid = grid + field.permute(0, 2, 3, 1)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return torch.where(params.flip.to(x.device)[:, None, None, None], x.flip(-1), x)


def series_neighbours(hu: torch.Tensor, readable: torch.Tensor, context: int) -> torch.Tensor:
    """Stacks each slice of padded series with its neighbours for 2.5D input.

    Args:
        hu: (B, N, S, S) int16 series, padded at the end.
        readable: (B, N) bool; unreadable or padded neighbours are replaced by the centre slice.
        context: neighbours per side (0: just the slice).

    Returns:
        (B, N, 2 * context + 1, S, S) int16.
    """
    b, n = hu.shape[:2]
    centre = torch.arange(n, device=hu.device)[:, None]
    offsets = torch.arange(-context, context + 1, device=hu.device)[None, :]
    index = (centre + offsets).clamp(0, n - 1).expand(b, n, 2 * context + 1)  # (B, N, K)
    ok = torch.gather(readable[:, :, None].expand(b, n, 2 * context + 1), 1, index)
    index = torch.where(ok, index, centre.expand_as(index))
    flat = index.reshape(b, -1)
    gathered = hu[torch.arange(b, device=hu.device)[:, None], flat]
    return gathered.reshape(b, n, 2 * context + 1, *hu.shape[-2:])
