"""NIfTI volumes (``.nii``, ``.nii.gz``): one series per file, one header row per slice, slices read once per volume.

A volume is cut along the voxel axis nearest to the patient's superior-inferior axis (docs/design.md
§12). Its slices become images with DICOM geometry derived from the affine (nibabel's RAS+ world
turned into DICOM's LPS): rows along the in-plane voxel axis nearest to patient posterior, columns
along the one nearest to patient left, each flipped where needed, so the cached slices look like
those of an axial DICOM series whatever the volume's orientation (RAS, LPS, flipped axes), and the
index orders them inferior → superior by their positions, as it does DICOM. Values are taken as HU:
the stored values times scl_slope plus scl_inter (nibabel's rules: a slope of 0 or NaN means 1),
applied, like a DICOM rescale, after the resize. A volume whose range does not look like HU (no
air below -500 or nothing above 100, e.g. one windowed to 0-255) is kept, with a warning in every
slice's ``error`` note and in the log.

Identifiers are synthesized: ``frame`` is the slice's voxel index along the slice axis plus one
(the ``SliceNumber`` of the PhysioNet CT-ICH labels), the image key ``<relative path>#<frame>``
(:mod:`ich3d.dataset.identity`), the study and series the relative path of the file
(:func:`relative_ids`), the patient the file name without its suffix, the modality CT.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ich3d.constants import Status
from ich3d.dataset.dicom import empty_row

log = logging.getLogger(__name__)

#: ``transfer_syntax`` of the rows of a NIfTI slice.
NIFTI_SYNTAX = "nifti"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
_HU_AIR_BELOW, _HU_TISSUE_ABOVE = -500.0, 100.0
_ERROR_CHARS = 300


def is_nifti(path: str | os.PathLike) -> bool:
    """True for a ``.nii`` or ``.nii.gz`` file name (any case)."""
    return os.fspath(path).lower().endswith(NIFTI_SUFFIXES)


def stem(path: str | os.PathLike) -> str:
    """The file name without ``.nii``/``.nii.gz``: ``049`` for ``ct_scans/049.nii``."""
    name = os.path.basename(os.fspath(path))
    return next((name[:-len(s)] for s in sorted(NIFTI_SUFFIXES, key=len, reverse=True) if name.lower().endswith(s)),
                name)


class SliceLayout(NamedTuple):
    """How a volume's voxel axes become slices: slice ``k`` is the voxel plane ``axis = k``; its image
    rows run along ``row_axis`` and its columns along ``col_axis`` (reversed where flipped)."""

    axis: int
    row_axis: int
    col_axis: int
    flip_rows: bool
    flip_cols: bool


def slice_layout(affine: np.ndarray) -> SliceLayout:
    """The :class:`SliceLayout` of a volume from its (4, 4) voxel → RAS mm affine."""
    unit = _directions(affine)[0]
    axis = int(np.argmax(np.abs(unit[2])))
    rest = [a for a in range(3) if a != axis]
    col = rest[int(np.argmax(np.abs(unit[0, rest])))]
    row = rest[0] if col == rest[1] else rest[1]
    return SliceLayout(axis, row, col, bool(unit[1, row] < 0), bool(unit[0, col] < 0))


def _directions(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((3, 3) unit LPS direction of each voxel axis (columns), (3,) spacing in mm of each axis)."""
    lps = _RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    return lps / spacing, spacing


def slice_image(volume: np.ndarray, layout: SliceLayout, k: int) -> np.ndarray:
    """(rows, cols) view of slice ``k`` (0-based voxel index along ``layout.axis``) of a 3-D volume."""
    plane = np.take(volume, k, axis=layout.axis)
    image = plane if layout.row_axis < layout.col_axis else plane.T
    return image[::-1 if layout.flip_rows else 1, ::-1 if layout.flip_cols else 1]


class NotAVolume(ValueError):
    """A NIfTI image that is not one 3-D volume (2-D, or several time points)."""


def _load(path: str) -> tuple[np.ndarray, float, float, np.ndarray]:
    """(stored values (I, J, K) — memory-mapped for ``.nii`` —, scl_slope, scl_inter, (4, 4) affine) of a
    3-D volume (4-D with one time point accepted).

    Raises:
        NotAVolume: not a 3-D volume; nibabel's errors for a file it cannot read.
    """
    import nibabel

    image = nibabel.load(path)
    proxy = image.dataobj
    volume = np.asanyarray(proxy.get_unscaled() if hasattr(proxy, "get_unscaled") else proxy)
    if volume.ndim == 4 and volume.shape[3] == 1:
        volume = volume[..., 0]
    elif volume.ndim != 3:
        raise NotAVolume(f"NIfTI image of shape {volume.shape}: a 3-D volume (one time point) is expected")
    return volume, float(getattr(proxy, "slope", 1.0)), float(getattr(proxy, "inter", 0.0)), image.affine


def read_rows(path: str) -> list[dict[str, Any]]:
    """One header row per slice of a NIfTI volume, never raising (a file that cannot be read gives one row).

    Returns:
        Rows with the keys :data:`ich3d.dataset.dicom.HEADER_COLUMNS` in voxel order (the index
        sorts them by position); ``transfer_syntax`` :data:`NIFTI_SYNTAX`, ``frame`` 1..N.
    """
    base = empty_row(path)
    try:
        volume, slope, inter, affine = _load(path)
        low, high = sorted(float(v) * slope + inter for v in (volume.min(), volume.max()))
    except NotAVolume as exc:
        base.update(status=str(Status.UNSUPPORTED_IMAGE), error=str(exc), transfer_syntax=NIFTI_SYNTAX)
        return [base]
    except Exception as exc:  # noqa: BLE001 - any failure to read a volume is that file's status
        base.update(status=str(Status.CORRUPT), error=f"NIfTI: {type(exc).__name__}: {exc}"[:_ERROR_CHARS],
                    transfer_syntax=NIFTI_SYNTAX)
        return [base]
    layout = slice_layout(affine)
    unit, spacing = _directions(affine)
    lps = _RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)[:3]
    shape = volume.shape
    row_dir = unit[:, layout.col_axis] * (-1 if layout.flip_cols else 1)  # DICOM: along a row (columns grow)
    col_dir = unit[:, layout.row_axis] * (-1 if layout.flip_rows else 1)
    note = "" if low <= _HU_AIR_BELOW and high >= _HU_TISSUE_ABOVE else (
        f"values {low:g}..{high:g} do not look like HU (no air below {_HU_AIR_BELOW:g} or nothing above "
        f"{_HU_TISSUE_ABOVE:g}; windowed or rescaled?): used as HU")
    if note:
        log.warning("%s: %s", path, note)
    dtype = volume.dtype
    base.update(patient_id=stem(path), study_uid=path, series_uid=path, modality="CT",
                rows=shape[layout.row_axis], cols=shape[layout.col_axis],
                pixel_spacing=float(spacing[layout.row_axis]), slice_thickness=float(spacing[layout.axis]),
                bits_allocated=dtype.itemsize * 8, bits_stored=dtype.itemsize * 8,
                pixel_representation=int(dtype.kind != "u"), rescale_slope=slope, rescale_intercept=inter,
                window_center=np.nan, window_width=np.nan, transfer_syntax=NIFTI_SYNTAX,
                status=str(Status.OK), error=note)
    corner = np.zeros(3)
    corner[layout.row_axis] = shape[layout.row_axis] - 1 if layout.flip_rows else 0
    corner[layout.col_axis] = shape[layout.col_axis] - 1 if layout.flip_cols else 0
    rows = []
    for k in range(shape[layout.axis]):
        corner[layout.axis] = k
        origin = lps @ np.append(corner, 1.0)
        rows.append(base | {"frame": k + 1, "instance_number": k + 1}
                    | dict(zip(("ipp_x", "ipp_y", "ipp_z"), origin.tolist()))
                    | dict(zip(("iop_rx", "iop_ry", "iop_rz", "iop_cx", "iop_cy", "iop_cz"),
                               np.concatenate([row_dir, col_dir]).tolist())))
    return rows


def relative_ids(header: pd.DataFrame) -> None:
    """Gives the NIfTI rows of a header table their study and series: the file's ``relative_path``
    (stable across machines; the rows were made with the absolute path)."""
    mine = (header["transfer_syntax"] == NIFTI_SYNTAX).to_numpy()
    if mine.any():
        header.loc[mine, "study_uid"] = header.loc[mine, "relative_path"]
        header.loc[mine, "series_uid"] = header.loc[mine, "relative_path"]


def read_slice(path: str, frame: int) -> np.ndarray:
    """Stored values of slice ``frame`` (1-based voxel index along the slice axis) of a volume, as
    (rows, cols); the volume is read (a ``.nii.gz`` decompressed) once per process and file
    version, so a series' slices, read in a row by one worker, cost one decompression."""
    stat = os.stat(path)
    volume, layout = _volume(path, stat.st_mtime_ns, stat.st_size)
    if not 1 <= frame <= volume.shape[layout.axis]:
        raise ValueError(f"slice {frame} is outside the volume ({volume.shape[layout.axis]} slices)")
    return slice_image(volume, layout, frame - 1)


@lru_cache(maxsize=1)
def _volume(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, SliceLayout]:
    """(stored values, layout) of a volume: the last one read in this process (``mtime_ns`` and
    ``size`` make a changed file a new entry)."""
    volume, _, _, affine = _load(path)
    return volume, slice_layout(affine)
