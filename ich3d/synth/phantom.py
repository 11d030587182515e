"""Analytic 3-D head phantom in Hounsfield units (the anatomy), rendered one image plane at a time.

Coordinates are patient coordinates in mm (DICOM LPS: x to the patient's left, y posterior, z superior).
Every structure is an ellipsoid (or a union, cut or offset surface of ellipsoids) evaluated on the pixel
grid of a plane with broadcasting, on the pixel box its cross-section can touch; edges are blended over
one pixel (partial volume). A head is drawn once per patient (`sample_head`) and placed on the scanner
table once per series (`place_head`); ich3d.synth.lesions adds the hemorrhages.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

AIR_HU = -1000.0

Box = tuple[int, int, int, int]  # (row0, row1, col0, col1), half-open


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """(3, 3) matrix whose rows are a frame's axes, rotated by yaw (about z), pitch (x), roll (y), degrees."""
    cy, sy = np.cos(np.radians(yaw)), np.sin(np.radians(yaw))
    cp, sp = np.cos(np.radians(pitch)), np.sin(np.radians(pitch))
    cr, sr = np.cos(np.radians(roll)), np.sin(np.radians(roll))
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cr, 0, sr], [0, 1, 0], [-sr, 0, cr]])
    return (rz @ rx @ ry).T


@dataclass(frozen=True)
class SliceGrid:
    """Pixel grid of one image plane: pixel (i, j) lies at origin + j*spacing*row_dir + i*spacing*col_dir.

    Attributes:
        origin: (3,) ImagePositionPatient, mm. row_dir, col_dir: (3,) unit ImageOrientationPatient cosines.
        spacing: pixel spacing, mm. rows, cols: image shape.
    """

    origin: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    spacing: float
    rows: int
    cols: int

    @cached_property
    def normal(self) -> np.ndarray:
        """(3,) unit slice normal (row_dir x col_dir)."""
        return np.cross(self.row_dir, self.col_dir)

    @property
    def full(self) -> Box:
        """The box of the whole image."""
        return (0, self.rows, 0, self.cols)

    def crop(self, box: Box) -> SliceGrid:
        """The grid of the pixels in `box`."""
        origin = self.origin + self.spacing * (box[2] * self.row_dir + box[0] * self.col_dir)
        return SliceGrid(origin, self.row_dir, self.col_dir, self.spacing, box[1] - box[0], box[3] - box[2])

    def linear(self, vec: np.ndarray, offset: float, box: Box) -> np.ndarray:
        """``offset + vec . p`` at the pixels of `box`: (rows, cols) float32."""
        r0, r1, c0, c1 = box
        base = float(offset + vec @ self.origin)
        rows = base + float(vec @ self.col_dir) * self.spacing * np.arange(r0, r1, dtype=np.float32)
        cols = float(vec @ self.row_dir) * self.spacing * np.arange(c0, c1, dtype=np.float32)
        return rows[:, None] + cols[None, :]


@dataclass(frozen=True)
class Ellipsoid:
    """Ellipsoid ``|rot @ (p - center) / axes| <= 1``; rows of `rot` are its axes in patient coordinates.

    Attributes:
        center: (3,) mm. axes: (3,) half-axes, mm. rot: (3, 3) orthonormal.
    """

    center: np.ndarray
    axes: np.ndarray
    rot: np.ndarray

    def box(self, grid: SliceGrid, margin: float = 0.0) -> Box | None:
        """Pixel box holding the cross-section with the plane of `grid` (grown by `margin` mm), or None."""
        rel = self.center - grid.origin
        if abs(rel @ grid.normal) > self.extent(grid.normal):
            return None
        box = []
        for axis, n in ((grid.col_dir, grid.rows), (grid.row_dir, grid.cols)):
            mid, half = rel @ axis / grid.spacing, (self.extent(axis) + margin) / grid.spacing + 1.0
            lo, hi = max(0, int(np.floor(mid - half))), min(n, int(np.ceil(mid + half)) + 1)
            if lo >= hi:
                return None
            box += [lo, hi]
        return (box[0], box[1], box[2], box[3])

    def local(self, grid: SliceGrid, box: Box) -> list[np.ndarray]:
        """Normalised local coordinates ``(rot @ (p - center))_k / axes_k``: three (rows, cols) float32."""
        return [grid.linear(r / a, -float(r @ self.center) / a, box) for r, a in zip(self.rot, self.axes)]

    def distance(self, grid: SliceGrid, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """Approximate signed distance to the surface (mm, negative inside) and rho^2, both (rows, cols)."""
        s = self.local(grid, box)
        rho2 = s[0] * s[0] + s[1] * s[1] + s[2] * s[2]
        return self.distance_from_local(s, rho2), rho2

    def distance_from_local(self, s: list[np.ndarray], rho2: np.ndarray) -> np.ndarray:
        """Signed distance (mm) from `local` coordinates: ``(rho^2 - 1) / |grad rho^2|``, exact near the
        surface, which is where layers (scalp, bone, cortex) are cut from it."""
        grad2 = sum((sk * np.float32(1.0 / a)) ** 2 for sk, a in zip(s, self.axes))
        return (rho2 - 1.0) / (2.0 * np.sqrt(grad2) + 1e-6)

    def extent(self, direction: np.ndarray) -> float:
        """Half-length (mm) of the ellipsoid along the unit vector `direction`."""
        return float(np.sqrt(np.sum((self.axes * (self.rot @ direction)) ** 2)))


def alpha(distance: np.ndarray, edge: float) -> np.ndarray:
    """Inside fraction of a pixel from its signed distance (mm) to a surface, blended over `edge` mm."""
    frac = distance * np.float32(-1.0 / edge)
    frac += 0.5
    return np.clip(frac, 0.0, 1.0, out=frac)


def blend(img: np.ndarray, value: float | np.ndarray, frac: np.ndarray, box: Box | None = None) -> None:
    """Paint `value` over `img` (in place) with coverage `frac` in [0, 1], on `box` (default: all)."""
    view = img if box is None else img[box[0] : box[1], box[2] : box[3]]
    view += frac * (value - view)


def sub(arr: np.ndarray, box: Box) -> np.ndarray:
    """View of `arr` on `box`."""
    return arr[box[0] : box[1], box[2] : box[3]]


@dataclass(frozen=True)
class HeadParams:
    """One patient's anatomy in head coordinates (mm; u left, v posterior, w superior; origin mid-head).

    Attributes:
        axes: (3,) scalp half-axes. scalp, skull: thicknesses. frontal: extra frontal bone thickness.
        atrophy: 0 (young) .. 1 (old): ventricle and sulcal CSF. hu: tissue densities (HU) by name.
        waves: (6, 3) sulcal wave vectors (rad/mm), phases: (6,) -- the gyral pattern.
        calcified: choroid plexus calcifications present.
    """

    axes: np.ndarray
    scalp: float
    skull: float
    frontal: float
    atrophy: float
    hu: dict[str, float]
    waves: np.ndarray
    phases: np.ndarray
    calcified: bool


def sample_head(rng: np.random.Generator) -> HeadParams:
    """Draw one patient's head (size, shape, tissue densities, gyral pattern)."""
    a = rng.uniform(68, 80)
    directions = rng.normal(size=(6, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    ranges = {"scalp": (30, 50), "diploe": (700, 900), "table": (1350, 1600), "gm": (35, 40), "csf": (2, 12),
              "calc": (150, 400)}  # fmt: skip
    hu = {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in ranges.items()}
    hu["wm"] = float(np.clip(hu["gm"] - rng.uniform(8, 11), 25, 30))
    return HeadParams(
        axes=np.array([a, a + rng.uniform(12, 22), rng.uniform(78, 90)]),
        scalp=float(rng.uniform(3.5, 6.0)),
        skull=float(rng.uniform(5.0, 7.5)),
        frontal=float(rng.uniform(1.0, 5.0)),
        atrophy=float(rng.beta(2, 3)),
        hu=hu,
        waves=directions * rng.uniform(0.2, 0.3, size=(6, 1)),
        phases=rng.uniform(0, 2 * np.pi, size=6),
        calcified=bool(rng.random() < 0.5),
    )


@dataclass(frozen=True)
class Pose:
    """Where a head lies in patient coordinates: head = rot @ (p - center)."""

    center: np.ndarray
    rot: np.ndarray

    def ellipsoid(self, center: tuple[float, ...] | np.ndarray, axes: tuple[float, ...] | np.ndarray,
                  yaw: float = 0.0, pitch: float = 0.0, frame: np.ndarray | None = None) -> Ellipsoid:  # fmt: skip
        """An ellipsoid given in head coordinates (axes = rows of `frame`, or rotated by yaw/pitch, degrees)."""
        local = rotation(yaw, pitch) if frame is None else frame
        return Ellipsoid(self.point(np.asarray(center, float)), np.asarray(axes, float), local @ self.rot)

    def point(self, head_point: np.ndarray) -> np.ndarray:
        """(3,) head coordinates -> patient coordinates."""
        return self.center + self.rot.T @ head_point


@dataclass(frozen=True)
class Head:
    """A placed head: the ellipsoids of its anatomy in patient coordinates and its densities."""

    params: HeadParams
    pose: Pose
    center: np.ndarray  # (3,) centre of the cerebral cavity, head coordinates
    scalp: Ellipsoid
    cerebrum: Ellipsoid  # approximates the inner table above the skull base
    floor: tuple[np.ndarray, float]  # cut plane under the cerebrum: distance = offset + vec . p (mm)
    fossae: tuple[Ellipsoid, ...]  # posterior and middle cranial fossae, added to the cavity
    ridges: tuple[Ellipsoid, ...]  # petrous ridges and clivus, removed from the cavity
    base: tuple[tuple[Ellipsoid, float], ...]  # face core, sinuses, orbits: (shape, HU) outside the cavity
    deep: tuple[tuple[Ellipsoid, float], ...]  # basal ganglia and thalami: (shape, HU)
    stem: Ellipsoid
    cisterns: tuple[Ellipsoid, ...]
    ventricles: tuple[Ellipsoid, ...]
    calcs: tuple[Ellipsoid, ...]



def place_head(p: HeadParams, pose: Pose) -> Head:
    """Build the anatomy of `p` at `pose` (see the module docstring for the structures)."""
    ax = p.axes
    inner = ax - p.scalp - p.skull
    ca, cb, cc = inner[0], inner[1] - p.frontal / 2, inner[2]
    cy, cz = p.frontal / 2, -3.0
    at, el = p.atrophy, pose.ellipsoid
    slope = 0.12
    normal = pose.rot.T @ (np.array([0.0, slope, 1.0]) / np.hypot(1.0, slope))
    w0 = cz - 0.4 * cc
    floor_offset = float((w0 + slope * cy) / np.hypot(1.0, slope) + normal @ pose.center)
    vent = [el((s * (9 + 6 * at), cy - 6, cz + 19), (3.5 + 6 * at, 30, 8 + 2 * at), yaw=-s * 6) for s in (1, -1)]
    vent += [el((s * (12 + 3 * at), cy + 17, cz + 9), (4 + 5 * at, 17, 8), yaw=s * 30) for s in (1, -1)]
    vent += [el((0, cy + 2, cz + 2), (1 + 2.5 * at, 12, 9)), el((0, cy + 0.33 * cb, cz - 0.42 * cc), (6, 4, 7))]
    hu = p.hu
    return Head(
        params=p,
        pose=pose,
        center=np.array([0.0, cy, cz]),
        scalp=el((0, 0, 0), tuple(ax)),
        cerebrum=el((0, cy, cz), (ca, cb, cc)),
        floor=(-normal, floor_offset),
        fossae=(
            el((0, cy + 0.42 * cb, cz - 0.42 * cc), (0.74 * ca, 0.45 * cb, 0.32 * cc)),
            el((0.58 * ca, cy - 0.12 * cb, cz - 0.3 * cc), (0.34 * ca, 0.38 * cb, 0.25 * cc)),
            el((-0.58 * ca, cy - 0.12 * cb, cz - 0.3 * cc), (0.34 * ca, 0.38 * cb, 0.25 * cc)),
        ),
        ridges=(
            el((0.55 * ca, cy + 0.12 * cb, cz - 0.36 * cc), (0.5 * ca, 7, 9), yaw=-35),
            el((-0.55 * ca, cy + 0.12 * cb, cz - 0.36 * cc), (0.5 * ca, 7, 9), yaw=35),
            el((0, cy - 0.02 * cb, cz - 0.45 * cc), (9, 6, 0.22 * cc), pitch=-30),
        ),
        base=(
            (el((0, -0.3 * ax[1], -0.72 * ax[2]), (0.6 * ax[0], 0.62 * ax[1], 0.36 * ax[2])), 45.0),
            (el((0, cy - 0.22 * cb, cz - 0.42 * cc), (11, 9, 9)), AIR_HU),
            (el((0, -0.78 * ax[1], -0.55 * ax[2]), (9, 12, 18)), AIR_HU),
            (el((0, -ax[1] + p.scalp + 4, -0.1 * ax[2]), (11, 3.5, 8)), AIR_HU),
            (el((0.8 * ca, cy + 0.25 * cb, cz - 0.5 * cc), (5, 7, 6)), -500.0),
            (el((-0.8 * ca, cy + 0.25 * cb, cz - 0.5 * cc), (5, 7, 6)), -500.0),
            (el((30, -0.62 * ax[1], -0.42 * ax[2]), (15, 18, 12)), -80.0),
            (el((-30, -0.62 * ax[1], -0.42 * ax[2]), (15, 18, 12)), -80.0),
            (el((30, -0.68 * ax[1], -0.42 * ax[2]), (11.5, 11.5, 11.5)), 10.0),
            (el((-30, -0.68 * ax[1], -0.42 * ax[2]), (11.5, 11.5, 11.5)), 10.0),
        ),
        deep=(
            (el((10, cy + 8, cz + 4), (8, 12, 9)), hu["gm"] - 1),
            (el((-10, cy + 8, cz + 4), (8, 12, 9)), hu["gm"] - 1),
            (el((20, cy - 8, cz + 5), (6, 13, 9), yaw=10), hu["gm"]),
            (el((-20, cy - 8, cz + 5), (6, 13, 9), yaw=-10), hu["gm"]),
        ),
        stem=el((0, cy + 5, cz - 0.44 * cc), (13, 11, 0.36 * cc), pitch=-15),
        cisterns=(
            el((0, cy + 4, cz - 0.42 * cc), (19 + 4 * at, 17 + 3 * at, 0.32 * cc)),
            el((0, cy - 16, cz - 0.2 * cc), (12 + 2 * at, 9, 5)),
            el((0.62 * ca, cy - 12, cz - 0.08 * cc), (16, 2 + 2 * at, 10), yaw=-15),
            el((-0.62 * ca, cy - 12, cz - 0.08 * cc), (16, 2 + 2 * at, 10), yaw=15),
        ),
        ventricles=tuple(vent),
        calcs=tuple(el((s * (15 + 3 * at), cy + 20, cz + 8), (3, 3, 3)) for s in (1, -1)) if p.calcified else (),
    )


@dataclass(frozen=True)
class SliceFields:
    """Maps of one slice that hemorrhages are painted from, (S, S) float32 each.

    Attributes:
        cavity: signed distance to the inner table of the skull, mm (negative inside).
        subarachnoid: fraction of each pixel that is subarachnoid CSF (sulci, fissures, cisterns, convexity).
        ventricles: fraction of each pixel that is ventricular CSF.
    """

    cavity: np.ndarray
    subarachnoid: np.ndarray
    ventricles: np.ndarray


def render_anatomy(head: Head, grid: SliceGrid) -> tuple[np.ndarray, SliceFields]:
    """Noise-free Hounsfield units of the head on `grid`: ((rows, cols) float32, the fields lesions need)."""
    p, e = head.params, grid.spacing
    d_head, rho2 = head.scalp.distance(grid, grid.full)
    img = np.full((grid.rows, grid.cols), AIR_HU, dtype=np.float32)
    blend(img, p.hu["scalp"], alpha(d_head, e))
    d_skull = d_head + np.float32(p.scalp)
    cavity, floor, u = _cavity(head, grid, d_skull)
    depth = np.clip(-d_skull / np.maximum(cavity - d_skull, 1e-3), 0.0, 1.0)
    blend(img, p.hu["diploe"] + (p.hu["table"] - p.hu["diploe"]) * (2 * depth - 1) ** 2, alpha(d_skull, e))
    for shape, hu in head.base:
        box = shape.box(grid)
        if box is not None:
            blend(img, hu, alpha(shape.distance(grid, box)[0], e) * alpha(sub(d_head, box), e), box)
    csf = alpha(cavity, e)
    blend(img, p.hu["csf"], csf)
    brain = _paint_cortex(img, head, grid, (cavity, rho2, d_skull, floor, u))
    fields = SliceFields(cavity, np.clip(csf - brain, 0.0, 1.0), np.zeros_like(img))
    _paint_deep(img, head, grid, fields)
    return img, fields


def _cavity(head: Head, grid: SliceGrid, d_skull: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signed distances (mm) to the inner table and to the cerebral floor, and the head's left-right
    coordinate u (mm), (rows, cols) float32 each.

    The inner table is the skull's offset surface (thicker in front) over the cerebral floor (a tilted
    plane sinking laterally), plus the posterior and middle fossae, minus the petrous ridges and clivus."""
    p, rot = head.params, head.pose.rot
    u = grid.linear(rot[0], -float(rot[0] @ head.pose.center), grid.full)
    v = grid.linear(rot[1] / p.axes[1], -float(rot[1] @ head.pose.center) / p.axes[1], grid.full)
    d = d_skull + np.float32(p.skull) + np.float32(p.frontal) * np.clip(-v, 0.0, 1.0)
    floor = grid.linear(head.floor[0], head.floor[1], grid.full)
    floor -= u * u * np.float32(1.0 / 140.0)
    np.maximum(d, floor, out=d)
    for shape, sign in [(f, 1.0) for f in head.fossae] + [(r, -1.0) for r in head.ridges]:
        box = shape.box(grid)
        if box is not None:
            view, dist = sub(d, box), shape.distance(grid, box)[0]
            view[...] = np.minimum(view, dist) if sign > 0 else np.maximum(view, -dist)
    return np.maximum(d, d_skull + np.float32(0.6 * p.skull)), floor, u


def _paint_cortex(img: np.ndarray, head: Head, grid: SliceGrid, maps: tuple[np.ndarray, ...]) -> np.ndarray:
    """Paint grey and white matter with gyri, sulci and the interhemispheric fissure; return brain fraction.

    Args:
        maps: signed distance (mm) to the inner table, the scalp's rho^2, signed distances to the outer
            table and to the cerebral floor, and the left-right coordinate u (mm), (rows, cols) each.

    Sulci are the zero lines of a sum of plane waves evaluated at the pixel's radial projection on the
    head's surface (scalp rho^2), so they run radially into the cortex (under the convexity only: within
    24 mm of the outer table); their distance in mm is |g| / |grad g| (finite differences on the grid).
    """
    cavity, rho2, d_skull, floor, u = maps
    p, e, at = head.params, grid.spacing, head.params.atrophy
    rim, sulcal_depth, half_width = 0.6 + 2.0 * at, 7.0 + 5.0 * at, 0.4 + 1.2 * at
    gyri = _gyral_field(head, grid, rho2)
    slope = np.zeros_like(gyri)
    slope[:, :-1] = np.abs(np.diff(gyri, axis=1))
    slope[:-1, :] += np.abs(np.diff(gyri, axis=0))
    slope *= np.float32(0.75 / e)
    np.abs(gyri, out=gyri)
    distance = np.divide(gyri, np.maximum(slope, 1e-3, out=slope), out=gyri)  # mm to the nearest sulcus
    below = cavity + np.float32(rim)  # <= 0 under the convexity CSF
    taper = np.minimum(below + np.float32(sulcal_depth), d_skull + np.float32(24.0))
    taper *= np.float32(half_width / 3.0)
    np.clip(taper, 0.0, half_width, out=taper)
    sulci = alpha(distance - taper, e)
    # the interhemispheric fissure: midline CSF within 45 mm of the outer table, above the cerebral floor
    fissure = alpha(np.abs(u) - np.float32(0.5 + 1.2 * at), e)
    fissure *= alpha(-d_skull - np.float32(45.0), e) * alpha(floor + np.float32(10.0), e)
    np.maximum(sulci, fissure, out=sulci)
    brain = alpha(below, e)
    brain *= 1.0 - sulci
    blend(img, p.hu["gm"], brain)
    white = np.clip(1.0 - distance * np.float32(0.2), 0.0, 1.0)
    white *= np.float32(sulcal_depth + 1.0)
    white += below + np.float32(3.0)
    blend(img, p.hu["wm"], alpha(white, 1.5 * e))
    return brain


def _gyral_field(head: Head, grid: SliceGrid, rho2: np.ndarray) -> np.ndarray:
    """Sum of the patient's sulcal plane waves at the radial projection of each pixel, (S, S) float32."""
    inv_r = 1.0 / np.sqrt(np.maximum(rho2, 1e-4))
    gyri = np.zeros_like(rho2)
    for k, phase in zip(head.params.waves @ head.pose.rot, head.params.phases.tolist()):
        gyri += np.sin(grid.linear(k, -float(k @ head.pose.center), grid.full) * inv_r + phase)
    return gyri


def _paint_deep(img: np.ndarray, head: Head, grid: SliceGrid, fields: SliceFields) -> None:
    """Paint nuclei, cisterns, brainstem, ventricles and calcifications; fill the fields' CSF maps."""
    hu, e = head.params.hu, grid.spacing
    parts = [(s, hu_, "nucleus") for s, hu_ in head.deep] + [(s, hu["csf"], "cistern") for s in head.cisterns]
    parts += [(head.stem, hu["wm"] + 3.0, "stem")] + [(s, hu["csf"], "ventricle") for s in head.ventricles]
    parts += [(s, hu["calc"], "calc") for s in head.calcs]
    for shape, value, kind in parts:
        box = shape.box(grid)
        if box is None:
            continue
        frac = alpha(shape.distance(grid, box)[0], 2.0 * e if kind == "nucleus" else e)
        frac *= alpha(sub(fields.cavity, box), e)
        blend(img, value, frac, box)
        sa = sub(fields.subarachnoid, box)
        if kind == "cistern":
            np.maximum(sa, frac, out=sa)
        elif kind in ("stem", "ventricle"):
            sa *= 1.0 - frac
        if kind == "ventricle":
            np.maximum(sub(fields.ventricles, box), frac, out=sub(fields.ventricles, box))
