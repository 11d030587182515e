"""One synthetic series: a head placed on the table, its hemorrhages, the image planes, noise, the files.

:func:`write_series` renders the phantom (:mod:`ich3d.synth.phantom`, :mod:`ich3d.synth.lesions`) on
each image plane, adds CT-like noise and writes the slices through :mod:`ich3d.synth.dicom_writer`, and
the series' lesion masks with :func:`write_mask` (read them back with :func:`load_mask`).
"""

from __future__ import annotations

import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from pydicom.config import disable_value_validation

from ich3d.atomic import atomic_write
from ich3d.constants import LABELS
from ich3d.errors import InputError
from ich3d.synth import lesions, phantom
from ich3d.synth.dicom_writer import encoder, instance_numbers, template, write_slice
from ich3d.synth.plan import SPLITS, SeriesPlan, SynthConfig

#: Members of a mask file: the (N, rows, cols) uint8 volume, the (N,) image ID of each slice, the
#: subtype of each bit (bit k = subtypes[k], see ich3d.synth.lesions.MASK_BITS).
MASK_MEMBERS = ("mask", "image_ids", "subtypes")


def write_series(folder: Path, plan: SeriesPlan, config: SynthConfig,
                 mask_path: Path) -> tuple[dict[str, tuple[int, ...]], dict]:  # fmt: skip
    """Render and write the DICOM files of one series, and its lesion masks to `mask_path`.

    Returns:
        {image id: its six labels (0/1) in LABELS order} and a description of the acquisition.
    """
    rng = np.random.default_rng([config.seed, SPLITS.index(plan.split), plan.index])
    params = phantom.sample_head(np.random.default_rng([config.seed, 2000, plan.patient]))
    if config.head_size != 1.0:
        params = replace(params, axes=params.axes * config.head_size)
    head = phantom.place_head(params, _pose(rng))
    hemorrhages = [lesions.restyle(lesion, config.lesion_contrast, config.lesion_size)
                   for lesion in lesions.sample_lesions(rng, head, _subtypes(rng, config) if plan.positive else [])]
    grids, info = _slice_grids(rng, head, plan, config)
    numbers = instance_numbers(rng, plan.quirks["instances"], len(grids))
    encode = encoder(rng, plan.quirks["pixels"], info["image_size"])
    sigma, labels, masks = rng.uniform(*config.noise_sd), {}, []
    with disable_value_validation():
        elements, syntax = template(rng, plan, grids[0])
        for grid, sop, number in zip(grids, plan.sop_uids, numbers):
            hu, labels[sop], mask = lesions.render_slice(head, hemorrhages, grid)
            masks.append(mask)
            hu += _noise(rng, info["image_size"], sigma)
            hu = reconstruct(hu, config.kernel, info["pixel_spacing"])
            write_slice(folder / f"{sop}.dcm", elements, syntax, sop, number, grid.origin, encode(hu))
    write_mask(mask_path, np.stack(masks), plan.sop_uids)
    return labels, info


def write_mask(path: Path, mask: np.ndarray, image_ids: tuple[str, ...] | list[str]) -> None:
    """Writes a series' lesion masks as a compressed ``.npz`` whose bytes depend only on its content.

    Args:
        path: the file (its folder must exist); written atomically.
        mask: (N, rows, cols) uint8 bits of ich3d.synth.lesions.MASK_BITS, in the original pixel grid
            (row i, column j of the DICOM image), slices in position order along the slice normal
            (the index's ``slice_index`` order).
        image_ids: (N,) the image ID of each slice.
    """
    arrays = (mask, np.asarray(image_ids, dtype=str), np.asarray(lesions.SUBTYPES, dtype=str))
    with atomic_write(path) as file, zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in zip(MASK_MEMBERS, arrays):
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))  # no time stamp
            member.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(member, "w") as stream:
                np.lib.format.write_array(stream, array, allow_pickle=False)


def load_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A mask file of :func:`write_mask`: ((N, rows, cols) uint8 mask bits, (N,) image IDs).

    Raises:
        InputError: no such file, or not a mask file.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            if set(data.files) != set(MASK_MEMBERS) or tuple(data["subtypes"]) != lesions.SUBTYPES:
                raise InputError(f"{path}: not a lesion-mask file of this ich3d version (members {data.files})")
            return data["mask"], data["image_ids"]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: cannot read the lesion masks ({exc}); regenerate them with `ich3d synth`") from None


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


def reconstruct(hu: np.ndarray, kernel: float, pixel_mm: float) -> np.ndarray:
    """A slice as another reconstruction kernel would show it (see ``SynthConfig.kernel``).

    Args:
        hu: (rows, cols) float32 HU, image plus noise as the standard kernel shows them.
        kernel: 0 (unchanged), > 0 Gaussian smoothing sigma in mm, < 0 unsharp-mask amount.
        pixel_mm: pixel spacing in mm.

    Returns:
        (rows, cols) float32 HU.
    """
    if kernel == 0:
        return hu
    from scipy.ndimage import gaussian_filter

    if kernel > 0:
        return gaussian_filter(hu, kernel / pixel_mm, mode="nearest").astype(np.float32)
    blurred = gaussian_filter(hu, 1.0 / pixel_mm, mode="nearest")
    return (hu + np.float32(-kernel) * (hu - blurred)).astype(np.float32)


def _noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """CT-like noise, (size, size) float32 HU of std `sigma`: sums of four uniform bytes over 2x2 pixel
    boxes, nearly Gaussian (Irwin-Hall) and correlated between neighbours (0.5), ~6x cheaper than normals."""
    white = np.frombuffer(rng.bytes((size + 1) ** 2), dtype=np.int8).reshape(size + 1, size + 1).astype(np.int16)
    box = white[:-1, :-1] + white[1:, :-1]
    box += white[:-1, 1:]
    box += white[1:, 1:]
    return box.astype(np.float32) * np.float32(sigma / np.sqrt(4 * (256**2 - 1) / 12))
