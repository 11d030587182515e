"""Plane geometry of slices: normals from ImageOrientationPatient, and whether a slice's geometry is usable.

Shared by the header pass (a slice with degenerate cosines is ``missing_geometry``) and the stacking
of series (:mod:`ich3d.dataset.series`); arrays of cosines in, no DICOM file needed.
"""

from __future__ import annotations

import numpy as np

#: Largest deviation from unit length and from orthogonality accepted in ImageOrientationPatient's cosines.
ORTHONORMAL_TOLERANCE = 0.01


def orthonormal(rx: float, ry: float, rz: float, cx: float, cy: float, cz: float) -> bool | np.ndarray:
    """True when the row and column cosines are unit vectors at right angles (within
    :data:`ORTHONORMAL_TOLERANCE`); array arguments give an array (the index's columns at once)."""
    row_norm = (rx * rx + ry * ry + rz * rz) ** 0.5
    col_norm = (cx * cx + cy * cy + cz * cz) ** 0.5
    dot = rx * cx + ry * cy + rz * cz
    tol = ORTHONORMAL_TOLERANCE
    return (abs(row_norm - 1) < tol) & (abs(col_norm - 1) < tol) & (abs(dot) < tol)


def slice_normals(iop: np.ndarray) -> np.ndarray:
    """Unit normals of slices from their orientation cosines.

    Args:
        iop: (N, 6) float ImageOrientationPatient (row cosine x, y, z, then column cosine x, y, z).

    Returns:
        (N, 3) float64, cross(row, column) normalised (NaN where the cosines are NaN or parallel).
    """
    normal = np.cross(iop[:, :3], iop[:, 3:])
    with np.errstate(invalid="ignore", divide="ignore"):
        return normal / np.linalg.norm(normal, axis=1, keepdims=True)


def usable_geometry(geometry: np.ndarray) -> np.ndarray:
    """(N,) bool: finite ImagePositionPatient and orthonormal ImageOrientationPatient.

    Args:
        geometry: (N, 9) float: ``ipp_x..z`` (mm) then the six ``iop_*`` cosines.
    """
    finite = np.isfinite(geometry).all(axis=1)
    with np.errstate(invalid="ignore"):
        return finite & orthonormal(*geometry[:, 3:].T)
