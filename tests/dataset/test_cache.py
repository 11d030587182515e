"""Resizing, cache files and the per-series cache worker."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
from conftest import ramp, write_slice

from ich3d.constants import HU_MAX, HU_MIN, MISSING_HU, Status
from ich3d.dataset.cache import (
    CacheSlice,
    cache_file_ok,
    load_series,
    resize,
    resize_matrix,
    slice_to_cache,
    to_cache_dtype,
    write_atomic,
    write_series_cache,
)
from ich3d.dataset.dicom import read_header
from ich3d.dataset.pixels import read_pixels, to_hu
from ich3d.errors import InputError
from ich3d.layout import DatasetFolder


@pytest.mark.parametrize(("n_in", "n_out"),
                         [(512, 256), (512, 128), (512, 224), (100, 64), (7, 3), (64, 64), (3, 7), (32, 96)])
def test_resize_equals_dense_separable_product(n_in: int, n_out: int) -> None:
    matrix = resize_matrix(n_in, n_out)
    assert matrix.shape == (n_out, n_in) and matrix.dtype == np.float32
    np.testing.assert_allclose(matrix.sum(axis=1), 1, atol=1e-5)
    image = np.random.default_rng(0).integers(-1024, 3000, size=(2, n_in, n_in)).astype(np.int16)
    expected = matrix.astype(np.float64) @ image @ matrix.T.astype(np.float64)
    out = resize(image, n_out)
    assert out.shape == (2, n_out, n_out) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=2e-3)


def test_area_downsampling_averages_blocks() -> None:
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(resize(image, 2), [[2.5, 4.5], [10.5, 12.5]])
    third = resize_matrix(3, 2)  # output pixel 0 covers input 0 fully and half of input 1
    np.testing.assert_allclose(third, [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]], atol=1e-6)


def test_upsampling_interpolates_linearly() -> None:
    np.testing.assert_allclose(resize_matrix(2, 4), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    image = np.array([[0.0, 100.0], [0.0, 100.0]], dtype=np.float32)
    np.testing.assert_allclose(resize(image, 4)[0], [0, 25, 75, 100])


def test_to_cache_dtype_rounds_and_clips() -> None:
    out = to_cache_dtype(np.array([-5000.0, -0.6, 0.4, 1.5, 2.5, 40000.0], dtype=np.float32))
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, [HU_MIN, -1, 0, 2, 2, HU_MAX])


def test_write_atomic_and_load_series(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    volume = np.arange(2 * 4 * 4, dtype=np.int16).reshape(2, 4, 4)
    key = "0123456789abcdef"
    write_atomic(DatasetFolder(tmp_path).cache_file(key), volume)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"{key}.npy"]  # no temp file left
    mapped = load_series(tmp_path, key)
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    np.testing.assert_array_equal(load_series(tmp_path, key, mmap=False), volume)
    with pytest.raises(InputError, match="no cache file"):
        load_series(tmp_path, "fedcba9876543210")


def test_cache_file_ok_recognises_damaged_files(tmp_path: Path) -> None:
    path = tmp_path / "s.npy"
    write_atomic(path, np.zeros((3, 8, 8), dtype=np.int16))
    assert cache_file_ok(path, 3, 8)
    assert not cache_file_ok(path, 4, 8) and not cache_file_ok(path, 3, 16)  # another series' shape
    path.write_bytes(path.read_bytes()[:-10])  # cut short
    assert not cache_file_ok(path, 3, 8)
    path.write_bytes(b"garbage")
    assert not cache_file_ok(path, 3, 8) and not cache_file_ok(tmp_path / "absent.npy", 3, 8)
    write_atomic(path, np.zeros((3, 8, 8), dtype=np.float32))
    assert not cache_file_ok(path, 3, 8)


def test_cache_file_names_are_made_keys_never_uids(tmp_path: Path) -> None:
    assert DatasetFolder(tmp_path).cache_file("0123456789abcdef").name == "0123456789abcdef.npy"
    for uid in ("ID_0a/../x y", "1.2.3", "a" * 304, "0123456789ABCDEF"):
        with pytest.raises(ValueError, match="not a series_id"):
            DatasetFolder(tmp_path).cache_file(uid)
    with pytest.raises(InputError, match="not a series_id"):
        load_series(tmp_path, "1.2.3")


def _cache_slice(path: Path, status: str = "ok") -> CacheSlice:
    row = read_header(path) | {"image_id": path.stem}
    return CacheSlice(**{name: row[name] for name in CacheSlice._fields} | {"status": status})


def test_slice_to_cache_equals_hu_first_reference(tmp_path: Path) -> None:
    """Resizing the stored integers, then rescaling, equals converting to HU first (the linearity shortcut)."""
    stored = (ramp(64, np.uint16) * 3 % 4096).astype(np.uint16)
    path = write_slice(tmp_path / "w.dcm", pixels=stored, BitsStored=12, HighBit=11, PixelRepresentation=0,
                       RescaleIntercept=0.0, RescaleSlope=1.0)
    record = _cache_slice(path)
    row = types.SimpleNamespace(**read_header(path))
    reference = to_cache_dtype(resize(to_hu(read_pixels(row), 1.0, 0.0, 12, 0), 32))
    np.testing.assert_array_equal(slice_to_cache(record, 32), reference)


def test_non_square_slices_are_padded_with_air(tmp_path: Path) -> None:
    stored = np.full((16, 32), 1064, dtype=np.int16)  # 40 HU
    out = slice_to_cache(_cache_slice(write_slice(tmp_path / "wide.dcm", pixels=stored)), 32)
    assert out.shape == (32, 32)
    assert (out[:8] == HU_MIN).all() and (out[24:] == HU_MIN).all() and (out[8:24] == 40).all()


def test_write_series_cache_fills_failed_slices_and_reports_them(tmp_path: Path) -> None:
    good = _cache_slice(write_slice(tmp_path / "a.dcm"))
    skipped = _cache_slice(write_slice(tmp_path / "b.dcm"), status=str(Status.NO_PIXELS))
    vanished = _cache_slice(write_slice(tmp_path / "c.dcm"))
    cut = _cache_slice(write_slice(tmp_path / "d.dcm"))
    (tmp_path / "c.dcm").unlink()
    (tmp_path / "d.dcm").write_bytes((tmp_path / "d.dcm").read_bytes()[:700])
    out = tmp_path / "series.npy"
    failures = write_series_cache([good, skipped, vanished, cut], out, 16).failures
    assert [(f[0], f[2]) for f in failures] == [("c", Status.READ_ERROR), ("d", Status.CORRUPT)]
    assert failures[0][1] == str(tmp_path / "c.dcm") and "truncated" in failures[1][3]
    volume = np.load(out)
    assert volume.shape == (4, 16, 16) and volume.dtype == np.int16
    assert (volume[1:] == MISSING_HU).all() and (volume[0] != MISSING_HU).any()


@pytest.mark.parametrize("crop", ["none", "head"])
def test_failed_slices_fail_alike_with_and_without_the_crop(tmp_path: Path, crop: str) -> None:
    slices = [_cache_slice(write_slice(tmp_path / f"{name}.dcm")) for name in "ab"]
    (tmp_path / "b.dcm").unlink()
    result = write_series_cache(slices, tmp_path / "s.npy", 16, crop)
    assert [f[0] for f in result.failures] == ["b"] and (np.load(tmp_path / "s.npy")[1] == MISSING_HU).all()
    assert (result.box is None) == (crop == "none")
