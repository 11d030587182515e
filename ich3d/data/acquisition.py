"""Acquisition augmentations: a series as another scanner, protocol or dose would have shown it.

Each augmentation stands for one physical source of variation between sites (docs/design.md §3):
blood density (the patient's, not the scanner's, but it differs between populations), slice
thickness (partial-volume averaging along z), in-plane resolution, reconstruction kernel, dose
(correlated noise), HU calibration drift and intensity non-uniformity. They work in Hounsfield units
on the int16 cache, before windowing, in the order of :data:`ich3d.config.ACQUISITION` (the patient,
then roughly the order of the imaging chain), and return int16 HU clipped to the cache's range.

A series gets one draw per epoch: :meth:`Acquisition.draw` is a pure function of (seed, epoch, series
UID), so every slice the slice stage samples from a series in an epoch — and every neighbour of a 2.5D
input — sees the same scanner, and a run is reproducible from its seed. Only the noise differs between
slices (as on a scanner), keyed by (draw, slice). Smoothing and sharpening (unsharp masking) use
MONAI's Gaussian filter, resizing torch's ``interpolate`` (what MONAI's transforms run, without their
per-call metadata); the non-uniformity field is written here because MONAI's bias field is
multiplicative (MR), while CT's beam-hardening and scatter errors add HU.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ich3d.config import AugmentConfig
from ich3d.constants import HU_MAX, HU_MIN


@dataclass(frozen=True)
class SeriesDraw:
    """One series' acquisition in one epoch; each field's neutral value means "not applied".

    Attributes:
        key: seed of the series' per-slice noise.
        density: factor of blood's HU excess over grey matter (1: as acquired).
        thickness: slab thickness in slice spacings (1: as acquired).
        resolution: in-plane down-sampling factor (1: none).
        kernel: > 0 smoothing sigma in pixels, < 0 minus the sharpening amount, 0: none.
        noise_sd, noise_sigma: added noise in HU (0: none) and its correlation sigma in pixels.
        scale, offset: calibration, ``hu * scale + offset``.
        field: (6,) coefficients in HU of the quadratic non-uniformity field (zeros: none).
    """

    key: int
    density: float = 1.0
    thickness: float = 1.0
    resolution: float = 1.0
    kernel: float = 0.0
    noise_sd: float = 0.0
    noise_sigma: float = 0.0
    scale: float = 1.0
    offset: float = 0.0
    field: tuple[float, ...] = (0.0,) * 6


def epoch_acquisition(cfg: AugmentConfig, seed: int, epoch: int) -> "Acquisition | None":
    """The acquisition augmentations of a training epoch, or None when all are off."""
    return Acquisition(cfg, seed, epoch) if cfg.acquisition_on else None


class Acquisition:
    """The acquisition augmentations of one epoch (construct one per epoch).

    Args:
        cfg: the ``augment`` config.
        seed: the run's seed.
        epoch: the epoch; with the seed and a series' UID it fixes the series' draw.
    """

    def __init__(self, cfg: AugmentConfig, seed: int, epoch: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.epoch = epoch

    @property
    def margin(self) -> int:
        """Neighbours on each side a slice's thickness averaging may read."""
        cfg = self.cfg.thickness
        return int(np.ceil((cfg.factor - 1) / 2)) if cfg.p > 0 else 0

    def draw(self, series_uid: str) -> SeriesDraw:
        """The draw of a series this epoch. Every augmentation consumes its random numbers whether it
        applies or not, so switching one off leaves the others' draws unchanged."""
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, self.epoch, series_key(series_uid), 22])
        on = rng.random(6) < [cfg.thickness.p, cfg.resolution.p, cfg.kernel.p, cfg.noise.p, cfg.calibration.p,
                              cfg.nonuniformity.p]
        u = rng.random(7).tolist()
        sharper = rng.random() < 0.5
        field = (rng.uniform(-1, 1, 6) * rng.random() * cfg.nonuniformity.hu / 2).tolist()
        kernel = -u[2] * cfg.kernel.sharpen if sharper else u[2] * cfg.kernel.smooth
        key = int(rng.integers(2**62))
        density_on, density_u = rng.random() < cfg.density.p, rng.random()  # drawn last: the others' draws predate it
        return SeriesDraw(
            key=key,
            density=1 + (2 * density_u - 1) * cfg.density.contrast if density_on else 1.0,
            thickness=1 + u[0] * (cfg.thickness.factor - 1) if on[0] else 1.0,
            resolution=cfg.resolution.factor + u[1] * (1 - cfg.resolution.factor) if on[1] else 1.0,
            kernel=kernel if on[2] else 0.0,
            noise_sd=u[3] * cfg.noise.sd if on[3] else 0.0,
            noise_sigma=0.5 + u[4] * cfg.noise.correlation,
            scale=1 + (2 * u[5] - 1) * cfg.calibration.scale if on[4] else 1.0,
            offset=(2 * u[6] - 1) * cfg.calibration.offset if on[4] else 0.0,
            field=tuple(field) if on[5] else (0.0,) * 6,
        )

    def apply(self, hu: np.ndarray, series_uid: str, slices: np.ndarray, readable: np.ndarray | None = None,
              span: tuple[int, int] | None = None) -> np.ndarray:
        """A series' draw this epoch (:meth:`draw`) applied to consecutive slices of it (:func:`apply_draw`)."""
        return apply_draw(hu, self.draw(series_uid), slices, readable, span)


def apply_draw(hu: np.ndarray, draw: SeriesDraw, slices: np.ndarray, readable: np.ndarray | None = None,
               span: tuple[int, int] | None = None) -> np.ndarray:
    """Applies a series' draw to consecutive slices of it.

    Args:
        hu: (N, S, S) int16 HU, consecutive slices of one series in position order.
        draw: the series' draw (:meth:`Acquisition.draw`).
        slices: (N,) int64 identifiers of the slices (the noise of a slice depends on it, so a slice
            read twice, e.g. as a neighbour, gets the same noise).
        readable: (N,) bool; unreadable slices are left out of thickness averaging and returned
            unchanged. None: all readable.
        span: [first, last) of the N slices to return; the others are only read by thickness
            averaging (a slice stage item is one slice of a few read). None: all N.

    Returns:
        (last - first, S, S) int16 HU in [HU_MIN, HU_MAX].
    """
    first, last = span if span is not None else (0, len(hu))
    readable = np.ones(len(hu), dtype=bool) if readable is None else np.asarray(readable, dtype=bool)
    x = torch.from_numpy(np.asarray(hu, dtype=np.float32))
    size = x.shape[-1]
    if draw.density != 1:
        x = _density(x, draw.density)
    if draw.thickness > 1:
        x = _slab_average(x, draw.thickness, torch.from_numpy(readable))
    x, hu, readable, slices = x[first:last], hu[first:last], readable[first:last], slices[first:last]
    if draw.resolution < 1:
        small = max(8, round(size * draw.resolution))
        x = F.interpolate(x[None], size=(small, small), mode="area")
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0]
    if draw.kernel > 0:
        x = _gaussian(x, draw.kernel)
    elif draw.kernel < 0:
        x = x - draw.kernel * (x - _gaussian(x, 1.0))  # unsharp masking
    if draw.noise_sd > 0:
        x = x + _noise(draw, slices, size)
    x = x * draw.scale + draw.offset
    if any(draw.field):
        x = x + _field(draw.field, size)
    out = x.round().clamp(HU_MIN, HU_MAX).to(torch.int16).numpy()
    return np.where(readable[:, None, None], out, hu)


#: The blood density map's fixed points (HU): grey matter, the top of the blood range, the start of bone.
DENSITY_POINTS = (40.0, 100.0, 140.0)


def _density(x: torch.Tensor, factor: float) -> torch.Tensor:
    """HU with blood's excess over grey matter times ``factor``: piecewise linear through
    (40, 40), (100, 40 + 60 * factor), (140, 140), identity elsewhere (monotonic for factor < 5/3)."""
    grey, top, bone = DENSITY_POINTS
    blood_top = grey + (top - grey) * factor
    blood = grey + (x - grey) * factor
    dense = blood_top + (x - top) * (bone - blood_top) / (bone - top)
    return torch.where((x > grey) & (x <= top), blood, torch.where((x > top) & (x < bone), dense, x))


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, S, S) slices each smoothed by a Gaussian of ``sigma`` pixels: MONAI's ``GaussianFilter`` (what
    its ``GaussianSmooth`` transform runs, without the transform's per-call metadata, which cost three
    quarters of a slice's augmentation time)."""
    from monai.networks.layers import GaussianFilter

    return GaussianFilter(2, sigma, approx="erf")(x[None])[0]


def _slab_average(x: torch.Tensor, thickness: float, readable: torch.Tensor) -> torch.Tensor:
    """Partial-volume average of each slice with its neighbours over a slab ``thickness`` spacings thick.

    Neighbour j slices away is weighted by the overlap of its interval [j - 1/2, j + 1/2] with the slab
    [-thickness / 2, thickness / 2]; unreadable neighbours and those past the ends are left out (the
    weights renormalised). x: (N, S, S) float HU.
    """
    reach = int(np.ceil((thickness - 1) / 2))
    offsets = np.arange(-reach, reach + 1)
    weights = np.clip(np.minimum(offsets + 0.5, thickness / 2) - np.maximum(offsets - 0.5, -thickness / 2), 0, 1)
    n = len(x)
    total = torch.zeros_like(x)
    norm = torch.zeros(n)
    for offset, weight in zip(offsets.tolist(), weights.tolist()):
        lo, hi = max(0, -offset), min(n, n - offset)  # slices i whose neighbour i + offset exists
        ok = readable[lo + offset:hi + offset].float() * weight
        total[lo:hi] += x[lo + offset:hi + offset] * ok[:, None, None]
        norm[lo:hi] += ok
    return torch.where(norm[:, None, None] > 0, total / norm.clamp(min=1e-6)[:, None, None], x)


def _noise(draw: SeriesDraw, slices: np.ndarray, size: int) -> torch.Tensor:
    """(N, S, S) float32 correlated Gaussian noise of std ``draw.noise_sd`` HU, one field per slice."""
    white = np.stack([np.random.default_rng([draw.key, int(s)]).standard_normal((size, size), dtype=np.float32)
                      for s in slices])
    shaped = _gaussian(torch.from_numpy(white), draw.noise_sigma)
    std = shaped.flatten(1).std(dim=1).clamp(min=1e-6)
    return shaped * (draw.noise_sd / std)[:, None, None]


def _field(coefficients: tuple[float, ...], size: int) -> torch.Tensor:
    """(S, S) additive field in HU: c0 x + c1 y + c2 x² + c3 y² + c4 x y + c5 (x² + y²), x, y in [-1, 1],
    centred on its mean."""
    axis = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    terms = torch.stack([x, y, x * x, y * y, x * y, x * x + y * y])
    field = torch.einsum("k,kij->ij", torch.tensor(coefficients, dtype=torch.float32), terms)
    return field - field.mean()


def series_key(series_uid: str) -> int:
    """A stable integer of a series UID (the draw's key; independent of table order and fold)."""
    return zlib.crc32(str(series_uid).encode())
