"""Header rows that never raise, raw pixel reads, HU conversion and the RSNA 12-bit fix."""

from __future__ import annotations

import types
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import ImplicitVRLittleEndian, JPEGLSLossless, RLELossless

from conftest import ramp, write_slice
from ich3d.constants import Status
from ich3d.dataset import dicom
from ich3d.dataset.dicom import HEADER_COLUMNS, fix_rsna_12bit, image_id_of, read_header, read_pixels, to_hu


def _pixels_of(row: dict) -> np.ndarray:
    return read_pixels(types.SimpleNamespace(**row))


def test_to_hu_applies_slope_and_intercept() -> None:
    pixels = np.array([[0, 1000], [1024, 2048]], dtype=np.int16)
    hu = to_hu(pixels, 1.0, -1024.0, 16, 1)
    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu, [[-1024, -24], [0, 1024]])
    np.testing.assert_array_equal(to_hu(pixels, 2.0, -10.0, 16, 1), pixels * 2.0 - 10)


def test_12bit_fix_on_hand_made_pixels() -> None:
    """BitsStored 12, unsigned, intercept > -100: x + 1000 modulo 4096, intercept -1000."""
    pixels = np.array([[0, 24], [3095, 3096], [4000, 4095]], dtype=np.uint16)
    hu = to_hu(pixels, 1.0, 0.0, 12, 0)
    expected = np.array([[1000, 1024], [4095, 0], [904, 999]]) - 1000.0
    np.testing.assert_array_equal(hu, expected)


@pytest.mark.parametrize(("bits_stored", "representation", "intercept"), [(16, 0, 0.0), (12, 1, 0.0), (12, 0, -1024.0)])
def test_12bit_fix_only_when_all_three_conditions_hold(bits_stored: int, representation: int, intercept: float) -> None:
    pixels = np.array([[3500, 10]], dtype=np.uint16)
    np.testing.assert_array_equal(to_hu(pixels, 1.0, intercept, bits_stored, representation), pixels + intercept)


def test_to_hu_vectorised_over_slices_matches_per_slice() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, size=(3, 4, 4)).astype(np.uint16)
    slope, intercept = np.array([1.0, 1.0, 2.0]), np.array([0.0, -1024.0, -5.0])
    bits, representation = np.array([12, 12, 16]), np.array([0, 0, 0])
    stacked = to_hu(pixels, slope, intercept, bits, representation)
    for i in range(3):
        np.testing.assert_array_equal(stacked[i], to_hu(pixels[i], slope[i], intercept[i], bits[i], representation[i]))
    fixed, new_intercept = fix_rsna_12bit(pixels, intercept, bits, representation)
    assert new_intercept.ravel().tolist() == [-1000.0, -1024.0, -5.0]
    untouched = pixels[1:]
    assert fix_rsna_12bit(untouched, intercept[1:], bits[1:], representation[1:])[0] is untouched


def test_read_header_of_a_good_slice(tmp_path: Path) -> None:
    path = write_slice(tmp_path / "ID_0a1b2c3d4.dcm", InstanceNumber=7, ImagePositionPatient=[-1.5, 2.0, 33.25])
    row = read_header(path)
    assert list(row) == list(HEADER_COLUMNS)
    assert row["status"] == Status.OK and row["error"] == ""
    assert row["image_id"] == row["sop_uid"] == "ID_0a1b2c3d4"
    assert (row["instance_number"], row["rows"], row["cols"]) == (7, 32, 32)
    assert (row["ipp_x"], row["ipp_y"], row["ipp_z"]) == (-1.5, 2.0, 33.25)
    assert (row["iop_rx"], row["iop_cy"], row["pixel_spacing"]) == (1.0, 1.0, 0.5)
    rescale = (row["rescale_slope"], row["rescale_intercept"])
    assert rescale == (1, -1024) and (row["window_center"], row["window_width"]) == (40, 80)
    assert row["pixel_length"] == 32 * 32 * 2
    np.testing.assert_array_equal(_pixels_of(row), ramp())


def test_multivalue_and_missing_window_tags(tmp_path: Path) -> None:
    multi = read_header(write_slice(tmp_path / "multi.dcm", WindowCenter=[36, 600], WindowWidth=[80, 2800]))
    assert (multi["window_center"], multi["window_width"]) == (36.0, 80.0)
    absent = read_header(write_slice(tmp_path / "absent.dcm", WindowCenter=None, WindowWidth=None))
    assert np.isnan(absent["window_center"]) and np.isnan(absent["window_width"])
    assert absent["status"] == Status.OK


def test_defaults_when_rescale_tags_are_absent(tmp_path: Path) -> None:
    row = read_header(write_slice(tmp_path / "plain.dcm", RescaleSlope=None, RescaleIntercept=None, BitsStored=None))
    assert (row["rescale_slope"], row["rescale_intercept"], row["bits_stored"]) == (1.0, 0.0, 16)


@pytest.mark.parametrize(("name", "attributes", "status"), [
    ("no_pixels", {"PixelData": None}, Status.NO_PIXELS),
    ("no_ipp", {"ImagePositionPatient": None}, Status.MISSING_GEOMETRY),
    ("short_iop", {"ImageOrientationPatient": [1.0, 0.0, 0.0]}, Status.MISSING_GEOMETRY),
    ("colour", {"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB"}, Status.UNSUPPORTED_IMAGE),
    ("frames", {"NumberOfFrames": 2}, Status.UNSUPPORTED_IMAGE),
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
    assert row["status"] == Status.CORRUPT and "inside the header" in row["error"]


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, "1.2.840.10008.1.2.1"])
def test_file_without_preamble_is_read(tmp_path: Path, syntax: str) -> None:
    path = write_slice(tmp_path / "bare.dcm", syntax=syntax, preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    row = read_header(path)
    assert row["status"] == Status.OK and row["transfer_syntax"] == syntax
    np.testing.assert_array_equal(_pixels_of(row), ramp())


def test_compressed_slice_is_decoded_by_pydicom(tmp_path: Path) -> None:
    row = read_header(write_slice(tmp_path / "rle.dcm", syntax=RLELossless))
    assert row["status"] == Status.OK and row["pixel_offset"] == -1
    np.testing.assert_array_equal(_pixels_of(row), ramp())


def test_syntax_without_decoder_is_unsupported(tmp_path: Path) -> None:
    path = write_slice(tmp_path / "jpegls.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless  # pyjpegls is not installed here
        ds.PixelData = encapsulate([ds.PixelData])
        ds.save_as(path)
    row = read_header(path)
    assert row["status"] == Status.UNSUPPORTED_SYNTAX and JPEGLSLossless in row["error"]


def test_unused_high_bits_are_masked_like_pydicom(tmp_path: Path) -> None:
    stored = ramp(dtype=np.uint16) | 0xF000
    path = write_slice(tmp_path / "b12.dcm", pixels=stored, BitsStored=12, HighBit=11, PixelRepresentation=0)
    pixels = _pixels_of(read_header(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(pixels, pydicom.dcmread(path).pixel_array)
    np.testing.assert_array_equal(pixels, ramp(dtype=np.uint16))


def test_read_pixels_raises_on_a_file_cut_after_the_header_pass(tmp_path: Path) -> None:
    path = write_slice(tmp_path / "later.dcm")
    row = read_header(path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        _pixels_of(row)


def test_image_id_strips_only_dcm() -> None:
    assert image_id_of("/a/ID_0a1b2c3d4.dcm") == "ID_0a1b2c3d4"
    assert image_id_of("/a/IM.DCM") == "IM"
    assert image_id_of("/a/1.2.840.1234") == "1.2.840.1234"


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


def test_12bit_fix_keeps_uint16_and_matches_the_notebook_on_12bit_values() -> None:
    pixels = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    fixed, intercept = fix_rsna_12bit(pixels, 0.0, 12, 0)
    notebook = pixels.astype(np.int64) + 1000
    notebook[notebook >= 4096] -= 4096
    assert fixed.dtype == np.uint16 and intercept.item() == -1000
    np.testing.assert_array_equal(fixed, notebook)


def test_pixel_data_length_must_match_the_image_size(tmp_path: Path) -> None:
    short = read_header(write_slice(tmp_path / "short.dcm", Rows=40))
    assert short["status"] == Status.CORRUPT and "Pixel Data has 2048 bytes" in short["error"]
    long = read_header(write_slice(tmp_path / "long.dcm", Rows=16))
    assert long["status"] == Status.CORRUPT
    odd = read_header(write_slice(tmp_path / "odd.dcm", pixels=np.ones((3, 3), np.uint8), BitsAllocated=8,
                                  BitsStored=8, HighBit=7, PixelRepresentation=0))
    assert odd["status"] == Status.OK and odd["pixel_length"] == 9


def test_read_pixels_reuses_a_scratch_buffer(tmp_path: Path) -> None:
    small = read_header(write_slice(tmp_path / "small.dcm", pixels=ramp(16)))
    large = read_header(write_slice(tmp_path / "large.dcm", pixels=ramp(32)))
    scratch = bytearray()
    np.testing.assert_array_equal(read_pixels(types.SimpleNamespace(**small), scratch), ramp(16))
    assert len(scratch) == 16 * 16 * 2
    np.testing.assert_array_equal(read_pixels(types.SimpleNamespace(**large), scratch), ramp(32))
    assert len(scratch) == 32 * 32 * 2


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, "1.2.840.10008.1.2.1"])
def test_numbers_decode_in_both_vr_encodings(tmp_path: Path, syntax: str) -> None:
    """IS values are text and US values binary, also in implicit VR files (no VR on the wire)."""
    row = read_header(write_slice(tmp_path / "n.dcm", syntax=syntax, InstanceNumber=1234, NumberOfFrames=1))
    assert (row["instance_number"], row["rows"], row["bits_stored"], row["pixel_representation"]) == (1234, 32, 16, 1)
    assert row["status"] == Status.OK
