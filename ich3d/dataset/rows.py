"""One input file → its image rows: a single-frame DICOM file one, a multi-frame file one per frame,
a NIfTI volume one per slice (docs/design.md §12). The header pass calls :func:`read_rows` per file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ich3d.constants import Status
from ich3d.dataset import nifti
from ich3d.dataset.dicom import check_row, read_file_row
from ich3d.dataset.multiframe import frame_rows


def read_rows(path: str | Path, assume_intercept: float | None = None) -> list[dict[str, Any]]:
    """The header rows of one file, never raising (a file that cannot be read gives one row with its status).

    Args:
        path: a DICOM file or a NIfTI volume (``.nii``, ``.nii.gz``).
        assume_intercept: as for :func:`ich3d.dataset.dicom.read_header` (DICOM only).

    Returns:
        Rows with the keys :data:`ich3d.dataset.dicom.HEADER_COLUMNS`: one for a single-frame
        file, one per frame (``frame`` 1..N) for a file with NumberOfFrames, one per slice for a NIfTI
        volume.
    """
    path = str(path)
    if nifti.is_nifti(path):
        return nifti.read_rows(path)
    row, frames = read_file_row(path)
    if frames is not None and row["status"] == Status.OK:
        return frame_rows(row, max(frames, 1), assume_intercept)
    check_row(row, assume_intercept)
    return [row]
