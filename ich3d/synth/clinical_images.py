"""Pixels of a synthetic clinical exam: the head on the table, its image planes, and what a scanner makes
of them (thick slabs, bone kernel, contrast, localizer projections, a coronal reformat, noise, the dose
report's table).

One exam (:class:`Exam`: head, hemorrhages, 1.25 mm axial planes) is rendered once on its 1.25 mm planes
with :func:`ich3d.synth.lesions.render_slice`; the thin series shows those planes, the thick series 5 mm
slabs of them, the bone and contrast series the same slabs reconstructed or enhanced otherwise, so every
series of a study shows the same hemorrhages. Coordinates are DICOM patient coordinates in mm.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ich3d.constants import LABELS
from ich3d.synth import lesions, phantom
from ich3d.synth.clinical_plan import ClinicalConfig, StudyPlan

THIN_MM = 1.25
THICK_MM = 5.0
_PER_THICK = round(THICK_MM / THIN_MM)
#: 1.25 mm planes rendered beyond each end of the thin range, for the first and last thick slabs.
_MARGIN = _PER_THICK // 2
REFORMAT_MM = 3.0
#: Slices of a motion repeat: 15 mm of the posterior fossa, too little to read an exam from.
REPEAT_SLICES = 3
LOCALIZER_FOV_MM = 280.0
DOSE_REPORT_SIZE = 512
_MU_WATER = 0.019  # linear attenuation of water at 120 kV, 1/mm
_PROJECTION_STEP_MM = 2.0
#: Contrast enhancement (HU): dura, the superior sagittal sinus, the middle cerebral arteries.
_DURA_HU, _SINUS_HU, _ARTERY_HU = 30.0, 110.0, 140.0


@dataclass(frozen=True)
class Exam:
    """One exam: the placed head, its hemorrhages and its axial planes.

    Attributes:
        planes: axial planes 1.25 mm apart, from 2.5 mm below the first thick slice to 2.5 mm above the
            last one (4 (n_thick - 1) + 5 planes, rows == cols == image size).
        tilt: gantry tilt, degrees (the planes are tilted about the patient's x axis).
    """

    head: phantom.Head
    lesions: list[lesions.Lesion]
    planes: list[phantom.SliceGrid]
    tilt: float

    @property
    def thin(self) -> list[phantom.SliceGrid]:
        """The planes of the thin series: the thick series' range, 1.25 mm apart."""
        return self.planes[_MARGIN:-_MARGIN]

    @property
    def thick(self) -> list[phantom.SliceGrid]:
        """The central planes of the thick slices, 5 mm apart."""
        return self.thin[::_PER_THICK]


def plan_exam(rng: np.random.Generator, config: ClinicalConfig, plan: StudyPlan) -> Exam:
    """Place the patient's head (drawn per patient) on the table, draw its hemorrhages and the planes."""
    params = phantom.sample_head(np.random.default_rng([config.seed, 5000, plan.patient]))
    yaw, flexion, roll = rng.uniform([-8.0, -10.0, -3.0], [8.0, 10.0, 3.0])
    center = rng.uniform([-10.0, -12.0, -160.0], [10.0, 12.0, 40.0])  # z: where the table put the head
    head = phantom.place_head(params, phantom.Pose(center, phantom.rotation(yaw, flexion, roll)))
    found = _subtypes(rng, config.subtype_probability) if plan.positive else []
    bleeds = lesions.sample_lesions(rng, head, found)
    tilt = float(rng.uniform(12.0, 22.0)) if plan.tilted else 0.0
    return Exam(head, bleeds, _axial_planes(rng, head, tilt, config.image_size), tilt)


def _subtypes(rng: np.random.Generator, probability: tuple[float, ...]) -> list[str]:
    """The subtypes of a positive exam: each with its probability, at least one."""
    p = np.asarray(probability, dtype=float)
    drawn = rng.random(p.size) < p
    if not drawn.any():
        drawn[rng.choice(p.size, p=p / p.sum())] = True
    return [name for name, on in zip(lesions.SUBTYPES, drawn) if on]


def _axial_planes(rng: np.random.Generator, head: phantom.Head, tilt: float, size: int) -> list[phantom.SliceGrid]:
    """1.25 mm planes from below the posterior fossa to the vertex (see `Exam.planes`).

    The display field of view is a whole number of cm; the table moves along z only, so a tilted exam's
    ImagePositionPatient keeps its y and positions must be projected on the slice normal to order them.
    """
    t = np.radians(tilt)
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(t), -np.sin(t)])
    normal = np.cross(row, col)
    ax = head.cerebrum.axes
    base = head.pose.point(head.center + [0.0, 0.42 * ax[1], -0.74 * ax[2]]) @ normal - rng.uniform(2.0, 6.0)
    top = head.pose.center @ normal + head.scalp.extent(normal) - rng.uniform(0.0, 4.0)
    n_thick = int((top - base) // THICK_MM) + 1
    pixel = 10.0 * np.ceil(0.2 * max(head.params.axes[:2]) * rng.uniform(1.15, 1.3)) / size
    middle = head.pose.center[:2] + rng.uniform(-8.0, 8.0, size=2)
    positions = base + THIN_MM * np.arange(-_MARGIN, _PER_THICK * (n_thick - 1) + _MARGIN + 1)
    z = (positions - middle[1] * normal[1]) / normal[2]
    corner = (size - 1) / 2 * pixel * (row + col)
    origins = np.column_stack([np.full_like(z, middle[0]), np.full_like(z, middle[1]), z]) - corner
    return [phantom.SliceGrid(origin, row, col, float(pixel), size, size) for origin in origins]


def render(exam: Exam, grids: list[phantom.SliceGrid]) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free HU (N, rows, cols) float32 and labels (N, 6) uint8 (LABELS order) of `exam` on `grids`."""
    hu = np.empty((len(grids), grids[0].rows, grids[0].cols), dtype=np.float32)
    labels = np.empty((len(grids), len(LABELS)), dtype=np.uint8)
    for k, grid in enumerate(grids):
        hu[k], labels[k] = lesions.render_slice(exam.head, exam.lesions, grid)[:2]
    return hu, labels


def slabs(planes: np.ndarray) -> np.ndarray:
    """5 mm slabs centred on every fourth 1.25 mm plane: (N, S, S) HU of all `Exam.planes` -> (n_thick, S, S).

    Trapezoid weights (1/8, 1/4, 1/4, 1/4, 1/8) over the five planes within 2.5 mm: exactly 5 mm of tissue.
    """
    out = planes[1:-3:_PER_THICK] + planes[2:-2:_PER_THICK]
    out += planes[3:-1:_PER_THICK]
    out += 0.5 * (planes[0:-4:_PER_THICK] + planes[4::_PER_THICK])
    out *= 0.25
    return out


@dataclass(frozen=True)
class AxialImages:
    """The noise-free axial images of an exam and their labels (LABELS order, 0/1).

    Attributes:
        thin: (n_thin, S, S) HU on `Exam.thin`; thin_labels: (n_thin, 6).
        thick: (n_thick, S, S) HU, the 5 mm slabs on `Exam.thick`; thick_labels: (n_thick, 6), those of
            each slab's central plane (the thin plane at the same position).
    """

    thin: np.ndarray
    thin_labels: np.ndarray
    thick: np.ndarray
    thick_labels: np.ndarray

    @property
    def exam_labels(self) -> np.ndarray:
        """(6,) the exam's truth: a label is positive when any 1.25 mm plane of the scanned range is."""
        return self.thin_labels.max(axis=0)


def render_axial(exam: Exam) -> AxialImages:
    """Render `exam` on its 1.25 mm planes once: the thin images, and the thick slabs made from them."""
    hu, labels = render(exam, exam.planes)
    inner = slice(_MARGIN, len(hu) - _MARGIN)
    return AxialImages(hu[inner], labels[inner], slabs(hu), labels[inner][::_PER_THICK])


def bone_kernel(hu: np.ndarray) -> np.ndarray:
    """A sharp (bone) reconstruction of (N, S, S) HU: unsharp masking with a 3 x 3 box (edge overshoot)."""
    padded = np.pad(hu, ((0, 0), (1, 1), (1, 1)), mode="edge")
    box = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
    box = box[:, :, :-2] + box[:, :, 1:-1] + box[:, :, 2:]
    box *= -1.2 / 9.0
    box += 2.2 * hu
    return box


def enhance(hu: np.ndarray, exam: Exam, grids: list[phantom.SliceGrid]) -> np.ndarray:
    """Intravenous contrast on (N, S, S) HU (a new stack): dura under the inner table, the superior sagittal
    sinus along the upper midline, the middle cerebral arteries in the Sylvian fissures; soft tissue only."""
    head = exam.head
    arteries = [replace(c, axes=np.array([0.9 * c.axes[0], 1.5, 1.5])) for c in head.cisterns[2:4]]
    lateral, vertical = head.pose.rot[0], head.pose.rot[2]
    out = np.empty_like(hu)
    for img, grid, result in zip(hu, grids, out):
        e = grid.spacing
        depth = head.cerebrum.distance(grid, grid.full)[0]  # mm to the inner table, negative inside
        upper = grid.linear(vertical, 20.0 - float(vertical @ head.pose.center) - head.center[2], grid.full)
        inside = phantom.alpha(depth, e) * phantom.alpha(-upper, e)
        midline = phantom.alpha(np.abs(grid.linear(lateral, -float(lateral @ head.pose.center), grid.full)) - 4.0, e)
        gain = _DURA_HU * phantom.alpha(-depth - 1.5, e) + _SINUS_HU * midline * phantom.alpha(-depth - 7.0, e)
        gain *= inside
        for artery in arteries:
            box = artery.box(grid)
            if box is not None:
                phantom.sub(gain, box)[...] += _ARTERY_HU * phantom.alpha(artery.distance(grid, box)[0], e)
        gain *= (img > -50.0) & (img < 150.0)
        np.add(img, gain, out=result)
    return out


def reformat_planes(exam: Exam) -> list[phantom.SliceGrid]:
    """Coronal reformat planes 3 mm apart through the head (their normal points posterior), square with
    the axial images' size and pixel spacing, centred on the scanned range."""
    first, last = exam.thick[0], exam.thick[-1]
    size, pixel = first.rows, first.spacing
    reach = exam.head.scalp.extent(np.array([0.0, 1.0, 0.0]))
    ys = exam.head.pose.center[1] - reach + REFORMAT_MM * np.arange(int(2 * reach // REFORMAT_MM) + 1)
    top = (first.origin[2] + last.origin[2]) / 2 + (size - 1) / 2 * pixel * (first.col_dir[2] + 1.0)
    row, down = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])
    return [phantom.SliceGrid(np.array([first.origin[0], y, top]), row, down, pixel, size, size) for y in ys]


def render_reformat(exam: Exam, grids: list[phantom.SliceGrid]) -> np.ndarray:
    """Noise-free HU (N, S, S) of the reformat planes; rows outside the scanned range are air."""
    first, last = exam.thick[0], exam.thick[-1]
    normal = first.normal
    hu, _ = render(exam, grids)
    low, high = first.origin @ normal - THICK_MM / 2, last.origin @ normal + THICK_MM / 2
    steps = first.spacing * np.arange(first.rows) * (grids[0].col_dir @ normal)
    depth = (np.stack([g.origin for g in grids]) @ normal)[:, None] + steps
    hu[(depth < low) | (depth > high)] = phantom.AIR_HU
    return hu


def localizers(exam: Exam, size: int) -> tuple[list[phantom.SliceGrid], np.ndarray]:
    """Lateral (sagittal plane) and AP (coronal plane) topograms: projections of the head through its
    centre, LOCALIZER_FOV_MM square. Returns the two planes and (2, size, size) float32 12-bit values."""
    pixel = LOCALIZER_FOV_MM / size
    down = np.array([0.0, 0.0, -1.0])
    grids = []
    for across in (np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0])):
        origin = exam.head.pose.center - (size - 1) / 2 * pixel * (across + down)
        grids.append(phantom.SliceGrid(origin, across, down, pixel, size, size))
    return grids, np.stack([_projection(exam, grid) for grid in grids])


def _projection(exam: Exam, grid: phantom.SliceGrid) -> np.ndarray:
    """Line integrals of attenuation through the head along the normal of `grid` (planes 2 mm or a pixel
    apart, at most 128 x 128 pixels rendered: a topogram is blurry), as 12-bit values (rows, cols) float32."""
    reach = exam.head.scalp.extent(grid.normal)
    steps = np.linspace(-reach, reach, int(2 * reach // max(_PROJECTION_STEP_MM, grid.spacing)) + 2)
    f = max(1, grid.rows // 128)  # pixels of `grid` per rendered pixel, along each axis
    coarse = replace(grid, origin=grid.origin + (f - 1) / 2 * grid.spacing * (grid.row_dir + grid.col_dir),
                     spacing=f * grid.spacing, rows=-(-grid.rows // f), cols=-(-grid.cols // f))  # fmt: skip
    total = np.zeros((coarse.rows, coarse.cols), dtype=np.float32)
    for step in steps:
        plane = replace(coarse, origin=coarse.origin + step * grid.normal)
        total += np.maximum(lesions.render_slice(exam.head, exam.lesions, plane)[0] + 1000.0, 0.0)
    total *= np.float32(700.0 * _MU_WATER / 1000.0 * (steps[1] - steps[0]))
    np.clip(np.rint(total, out=total), 0.0, 4095.0, out=total)
    return total.repeat(f, axis=0).repeat(f, axis=1)[: grid.rows, : grid.cols]


def noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float, smooth: bool = True) -> np.ndarray:
    """CT noise, `shape` float32 HU of std `sigma`: Gaussian, correlated between neighbours (mean of
    2 x 2 boxes, a soft kernel) or white (a sharp kernel)."""
    if not smooth:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)
    white = rng.standard_normal((shape[0] + 1, shape[1] + 1), dtype=np.float32)
    out = white[:-1, :-1] + white[1:, 1:]
    out += white[1:, :-1]
    out += white[:-1, 1:]
    out *= np.float32(sigma / 2.0)
    return out


#: 3 x 5 pixel glyphs (rows top to bottom) of the dose report's characters.
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", " ": "000000000000000",
    "A": "010101111101101", "C": "111100100100111", "D": "110101101101110", "E": "111100111100111",
    "I": "111010010010111", "K": "101101110101101", "L": "100100100100111", "M": "101111111101101",
    "O": "111101101101111", "P": "111101111100100", "R": "110101110101101", "S": "111100111001111",
    "T": "111010010010010", "V": "101101101101010",
}  # fmt: skip


def _text(line: str, scale: int) -> np.ndarray:
    """(5 scale, 4 scale len(line)) bool bitmap of `line` (3 x 5 glyphs and a blank column each)."""
    bits = np.array([[bit == "1" for bit in _GLYPHS[char]] for char in line], dtype=bool).reshape(len(line), 5, 3)
    bits = np.pad(bits, ((0, 0), (0, 0), (0, 1))).transpose(1, 0, 2).reshape(5, 4 * len(line))
    return bits.repeat(scale, axis=0).repeat(scale, axis=1)


def dose_report(table: list[tuple[str, ...]]) -> np.ndarray:
    """The dose report's screen: `table` (a header and rows of cells, upper-case letters, digits and dots)
    in white on dark blue, header on a blue bar, rows ruled. Returns (512, 512, 3) uint8 RGB."""
    size, scale, margin = DOSE_REPORT_SIZE, 2, 24
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[...] = (12, 14, 30)
    width, height = (size - 2 * margin) // len(table[0]), 12 * scale
    image[margin - scale : margin + height - 3 * scale, margin - scale : size - margin] = (40, 70, 140)
    for r, cells in enumerate(table):
        y = margin + r * height
        for c, cell in enumerate(cells):
            bitmap = _text(cell, scale)
            x = margin + c * width
            image[y : y + bitmap.shape[0], x : x + bitmap.shape[1]][bitmap] = (235, 235, 235)
        image[y + height - 2 * scale, margin : size - margin] = (90, 90, 110)
    return image
