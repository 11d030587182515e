"""Writing synthetic slices as DICOM, with the RSNA quirks: pixel representations, window tags, instance
numbers, transfer syntaxes, truncated files.

Files are written without value validation: RSNA's ``ID_...`` identifiers are not valid UIDs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from pydicom import dcmwrite
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ich3d.synth import phantom
from ich3d.synth.plan import SeriesPlan

_WINDOWS = ((40, 80), (35, 135), (40, 150), (30, 80), (36, 100))


def encoder(rng: np.random.Generator, kind: str, size: int) -> Callable[[np.ndarray], np.ndarray]:
    """HU -> stored pixels for a pixel representation (see `_PIXEL_TAGS`); signed series may pad the
    corners outside the reconstruction circle with -2000 (HU -3024), as many RSNA scanners did."""
    yy, xx = np.ogrid[:size, :size]
    outside = ((yy - (size - 1) / 2) ** 2 + (xx - (size - 1) / 2) ** 2) > (size / 2) ** 2
    pad = kind == "signed" and rng.random() < 0.5

    def encode(hu: np.ndarray) -> np.ndarray:
        v = np.rint(hu)
        if kind == "wrapped12":  # stored = HU mod 4096: the fix (x = p + 1000, wrap at 4096, -1000) undoes it
            return np.mod(np.clip(v, -1000, 3095), 4096).astype(np.uint16)
        if kind == "signed":
            px = (np.clip(v, -1024, 3071) + 1024).astype(np.int16)
            if pad:
                px[outside] = -2000
            return px
        return np.clip(v + 1024, 0, 4095 if kind == "unsigned12" else 65535).astype(np.uint16)

    return encode


#: (BitsStored, PixelRepresentation, RescaleIntercept) of each pixel representation.
_PIXEL_TAGS = {"signed": (16, 1, "-1024"), "unsigned": (16, 0, "-1024"), "unsigned12": (12, 0, "-1024"),
               "wrapped12": (12, 0, "1")}  # fmt: skip


def decode(stored: np.ndarray, bits_stored: int, pixel_representation: int, intercept: float) -> np.ndarray:
    """The HU :func:`encoder` encoded, from its own tag table: the generator's truth, computed without the
    reader (a bug in :func:`ich3d.dataset.pixels.to_hu` must show against it, not hide in it).

    Args:
        stored: stored pixel values as written; the tags are those :func:`template` wrote.

    Returns:
        Same shape, float64 HU (pixels padded at -2000 outside the reconstruction circle give -3024).
    """
    values = stored.astype(np.float64)
    if (bits_stored, pixel_representation, f"{intercept:g}") == _PIXEL_TAGS["wrapped12"]:
        return np.where(values > 3095, values - 4096, values)  # stored = HU mod 4096, HU in [-1000, 3095]
    return values - 1024.0  # slope 1, intercept -1024 for every other representation


def _el(tag: int, vr: str, value: object) -> DataElement:
    """A data element (made, like the files, without value validation: RSNA's "ID_..." UIDs are invalid)."""
    return DataElement(tag, vr, value)


def template(rng: np.random.Generator, plan: SeriesPlan, grid: phantom.SliceGrid) -> tuple[list[DataElement], str]:
    """The data elements shared by the slices of a series, and its transfer syntax UID."""
    bits, representation, intercept = _PIXEL_TAGS[plan.quirks["pixels"]]
    elems = [
        _el(0x00080016, "UI", CTImageStorage), _el(0x00080060, "CS", "CT"), _el(0x00100020, "LO", plan.patient_id),
        _el(0x0020000D, "UI", plan.study_uid), _el(0x0020000E, "UI", plan.series_uid), _el(0x00200010, "SH", ""),
        _el(0x00200037, "DS", [f"{x + 0.0:.6f}" for x in (*grid.row_dir, *grid.col_dir)]),  # no "-0.000000"
        _el(0x00280002, "US", 1), _el(0x00280004, "CS", "MONOCHROME2"),
        _el(0x00280010, "US", grid.rows), _el(0x00280011, "US", grid.cols),
        _el(0x00280030, "DS", [f"{grid.spacing:.10g}"] * 2), _el(0x00280100, "US", 16),
        _el(0x00280101, "US", bits), _el(0x00280102, "US", bits - 1), _el(0x00280103, "US", representation),
        _el(0x00281052, "DS", intercept), _el(0x00281053, "DS", "1"),
    ]  # fmt: skip
    center, width = _WINDOWS[int(rng.integers(len(_WINDOWS)))]
    if plan.quirks["window"] == "single":
        elems += [_el(0x00281050, "DS", str(center)), _el(0x00281051, "DS", str(width))]
    elif plan.quirks["window"] == "multi":  # RSNA style: zero-padded, the second pair maybe a bone window
        bone = rng.random() < 0.5
        centers, widths = [center, 500 if bone else center], [width, 2000 if bone else width]
        elems += [_el(0x00281050, "DS", [f"{v:05d}" for v in centers]),
                  _el(0x00281051, "DS", [f"{v:05d}" for v in widths])]
    syntax = ImplicitVRLittleEndian if plan.quirks["syntax"] == "implicit" else ExplicitVRLittleEndian
    return elems, syntax


def instance_numbers(rng: np.random.Generator, kind: str, n: int) -> list[int | None]:
    """InstanceNumber of each slice in position order: ascending or descending, shuffled, or missing."""
    if kind == "missing":
        return [None] * n
    numbers = np.arange(1, n + 1)
    numbers = rng.permutation(numbers) if kind == "shuffled" else numbers[:: rng.choice([1, -1])]
    return [int(x) for x in numbers]


def write_slice(path: Path, template: list[DataElement], syntax: str, sop: str, number: int | None,
                 origin: np.ndarray, pixels: np.ndarray) -> None:  # fmt: skip
    """Write one DICOM file (file meta + template + the slice's own elements)."""
    ds = Dataset()
    for elem in template:
        ds.add(elem)
    ds.add(_el(0x00080018, "UI", sop))
    if number is not None:
        ds.add(_el(0x00200013, "IS", str(number)))
    ds.add(_el(0x00200032, "DS", [f"{x:.6f}" for x in origin]))
    ds.add(_el(0x7FE00010, "OW", pixels.tobytes()))
    meta = FileMetaDataset()
    for tag, value in ((0x00020002, CTImageStorage), (0x00020003, sop), (0x00020010, syntax)):
        meta.add(_el(tag, "UI", value))
    ds.file_meta = meta
    dcmwrite(path, ds, enforce_file_format=True)


def truncate_pixels(path: Path) -> None:
    """Cut the last 40 % of a file: the header stays readable, the pixel data is truncated."""
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.truncate(size - (2 * size) // 5)
