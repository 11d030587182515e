"""A synthetic series in the other encodings ich3d reads: compressed single-frame files, one enhanced
multi-frame CT file, a NIfTI volume (docs/design.md §12).

Each writer takes the single-frame files of one series, as :mod:`ich3d.synth.series` writes them,
and stores the same images another way, so tests can check that every encoding gives the same
index order, cache and predictions. The generator itself (``ich3d synth``) is unchanged. The truth
written here (the NIfTI volume's HU, the slice order and spacing) is computed from the generator's own
pixel encoding (:func:`ich3d.synth.dicom_writer.decode`) and geometry, never with the reader's
``to_hu`` / ``slice_normals``: a bug there must show in the tests that compare the two.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pydicom
from pydicom.config import disable_value_validation
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

from ich3d.synth.dicom_writer import decode

T = TypeVar("T")
_FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS <-> RAS
#: Top-level elements an enhanced file copies from the slices.
_COPIED = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SamplesPerPixel",
           "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
           "PixelRepresentation")


def _quietly(function: Callable[..., T]) -> Callable[..., T]:
    """Runs ``function`` without pydicom's value validation and its warnings (RSNA IDs are not UIDs)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        with warnings.catch_warnings(), disable_value_validation():
            warnings.simplefilter("ignore")
            return function(*args, **kwargs)

    return wrapper


def read_series(paths: Sequence[Path]) -> list[Dataset]:
    """The slices of one series (single-frame files), sorted along their normal (inferior → superior
    for axial slices)."""
    datasets = [pydicom.dcmread(path) for path in paths]
    normal = _normal(datasets[0])
    return sorted(datasets, key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)))


@_quietly
def write_compressed(paths: Sequence[Path], folder: Path, syntax: str) -> list[Path]:
    """Writes each slice again into ``folder`` (same name), its Pixel Data compressed with ``syntax``
    (lossless syntaxes keep every value; pydicom's encoders: RLE built in, JPEG 2000 with
    pylibjpeg-openjpeg, JPEG-LS with pyjpegls)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(UID(syntax))
        ds.save_as(folder / Path(path).name, enforce_file_format=True)
        written.append(folder / Path(path).name)
    return written


@_quietly
def write_enhanced(paths: Sequence[Path], out: Path, syntax: str = ExplicitVRLittleEndian,
                   frame_order: Sequence[int] | None = None, per_frame_rescale: bool = False) -> Path:
    """Writes one series as one Enhanced CT Image file.

    Args:
        paths: the series' single-frame files (same size and orientation).
        out: the file to write.
        syntax: its transfer syntax (compressed ones are encoded frame by frame by pydicom).
        frame_order: the slices (indices in inferior → superior order) in the order of the frames;
            default: that order. A shuffled order checks that the index orders frames by position.
        per_frame_rescale: put RescaleIntercept/Slope in each frame's functional groups instead of
            the shared ones.

    Returns:
        ``out``; its SOPInstanceUID is derived from the series UID (the same file for the same series).
    """
    slices = read_series(paths)
    order = list(range(len(slices)) if frame_order is None else frame_order)
    first = slices[0]
    ds = Dataset()
    for keyword in _COPIED:
        setattr(ds, keyword, getattr(first, keyword))
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(first.SeriesInstanceUID), "enhanced"])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.NumberOfFrames = len(order)
    rescale = _item(RescaleIntercept=first.RescaleIntercept, RescaleSlope=first.RescaleSlope, RescaleType="HU")
    shared = _item(PlaneOrientationSequence=[_item(ImageOrientationPatient=first.ImageOrientationPatient)],
                   PixelMeasuresSequence=[_item(PixelSpacing=first.PixelSpacing,
                                                SliceThickness=_spacing(slices))])
    if "WindowCenter" in first:
        shared.FrameVOILUTSequence = [_item(WindowCenter=first.WindowCenter, WindowWidth=first.WindowWidth)]
    if not per_frame_rescale:
        shared.PixelValueTransformationSequence = [rescale]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for index in order:
        item = _item(PlanePositionSequence=[_item(ImagePositionPatient=slices[index].ImagePositionPatient)],
                     FrameContentSequence=[_item(InStackPositionNumber=index + 1, DimensionIndexValues=[index + 1])])
        if per_frame_rescale:
            item.PixelValueTransformationSequence = [_item(RescaleIntercept=slices[index].RescaleIntercept,
                                                           RescaleSlope=slices[index].RescaleSlope, RescaleType="HU")]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    pixels = np.stack([slices[index].pixel_array for index in order])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = pixels.tobytes()
    if UID(syntax).is_compressed:
        ds.compress(UID(syntax), pixels)
    ds.save_as(out, enforce_file_format=True)
    return out


@_quietly
def write_nifti(paths: Sequence[Path], out: Path, orientation: str = "LPS", reverse_slices: bool = False,
                intercept: float = 0.0) -> Path:
    """Writes one series as a NIfTI volume of its Hounsfield units.

    Args:
        paths: the series' single-frame files (same size and orientation).
        out: ``.nii`` or ``.nii.gz``.
        orientation: how the voxel array is stored: ``LPS`` (i along the image columns, j along its rows,
            as in the DICOM pixel grid) or ``RAS`` (both in-plane axes reversed, the usual NIfTI storage).
        reverse_slices: store the slices superior → inferior.
        intercept: scl_inter; the voxels store HU - ``intercept`` (int16), scl_slope 1.

    Returns:
        ``out``.
    """
    import nibabel

    slices = read_series(paths)
    hu = np.stack([decode(ds.pixel_array, int(ds.BitsStored), int(ds.PixelRepresentation), float(ds.RescaleIntercept))
                   for ds in slices])
    data = np.transpose(hu - intercept, (2, 1, 0)).astype(np.int16)  # (columns, rows, slices)
    orientation_cosines = np.asarray(slices[0].ImageOrientationPatient, float)
    row_cos, col_cos = orientation_cosines[:3], orientation_cosines[3:]
    spacing_row, spacing_col = (float(v) for v in slices[0].PixelSpacing)
    origin, last = (np.asarray(ds.ImagePositionPatient, float) for ds in (slices[0], slices[-1]))
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = row_cos * spacing_col, col_cos * spacing_row
    lps[:3, 2] = (last - origin) / max(len(slices) - 1, 1)
    lps[:3, 3] = origin
    flips = [orientation == "RAS", orientation == "RAS", reverse_slices]
    for axis, flip in enumerate(flips):
        if flip:
            data = np.flip(data, axis)
            lps[:3, 3] += lps[:3, axis] * (data.shape[axis] - 1)
            lps[:3, axis] *= -1
    image = nibabel.Nifti1Image(np.ascontiguousarray(data), _FLIP_XY @ lps)
    image.header.set_slope_inter(1.0, intercept)
    nibabel.save(image, out)
    return out


def _normal(ds: Dataset) -> np.ndarray:
    """(3,) the unit normal of a slice (row cosine × column cosine), computed here, not by the reader."""
    cosines = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(cosines[:3], cosines[3:])
    return normal / np.linalg.norm(normal)


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _spacing(slices: list[Dataset]) -> float:
    """The median distance (mm) between neighbouring slices along their normal."""
    normal = _normal(slices[0])
    positions = np.array([np.dot(np.asarray(ds.ImagePositionPatient, float), normal) for ds in slices])
    return round(float(np.median(np.diff(positions))), 4) if len(slices) > 1 else 1.0
