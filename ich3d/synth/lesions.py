"""Hemorrhages of the synthetic head (ich3d.synth.phantom): five subtype geometries as 3-D objects, and the
rendering of a labelled slice.

epidural: biconvex lens against the inner table, short; subdural: crescent along the inner table, long;
subarachnoid: blood in the sulci, fissures and cisterns of a region; intraparenchymal: lobulated clot
with a hypodense edema rim; intraventricular: blood in the ventricles, layered (fluid level in the
dependent horns) or a cast. A slice is positive for a subtype where its lesions take over at least
MIN_LESION_AREA_MM2 of it; contrast falls towards a lesion's cranial and caudal ends. The pixels a
lesion takes over form the slice's lesion mask (one bit per subtype, :data:`MASK_BITS`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ich3d.constants import LABELS
from ich3d.synth.phantom import (
    AIR_HU,
    Box,
    Ellipsoid,
    Head,
    SliceFields,
    SliceGrid,
    alpha,
    blend,
    render_anatomy,
    sub,
)

SUBTYPES: tuple[str, ...] = LABELS[1:]
#: Cross-sections smaller than this (mm^2, and at least 3 pixels) do not make a slice positive.
MIN_LESION_AREA_MM2 = 8.0
#: Contrast of a lesion at its cranial and caudal ends relative to its centre (partial volume).
END_CONTRAST = 0.35
#: Bit of each subtype in a lesion mask (uint8, bits may combine where lesions overlap; 0 = no blood):
#: epidural 1, intraparenchymal 2, intraventricular 4, subarachnoid 8, subdural 16.
MASK_BITS: dict[str, int] = {name: 1 << k for k, name in enumerate(SUBTYPES)}


@dataclass(frozen=True)
class Lesion:
    """One hemorrhage.

    Attributes:
        label: its subtype (one of LABELS[1:]).
        extent: where the blood is (epidural, intraparenchymal) or may be (the others); its third axis runs
            craniocaudally: contrast falls to END_CONTRAST at its ends.
        hu: blood density at the centre, HU.
        size: subdural: greatest thickness; intraparenchymal: width of the edema rim (mm).
        level: intraventricular: blood only where patient y >= level (dependent layering), mm.
    """

    label: str
    extent: Ellipsoid
    hu: float
    size: float = 0.0
    level: float = -np.inf


@dataclass(frozen=True)
class _Cut:
    """A lesion's pixel box on one slice: the image, its local coordinates there and the slice's fields."""

    img: np.ndarray
    grid: SliceGrid
    box: Box
    s: list[np.ndarray]
    rho2: np.ndarray
    fields: SliceFields

    def field(self, name: str) -> np.ndarray:
        """A field of the slice on the box."""
        return sub(getattr(self.fields, name), self.box)


def paint_lesion(img: np.ndarray, lesion: Lesion, grid: SliceGrid, fields: SliceFields, mask: np.ndarray) -> int:
    """Paint `lesion` into `img` (HU, in place) and its subtype's bit into `mask` ((rows, cols) uint8, in
    place) on its pixels: those it takes over by more than half (coverage times contrast, which falls
    towards the lesion's ends). Returns how many pixels that is."""
    box = lesion.extent.box(grid, margin=lesion.size)
    if box is None:
        return 0
    s = lesion.extent.local(grid, box)
    cut = _Cut(img, grid, box, s, s[0] * s[0] + s[1] * s[1] + s[2] * s[2], fields)
    frac = _FRACTIONS[lesion.label](lesion, cut)
    frac *= 1.0 - (1.0 - END_CONTRAST) * np.minimum(s[2] * s[2], 1.0)
    view = sub(img, box)
    view += frac * np.maximum(lesion.hu - view, 0.0)  # blood replaces tissue, never darkens bone
    taken = frac > 0.5
    sub(mask, box)[taken] |= np.uint8(MASK_BITS[lesion.label])
    return int(np.count_nonzero(taken))


def render_slice(head: Head, lesions: list[Lesion],
                 grid: SliceGrid) -> tuple[np.ndarray, tuple[int, ...], np.ndarray]:  # fmt: skip
    """Noise-free HU of one slice, its six labels and its lesion mask.

    A subtype is positive when its lesions cover more than half of at least MIN_LESION_AREA_MM2 (and 3
    pixels) of the slice; ``any`` is their OR. The mask holds every pixel a lesion takes over, also on
    slices where that is too little to make them positive.

    Returns:
        HU (rows, cols) float32; labels (0/1, LABELS order); mask (rows, cols) uint8 of :data:`MASK_BITS`.
    """
    img = np.full((grid.rows, grid.cols), AIR_HU, dtype=np.float32)
    mask = np.zeros((grid.rows, grid.cols), dtype=np.uint8)
    box = head.scalp.box(grid)
    if box is None:
        return img, (0,) * len(LABELS), mask
    crop = grid.crop(box)  # everything happens inside the head
    head_img, fields = render_anatomy(head, crop)
    found = dict.fromkeys(SUBTYPES, 0)
    for lesion in lesions:
        found[lesion.label] += paint_lesion(head_img, lesion, crop, fields, sub(mask, box))
    sub(img, box)[...] = head_img
    least = max(3, int(np.ceil(MIN_LESION_AREA_MM2 / grid.spacing**2)))
    subtypes = tuple(int(found[name] >= least) for name in SUBTYPES)
    return img, (int(any(subtypes)), *subtypes), mask


def _epidural(lesion: Lesion, cut: _Cut) -> np.ndarray:
    """Biconvex lens: the extent (centred on the inner table) inside the cavity."""
    e = cut.grid.spacing
    return alpha(lesion.extent.distance_from_local(cut.s, cut.rho2), e) * alpha(cut.field("cavity"), e)


def _subdural(lesion: Lesion, cut: _Cut) -> np.ndarray:
    """Crescent: a band under the inner table, thickest at the extent's centre."""
    thickness = lesion.size * np.sqrt(np.clip(1.0 - cut.rho2, 0.0, 1.0))
    cav = cut.field("cavity")
    return np.clip(np.minimum(-cav, cav + thickness) / cut.grid.spacing, 0.0, 1.0)


def _subarachnoid(lesion: Lesion, cut: _Cut) -> np.ndarray:
    """Blood in the subarachnoid CSF (sulci, fissures, cisterns) inside the extent."""
    inside = alpha(lesion.extent.distance_from_local(cut.s, cut.rho2), cut.grid.spacing)
    return cut.field("subarachnoid") * inside


def _intraventricular(lesion: Lesion, cut: _Cut) -> np.ndarray:
    """Blood in the ventricles inside the extent, below a fluid level (patient y >= level)."""
    e = cut.grid.spacing
    frac = cut.field("ventricles") * alpha(lesion.extent.distance_from_local(cut.s, cut.rho2), e)
    if np.isfinite(lesion.level):
        frac *= alpha(cut.grid.linear(np.array([0.0, -1.0, 0.0]), lesion.level, cut.box), e)
    return frac


def _intraparenchymal(lesion: Lesion, cut: _Cut) -> np.ndarray:
    """Lobulated clot in the parenchyma; paints its hypodense edema rim (18 HU) first."""
    s, e = cut.s, cut.grid.spacing
    lobes = 1.0 + 0.12 * np.sin(4.0 * s[0] + 2.0 * s[2]) + 0.1 * np.sin(5.0 * s[1] - 3.0 * s[0] + 1.0)
    d = (np.sqrt(cut.rho2) * lobes - 1.0) * float(np.mean(lesion.extent.axes))
    inside = alpha(cut.field("cavity") + 2.0, e)
    blend(cut.img, 18.0, alpha(d - lesion.size, 2.0 * e) * inside, cut.box)
    return alpha(d, e) * inside


_FRACTIONS = {
    "epidural": _epidural,
    "intraparenchymal": _intraparenchymal,
    "intraventricular": _intraventricular,
    "subarachnoid": _subarachnoid,
    "subdural": _subdural,
}


def sample_lesions(rng: np.random.Generator, head: Head, labels: list[str]) -> list[Lesion]:
    """One hemorrhage of each subtype in `labels`, placed in `head` with subtype-specific geometry."""
    return [_SAMPLERS[label](rng, head) for label in labels]


#: Grey matter, the reference a lesion's contrast is measured against (HU).
REFERENCE_HU = 40.0


def restyle(lesion: Lesion, contrast: float = 1.0, size: float = 1.0) -> Lesion:
    """The lesion with its HU difference from grey matter times `contrast` and its extent (half-axes
    about its centre) and thickness times `size`; the lesion itself when both are 1 (bit-identical)."""
    if contrast == 1.0 and size == 1.0:
        return lesion
    extent = replace(lesion.extent, axes=lesion.extent.axes * size)
    return replace(lesion, extent=extent, hu=REFERENCE_HU + (lesion.hu - REFERENCE_HU) * contrast,
                   size=lesion.size * size)


def _surface(rng: np.random.Generator, head: Head, elevation: tuple[float, float],
             lateral: bool = True) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """A point of the inner table (head coordinates) and the frame (normal, horizontal, craniocaudal) there."""
    az = np.radians(rng.uniform(-70, 70) + 180.0 * rng.integers(2) if lateral else rng.uniform(0, 360))
    el = np.radians(rng.uniform(*elevation))
    ray = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    axes = head.cerebrum.axes
    point = head.center + ray / np.sqrt(np.sum((ray / axes) ** 2))
    normal = (point - head.center) / axes**2
    normal /= np.linalg.norm(normal)
    across = np.cross([0.0, 0.0, 1.0], normal)
    across /= np.linalg.norm(across)
    return point, np.stack([normal, across, np.cross(normal, across)])


def _sample_epidural(rng: np.random.Generator, head: Head) -> Lesion:
    point, frame = _surface(rng, head, (-5, 45))
    axes = (rng.uniform(6, 13), rng.uniform(18, 32), rng.uniform(6, 13))
    return Lesion("epidural", head.pose.ellipsoid(point, axes, frame=frame), rng.uniform(60, 85))


def _sample_subdural(rng: np.random.Generator, head: Head) -> Lesion:
    point, frame = _surface(rng, head, (-10, 50))
    axes = (30.0, rng.uniform(35, 75), rng.uniform(15, 45))
    extent = head.pose.ellipsoid(point, axes, frame=frame)
    return Lesion("subdural", extent, rng.uniform(55, 80), size=rng.uniform(3, 14))


def _sample_subarachnoid(rng: np.random.Generator, head: Head) -> Lesion:
    if rng.random() < 0.5:  # basal cisterns and Sylvian fissures
        center = head.center + np.array([0.0, -8.0, -0.22 * head.cerebrum.axes[2]])
        axes, frame = (rng.uniform(30, 55), rng.uniform(25, 40), rng.uniform(12, 30)), np.eye(3)
    else:  # convexity
        point, frame = _surface(rng, head, (0, 60), lateral=False)
        center, axes = point - 5.0 * frame[0], (15.0, rng.uniform(20, 45), rng.uniform(15, 35))
    return Lesion("subarachnoid", head.pose.ellipsoid(center, axes, frame=frame), rng.uniform(55, 75))


def _sample_intraparenchymal(rng: np.random.Generator, head: Head) -> Lesion:
    where = rng.random()
    if where < 0.45:  # basal ganglia and thalamus
        center = head.center + [rng.choice([-1, 1]) * rng.uniform(12, 26), rng.uniform(-12, 14), rng.uniform(-2, 16)]
    elif where < 0.9:  # lobar
        point, _ = _surface(rng, head, (0, 50), lateral=False)
        center = head.center + rng.uniform(0.45, 0.7) * (point - head.center)
    else:  # cerebellar
        center = head.center + [rng.uniform(-20, 20), 0.42 * head.cerebrum.axes[1], -0.42 * head.cerebrum.axes[2]]
    axes = (rng.uniform(6, 22), rng.uniform(6, 22), rng.uniform(10, 25))
    extent = head.pose.ellipsoid(center, axes, yaw=rng.uniform(0, 180))
    return Lesion("intraparenchymal", extent, rng.uniform(60, 85), size=rng.uniform(2, 6))


def _sample_intraventricular(rng: np.random.Generator, head: Head) -> Lesion:
    low = rng.uniform(-25, 5)  # how far down the third and fourth ventricles the blood reaches
    extent = head.pose.ellipsoid(head.center + [0.0, 8.0, (low + 32) / 2], (40.0, 45.0, (32 - low) / 2))
    layered = rng.random() < 0.5  # a fluid level in the dependent (posterior) horns, else a cast
    level = head.pose.point(head.center + [0.0, rng.uniform(8, 20), 0.0])[1] if layered else -np.inf
    return Lesion("intraventricular", extent, rng.uniform(55, 80), level=level)


_SAMPLERS = {
    "epidural": _sample_epidural,
    "intraparenchymal": _sample_intraparenchymal,
    "intraventricular": _sample_intraventricular,
    "subarachnoid": _sample_subarachnoid,
    "subdural": _sample_subdural,
}
