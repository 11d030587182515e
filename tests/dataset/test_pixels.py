"""Pixels: raw reads at the indexed offset, pydicom decoding, the RSNA 12-bit fix and Hounsfield units."""

from __future__ import annotations

import types
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import ramp, write_slice
from pydicom.uid import RLELossless

from ich3d.constants import Status
from ich3d.dataset.dicom import read_header
from ich3d.dataset.pixels import fix_rsna_12bit, read_pixels, to_hu


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


def test_compressed_slice_is_decoded_by_pydicom(tmp_path: Path) -> None:
    row = read_header(write_slice(tmp_path / "rle.dcm", syntax=RLELossless))
    assert row["status"] == Status.OK and row["pixel_offset"] == -1
    np.testing.assert_array_equal(_pixels_of(row), ramp())


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


def test_12bit_fix_keeps_uint16_and_matches_the_notebook_on_12bit_values() -> None:
    pixels = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    fixed, intercept = fix_rsna_12bit(pixels, 0.0, 12, 0)
    notebook = pixels.astype(np.int64) + 1000
    notebook[notebook >= 4096] -= 4096
    assert fixed.dtype == np.uint16 and intercept.item() == -1000
    np.testing.assert_array_equal(fixed, notebook)


def test_read_pixels_reuses_a_scratch_buffer(tmp_path: Path) -> None:
    small = read_header(write_slice(tmp_path / "small.dcm", pixels=ramp(16)))
    large = read_header(write_slice(tmp_path / "large.dcm", pixels=ramp(32)))
    scratch = bytearray()
    np.testing.assert_array_equal(read_pixels(types.SimpleNamespace(**small), scratch), ramp(16))
    assert len(scratch) == 16 * 16 * 2
    np.testing.assert_array_equal(read_pixels(types.SimpleNamespace(**large), scratch), ramp(32))
    assert len(scratch) == 32 * 32 * 2
