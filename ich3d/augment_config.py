"""The ``augment:`` section of the training config: geometry, windows and acquisition augmentations.

Part of the config tree of :mod:`ich3d.config` (which re-exports :class:`AugmentConfig`); kept apart
because each acquisition augmentation is a small section of its own (docs/design.md §3).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from ich3d.errors import ConfigError


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


@dataclass(frozen=True)
class _Acquisition:
    """One acquisition augmentation: applied to a series with probability ``p`` (docs/design.md §3)."""

    KEY: ClassVar[str] = ""
    p: float = 0.0

    def __post_init__(self) -> None:
        _check(0 <= self.p <= 1, f"augment.{self.KEY}.p", "must be in [0, 1]")
        for f in dataclasses.fields(self):
            _check(getattr(self, f.name) >= 0, f"augment.{self.KEY}.{f.name}", "must be >= 0")


@dataclass(frozen=True)
class DensityAugment(_Acquisition):
    """Another blood density (haematocrit, clot age and retraction, anaemia): the HU excess of blood
    over grey matter times U(1 - ``contrast``, 1 + ``contrast``) — fainter hyperacute or anaemic bleeds,
    brighter retracted clots. A piecewise-linear map of the soft-tissue range that leaves grey matter
    (40 HU) and everything below it, and bone above 140 HU, unchanged."""

    KEY: ClassVar[str] = "density"
    contrast: float = 0.4

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.contrast <= 0.6, "augment.density.contrast",
               "must be in [0, 0.6] (blood stays above grey matter and below bone)")


@dataclass(frozen=True)
class NoiseAugment(_Acquisition):
    """A lower dose: extra CT noise of standard deviation U(0, ``sd``) HU, spatially correlated by a
    Gaussian of sigma U(0.5, 0.5 + ``correlation``) pixels (the texture a reconstruction kernel gives it)."""

    KEY: ClassVar[str] = "noise"
    sd: float = 10.0
    correlation: float = 1.0


@dataclass(frozen=True)
class KernelAugment(_Acquisition):
    """Another reconstruction kernel: half the draws smoother (a Gaussian of sigma U(0, ``smooth``)
    pixels), half sharper (unsharp masking of amount U(0, ``sharpen``) above a 1-pixel Gaussian)."""

    KEY: ClassVar[str] = "kernel"
    smooth: float = 1.0
    sharpen: float = 1.5


@dataclass(frozen=True)
class CalibrationAugment(_Acquisition):
    """HU calibration drift of the scanner: ``hu * (1 + U(±scale)) + U(±offset)``."""

    KEY: ClassVar[str] = "calibration"
    offset: float = 10.0
    scale: float = 0.03


@dataclass(frozen=True)
class ThicknessAugment(_Acquisition):
    """A thicker reconstruction: each slice becomes the partial-volume average of a slab U(1, ``factor``)
    slice spacings thick centred on it (its neighbours weighted by their overlap)."""

    KEY: ClassVar[str] = "thickness"
    factor: float = 2.5


@dataclass(frozen=True)
class ResolutionAugment(_Acquisition):
    """Coarser in-plane resolution (larger pixels, a blurrier detector): down-sampling by U(``factor``, 1)
    (antialiased) and back up, bilinear."""

    KEY: ClassVar[str] = "resolution"
    factor: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0 < self.factor <= 1, "augment.resolution.factor", "must be in (0, 1]")


@dataclass(frozen=True)
class NonuniformityAugment(_Acquisition):
    """Intensity non-uniformity (beam hardening cupping, scatter, heel effect): a smooth additive field,
    a random quadratic polynomial over the image of at most U(0, ``hu``) HU."""

    KEY: ClassVar[str] = "nonuniformity"
    hu: float = 8.0


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation, applied per series (never at inference; docs/design.md §3).

    Attributes:
        flip, rotate_deg, scale, translate: head position and size: a left-right flip and an affine
            warp (rotation in degrees, scale and shift as fractions of the image), per batch item.
        window_jitter: relative jitter of the display windows' centres and widths.
        elastic: anatomy (head shape, ventricles, sulci): a smooth random displacement field, its
            standard deviation this fraction of the image side (5 x 5 control points, bicubic between
            them), one per series, folded into the affine warp; 0 = off.
        density, thickness, resolution, kernel, noise, calibration, nonuniformity: acquisition augmentations,
            applied in HU before windowing with one draw per series and epoch (all off by default).
    """

    flip: bool = True
    rotate_deg: float = 10.0
    scale: float = 0.1
    translate: float = 0.05
    window_jitter: float = 0.1
    elastic: float = 0.0
    density: DensityAugment = field(default_factory=DensityAugment)
    noise: NoiseAugment = field(default_factory=NoiseAugment)
    kernel: KernelAugment = field(default_factory=KernelAugment)
    calibration: CalibrationAugment = field(default_factory=CalibrationAugment)
    thickness: ThicknessAugment = field(default_factory=ThicknessAugment)
    resolution: ResolutionAugment = field(default_factory=ResolutionAugment)
    nonuniformity: NonuniformityAugment = field(default_factory=NonuniformityAugment)

    def __post_init__(self) -> None:
        for name in ("rotate_deg", "scale", "translate", "window_jitter"):
            _check(getattr(self, name) >= 0, f"augment.{name}", "must be >= 0")
        _check(0 <= self.elastic <= 0.1, "augment.elastic", "must be in [0, 0.1] (a fraction of the image side)")

    @property
    def acquisition_on(self) -> bool:
        """Whether any acquisition augmentation can apply."""
        return any(getattr(self, name).p > 0 for name in ACQUISITION)


#: The acquisition augmentations, in the order they are applied to a series (docs/design.md §3).
ACQUISITION = ("density", "thickness", "resolution", "kernel", "noise", "calibration", "nonuniformity")
