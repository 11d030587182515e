"""Header rows that never raise: the fast scanner, the pydicom path, statuses and their reasons."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
from conftest import ramp, write_slice
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from ich3d.constants import Status
from ich3d.dataset import dicom
from ich3d.dataset.dicom import HEADER_COLUMNS, read_header
from ich3d.dataset.pixels import read_pixels


def _pixels_of(row: dict) -> np.ndarray:
    return read_pixels(types.SimpleNamespace(**row))


def test_read_header_of_a_good_slice(tmp_path: Path) -> None:
    path = write_slice(tmp_path / "ID_0a1b2c3d4.dcm", InstanceNumber=7, ImagePositionPatient=[-1.5, 2.0, 33.25])
    row = read_header(path)
    assert list(row) == list(HEADER_COLUMNS)
    assert row["status"] == Status.OK and row["error"] == ""
    assert row["sop_uid"] == "ID_0a1b2c3d4" and row["frame"] is None
    assert (row["instance_number"], row["rows"], row["cols"]) == (7, 32, 32)
    assert (row["ipp_x"], row["ipp_y"], row["ipp_z"]) == (-1.5, 2.0, 33.25)
    assert (row["iop_rx"], row["iop_cy"], row["pixel_spacing"]) == (1.0, 1.0, 0.5)
    rescale = (row["rescale_slope"], row["rescale_intercept"])
    assert rescale == (1, -1024) and (row["window_center"], row["window_width"]) == (40, 80)
    assert row["pixel_length"] == 32 * 32 * 2
    np.testing.assert_array_equal(_pixels_of(row), ramp())


def test_the_tags_that_decide_a_series_role_are_kept(tmp_path: Path) -> None:
    row = read_header(write_slice(tmp_path / "bone.dcm", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
                                  ConvolutionKernel=["Br64", "3"], SliceThickness=1.25, SeriesNumber=4,
                                  SeriesDescription="Kopf Knochen 1.25", ContrastBolusAgent="Iohexol",
                                  BodyPartExamined="HEAD"))
    assert (row["modality"], row["sop_class_uid"]) == ("CT", "1.2.840.10008.5.1.4.1.1.2")
    assert row["image_type"] == "ORIGINAL\\PRIMARY\\AXIAL" and row["convolution_kernel"] == "Br64\\3"
    assert (row["slice_thickness"], row["series_number"], row["contrast_agent"]) == (1.25, 4, "Iohexol")
    assert (row["series_description"], row["body_part"]) == ("Kopf Knochen 1.25", "HEAD")


def test_multivalue_and_missing_window_tags(tmp_path: Path) -> None:
    multi = read_header(write_slice(tmp_path / "multi.dcm", WindowCenter=[36, 600], WindowWidth=[80, 2800]))
    assert (multi["window_center"], multi["window_width"]) == (36.0, 80.0)
    absent = read_header(write_slice(tmp_path / "absent.dcm", WindowCenter=None, WindowWidth=None))
    assert np.isnan(absent["window_center"]) and np.isnan(absent["window_width"])
    assert absent["status"] == Status.OK


def test_absent_rescale_tags_are_recorded_not_guessed(tmp_path: Path) -> None:
    path = write_slice(tmp_path / "plain.dcm", RescaleSlope=None, RescaleIntercept=None, BitsStored=None)
    row = read_header(path)
    assert row["status"] == Status.MISSING_RESCALE and "--assume-intercept" in row["error"]
    assumed = read_header(path, assume_intercept=-1024)
    assert assumed["status"] == Status.OK and (assumed["rescale_slope"], assumed["rescale_intercept"]) == (1.0, -1024.0)
    assert "RescaleIntercept absent: -1024 assumed" in assumed["error"] and assumed["bits_stored"] == 16
    slope_only = read_header(write_slice(tmp_path / "slope.dcm", RescaleSlope=None))
    assert slope_only["status"] == Status.OK and slope_only["rescale_slope"] == 1.0
    assert slope_only["error"] == "RescaleSlope absent: 1 assumed"


def test_compressed_file_cut_short_keeps_its_header(tmp_path: Path) -> None:
    path = write_slice(tmp_path / "rle.dcm", syntax=RLELossless)
    path.write_bytes(path.read_bytes()[:-100])
    row = read_header(path)
    assert row["status"] == Status.CORRUPT and "cut short" in row["error"]
    assert row["series_uid"] == "1.2.3.1.1" and row["rows"] == 32


@pytest.mark.parametrize(("name", "attributes", "status"), [
    ("no_pixels", {"PixelData": None}, Status.NO_PIXELS),
    ("no_ipp", {"ImagePositionPatient": None}, Status.MISSING_GEOMETRY),
    ("short_iop", {"ImageOrientationPatient": [1.0, 0.0, 0.0]}, Status.MISSING_GEOMETRY),
    ("colour", {"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB"}, Status.UNSUPPORTED_IMAGE),
    ("frames", {"NumberOfFrames": 2}, Status.CORRUPT),  # the Pixel Data holds one frame
])
def test_unusable_slices_get_a_status(tmp_path: Path, name: str, attributes: dict, status: Status) -> None:
    row = read_header(write_slice(tmp_path / f"{name}.dcm", **attributes))
    assert row["status"] == status and row["error"]


def test_truncated_pixel_data_is_corrupt(tmp_path: Path) -> None:
    path = write_slice(tmp_path / "cut.dcm")
    path.write_bytes(path.read_bytes()[:-100])
    row = read_header(path)
    assert row["status"] == Status.CORRUPT and "truncated" in row["error"]
    assert row["series_uid"] == "1.2.3.1.1"  # the header is still used to place the slice


def test_junk_missing_and_empty_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not a DICOM file at all" * 20)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    cases = ((junk, Status.NOT_DICOM), (empty, Status.NOT_DICOM), (tmp_path / "gone.dcm", Status.READ_ERROR))
    for path, status in cases:
        row = read_header(path)
        assert row["status"] == status and row["error"], path
        assert row["series_uid"] is None and np.isnan(row["ipp_z"])


def test_file_cut_inside_the_header_is_corrupt(tmp_path: Path) -> None:
    path = write_slice(tmp_path / "cut_header.dcm")
    data = path.read_bytes()
    path.write_bytes(data[:data.find(b"MONOCHROME2") + 4])
    row = read_header(path)
    assert row["status"] == Status.CORRUPT and "runs past the end of the file" in row["error"]


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, "1.2.840.10008.1.2.1"])
def test_file_without_preamble_is_read(tmp_path: Path, syntax: str) -> None:
    path = write_slice(tmp_path / "bare.dcm", syntax=syntax, preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    row = read_header(path)
    assert row["status"] == Status.OK and row["transfer_syntax"] == syntax
    np.testing.assert_array_equal(_pixels_of(row), ramp())


def _same(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] or (isinstance(a[k], float) and np.isnan(a[k]) and np.isnan(b[k])) for k in a)


def test_fast_scanner_agrees_with_pydicom(tmp_path: Path, synthetic_rsna: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file of the synthetic dataset, plus hand-made variants, reads the same through both paths."""
    paths = sorted((synthetic_rsna / "stage_2_train").iterdir())[:60]
    paths += [write_slice(tmp_path / "implicit.dcm", syntax=ImplicitVRLittleEndian, WindowCenter=[40, 80]),
              write_slice(tmp_path / "b12.dcm", pixels=ramp(dtype=np.uint16), BitsStored=12, PixelRepresentation=0),
              write_slice(tmp_path / "sparse.dcm", WindowCenter=None, InstanceNumber=None, PixelSpacing=None)]
    fast = [read_header(path) for path in paths]
    assert sum(dicom._scan_native(path.read_bytes()[:1 << 16]) is not None for path in paths) >= len(paths) - 2
    monkeypatch.setattr(dicom, "_scan_native", lambda data: None)
    slow = [read_header(path) for path in paths]
    assert all(_same(a, b) for a, b in zip(fast, slow))
    assert sum(row["status"] == Status.OK for row in fast) >= len(paths) - 2


def test_pixel_data_length_must_match_the_image_size(tmp_path: Path) -> None:
    short = read_header(write_slice(tmp_path / "short.dcm", Rows=40))
    assert short["status"] == Status.CORRUPT and "Pixel Data has 2048 bytes" in short["error"]
    long = read_header(write_slice(tmp_path / "long.dcm", Rows=16))
    assert long["status"] == Status.CORRUPT
    odd = read_header(write_slice(tmp_path / "odd.dcm", pixels=np.ones((3, 3), np.uint8), BitsAllocated=8,
                                  BitsStored=8, HighBit=7, PixelRepresentation=0))
    assert odd["status"] == Status.OK and odd["pixel_length"] == 9


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, "1.2.840.10008.1.2.1"])
def test_numbers_decode_in_both_vr_encodings(tmp_path: Path, syntax: str) -> None:
    """IS values are text and US values binary, also in implicit VR files (no VR on the wire)."""
    row = read_header(write_slice(tmp_path / "n.dcm", syntax=syntax, InstanceNumber=1234, NumberOfFrames=1))
    assert (row["instance_number"], row["rows"], row["bits_stored"], row["pixel_representation"]) == (1234, 32, 16, 1)
    assert row["status"] == Status.OK
