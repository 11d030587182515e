"""One synthetic series: a head placed on the table, its hemorrhages, the image planes, noise, the files.

:func:`write_series` renders the phantom (:mod:`ich3d.synth.phantom`, :mod:`ich3d.synth.lesions`) on
each image plane, adds CT-like noise and writes the slices through :mod:`ich3d.synth.dicom_writer`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.config import disable_value_validation

from ich3d.constants import LABELS
from ich3d.synth import lesions, phantom
from ich3d.synth.dicom_writer import encoder, instance_numbers, template, write_slice
from ich3d.synth.plan import SPLITS, SeriesPlan, SynthConfig


def write_series(folder: Path, plan: SeriesPlan, config: SynthConfig) -> tuple[dict[str, tuple[int, ...]], dict]:
    """Render and write the DICOM files of one series.

    Returns:
        {image id: its six labels (0/1) in LABELS order} and a description of the acquisition.
    """
    rng = np.random.default_rng([config.seed, SPLITS.index(plan.split), plan.index])
    params = phantom.sample_head(np.random.default_rng([config.seed, 2000, plan.patient]))
    head = phantom.place_head(params, _pose(rng))
    hemorrhages = lesions.sample_lesions(rng, head, _subtypes(rng, config) if plan.positive else [])
    grids, info = _slice_grids(rng, head, plan, config)
    numbers = instance_numbers(rng, plan.quirks["instances"], len(grids))
    encode = encoder(rng, plan.quirks["pixels"], info["image_size"])
    sigma, labels = rng.uniform(3.0, 6.0), {}
    with disable_value_validation():
        elements, syntax = template(rng, plan, grids[0])
        for grid, sop, number in zip(grids, plan.sop_uids, numbers):
            hu, labels[sop] = lesions.render_slice(head, hemorrhages, grid)
            hu += _noise(rng, info["image_size"], sigma)
            write_slice(folder / f"{sop}.dcm", elements, syntax, sop, number, grid.origin, encode(hu))
    return labels, info


def _subtypes(rng: np.random.Generator, config: SynthConfig) -> list[str]:
    """The hemorrhage subtypes of a positive series (at least one)."""
    probs = np.asarray(config.subtype_probability)
    chosen = [name for name, p in zip(LABELS[1:], probs) if rng.random() < p]
    return chosen or [str(rng.choice(LABELS[1:], p=probs / probs.sum()))]


def _pose(rng: np.random.Generator) -> phantom.Pose:
    """Where the head lies on the table: offset, scanner z, yaw, flexion and roll."""
    center = np.array([rng.uniform(-12, 12), rng.uniform(-15, 15), rng.uniform(-200, 100)])
    return phantom.Pose(center, phantom.rotation(rng.uniform(-10, 10), rng.uniform(-12, 12), rng.uniform(-3, 3)))


def _slice_grids(rng: np.random.Generator, head: phantom.Head, plan: SeriesPlan,
                 config: SynthConfig) -> tuple[list[phantom.SliceGrid], dict]:  # fmt: skip
    """Image planes from below the posterior fossa to the vertex, with the table moving along z.

    A gantry-tilted series has its planes tilted about x; its ImagePositionPatient moves along z only
    (constant y), as on a scanner, so positions must be projected on the slice normal to order them.
    """
    size = config.image_size
    if plan.quirks["size"] == "odd":
        size = int(round(size * rng.choice([1.23, 1.5])))
    pixel = 2.0 * max(head.params.axes[:2]) * rng.uniform(1.2, 1.4) / size
    tilt = rng.uniform(10, 25) if plan.quirks["tilt"] == "tilted" else 0.0
    c, s = np.cos(np.radians(tilt)), np.sin(np.radians(tilt))
    row, col, normal = np.array([1.0, 0, 0]), np.array([0, c, -s]), np.array([0, s, c])
    ax = head.cerebrum.axes
    low = head.pose.point(head.center + [0, 0.42 * ax[1], -0.74 * ax[2]]) @ normal - rng.uniform(2, 8)
    high = head.pose.center @ normal + head.scalp.extent(normal) - rng.uniform(0, 6)
    n = len(plan.sop_uids)
    ideal = (high - low) / (n - 1)  # a series far too long or short for its head gets another spacing
    step = plan.spacing if 0.9 <= plan.spacing / ideal <= 1.1 else round(ideal * 4) / 4
    first = low + (high - low - step * (n - 1)) * rng.uniform(0.6, 0.9)  # spare slices mostly below the base
    table = head.pose.center[:2] - [rng.uniform(-12, 12), rng.uniform(-15, 15)]
    grids = []
    for k in range(n):
        z = (first + k * step - table[1] * normal[1]) / normal[2]
        origin = np.array([table[0], table[1], z]) - (size - 1) / 2 * pixel * (row + col)
        grids.append(phantom.SliceGrid(origin, row, col, float(pixel), size, size))
    info = {"image_size": size, "pixel_spacing": round(pixel, 4), "slice_spacing": step, "tilt_degrees": round(tilt, 2)}
    return grids, info


def _noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """CT-like noise, (size, size) float32 HU of std `sigma`: sums of four uniform bytes over 2x2 pixel
    boxes, nearly Gaussian (Irwin-Hall) and correlated between neighbours (0.5), ~6x cheaper than normals."""
    white = np.frombuffer(rng.bytes((size + 1) ** 2), dtype=np.int8).reshape(size + 1, size + 1).astype(np.int16)
    box = white[:-1, :-1] + white[1:, :-1]
    box += white[:-1, 1:]
    box += white[1:, 1:]
    return box.astype(np.float32) * np.float32(sigma / np.sqrt(4 * (256**2 - 1) / 12))
