"""Enhanced (multi-frame) CT: one file holding a series, split into one header row per frame.

An enhanced CT, a legacy converted enhanced CT or any other file with NumberOfFrames stores its
per-slice values in functional groups (docs/design.md §12): each frame's item of the Per-frame
Functional Groups Sequence, else the Shared Functional Groups Sequence, else the top-level element,
gives its ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness, rescale and
window. Every frame then is an image of its own (``frame`` 1-based; key ``<SOPInstanceUID>#<frame>``)
that the index groups, orders and caches like single-frame files. For native syntaxes the frame's
``pixel_offset`` points at its bytes, so the pixel pass reads it with one ``readinto``; compressed
frames are decoded one at a time (:func:`ich3d.dataset.pixels.read_pixels`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from ich3d.constants import Status
from ich3d.dataset.dicom import check_row

_PER_FRAME, _SHARED = "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"
#: (functional group sequence, element, row columns): the per-frame values a row takes.
_GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("PlanePositionSequence", "ImagePositionPatient", ("ipp_x", "ipp_y", "ipp_z")),
    ("PlaneOrientationSequence", "ImageOrientationPatient",
     ("iop_rx", "iop_ry", "iop_rz", "iop_cx", "iop_cy", "iop_cz")),
    ("PixelMeasuresSequence", "PixelSpacing", ("pixel_spacing",)),
    ("PixelMeasuresSequence", "SliceThickness", ("slice_thickness",)),
    ("PixelValueTransformationSequence", "RescaleIntercept", ("rescale_intercept",)),
    ("PixelValueTransformationSequence", "RescaleSlope", ("rescale_slope",)),
    ("FrameVOILUTSequence", "WindowCenter", ("window_center",)),
    ("FrameVOILUTSequence", "WindowWidth", ("window_width",)),
)
_ERROR_CHARS = 300


def frame_rows(row: dict[str, Any], frames: int, assume_intercept: float | None) -> list[dict[str, Any]]:
    """One header row per frame of a file whose whole-file row ``row`` is ok; never raises.

    Args:
        row: :func:`ich3d.dataset.dicom.read_file_row`'s row of the file (status ok, not yet checked).
        frames: its NumberOfFrames (>= 1).
        assume_intercept: as for :func:`ich3d.dataset.dicom.read_header`.

    Returns:
        ``frames`` rows (keys :data:`ich3d.dataset.dicom.HEADER_COLUMNS`) in frame order, each
        checked (:func:`ich3d.dataset.dicom.check_row`); ``frame`` is 1..N, or None for a file of
        one frame (its key stays the SOPInstanceUID). When the functional groups cannot be read,
        one ``corrupt`` row.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(row["path"], stop_before_pixels=True, force=True)
        values = frame_values(dataset, frames)
    except Exception as exc:  # noqa: BLE001 - a broken sequence is a corrupt file, not a failed build
        row.update(status=str(Status.CORRUPT), error=f"functional groups: {type(exc).__name__}: {exc}"[:_ERROR_CHARS])
        return [row]
    rows = []
    for k, found in enumerate(values):
        out = dict(row, frame=k + 1 if frames > 1 else None, **found)
        if row["pixel_offset"] >= 0:
            out["pixel_offset"] = row["pixel_offset"] + k * row["pixel_length"]
        if frames > 1 and "ipp_x" not in found:
            out.update(status=str(Status.MISSING_GEOMETRY),
                       error=f"frame {k + 1} of {frames}: no per-frame ImagePositionPatient (Plane Position Sequence)")
        check_row(out, assume_intercept)
        rows.append(out)
    return rows


def frame_values(dataset: Dataset, frames: int) -> list[dict[str, Any]]:
    """The per-frame values of :data:`_GROUPS` of each frame: from its Per-frame Functional Groups item,
    else the shared item (the top-level element stays in the file's row when neither has it).

    Returns:
        ``frames`` dicts of row column → value (floats; a multi-valued element gives its first value,
        the position and orientation all of theirs); ``ipp_x`` is present only where the frame (or
        the shared group) gives a position.

    Raises:
        ValueError: a Per-frame Functional Groups Sequence whose item count is not ``frames``, or a
            malformed value.
    """
    per_frame: Sequence[Dataset] = dataset.get(_PER_FRAME) or [Dataset()] * frames
    if len(per_frame) != frames:
        raise ValueError(f"{len(per_frame)} Per-frame Functional Groups items for {frames} frames")
    shared = (dataset.get(_SHARED) or [Dataset()])[0]
    out = []
    for item in per_frame:
        found: dict[str, Any] = {}
        for sequence, keyword, columns in _GROUPS:
            value = _group_value(item, shared, sequence, keyword)
            if value is None:
                continue
            numbers = [float(v) for v in (value if isinstance(value, Sequence) and not isinstance(value, str)
                                          else [value])]
            if len(numbers) < len(columns) or not all(math.isfinite(v) for v in numbers[:len(columns)]):
                raise ValueError(f"{sequence} > {keyword}: malformed value {value!r}")
            found.update(zip(columns, numbers))
        out.append(found)
    return out


def _group_value(item: Dataset, shared: Dataset, sequence: str, keyword: str) -> Any:
    """``keyword`` inside the first item of ``sequence`` of the frame's item, else of the shared item."""
    for group in (item, shared):
        macro = group.get(sequence)
        if macro and keyword in macro[0] and macro[0][keyword].value not in (None, ""):
            return macro[0][keyword].value
    return None
