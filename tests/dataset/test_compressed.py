"""Compressed DICOM: real compressed CT from pydicom-data decodes to the HU of its uncompressed copy, broken
codestreams are corrupt with the decoder's message, missing decoders name the package to install."""

from __future__ import annotations

import json
import os
import shutil
import types
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

from ich3d.constants import Status
from ich3d.dataset import codecs, pixels
from ich3d.dataset.build import BuildOptions, build_series
from ich3d.dataset.dicom import read_header
from ich3d.dataset.index import load_index
from ich3d.dataset.pixels import read_pixels, to_hu


def _data(name: str) -> Path:
    """A pydicom test file (pydicom-data holds the large ones; the singular getter never downloads them)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} not installed (pip install pydicom-data)")
    return Path(path)


def _hu(path: Path, assume_intercept: float | None = None) -> np.ndarray:
    row = read_header(path, assume_intercept)
    assert row["status"] == Status.OK, row["error"]
    stored = read_pixels(types.SimpleNamespace(**row))
    return to_hu(stored, row["rescale_slope"], row["rescale_intercept"], row["bits_stored"],
                 row["pixel_representation"])


def test_jpeg2000_lossless_ct_decodes_to_the_hu_of_its_uncompressed_copy() -> None:
    compressed, plain = _data("693_J2KR.dcm"), _data("693_UNCR.dcm")
    assert read_header(compressed)["pixel_offset"] == -1 and read_header(plain)["pixel_offset"] > 0
    hu = _hu(compressed)
    assert hu.shape == (512, 512) and hu.min() < -1000 < 1000 < hu.max()
    np.testing.assert_array_equal(hu, _hu(plain))


def test_jpeg_lossless_ct_and_jpeg_ls_decode() -> None:
    jpeg = _hu(_data("bad_sequence.dcm"))  # CT, JPEG Lossless SV1 (process 14): python-gdcm
    assert jpeg.shape == (512, 512) and jpeg.min() < -900
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = pydicom.dcmread(_data("MR_small.dcm")).pixel_array
    np.testing.assert_array_equal(_hu(_data("MR_small_jpeg_ls_lossless.dcm"), assume_intercept=0), plain)


def test_preferred_plugins_are_the_default_installs_decoders() -> None:
    assert codecs.plugin_for("1.2.840.10008.1.2.4.90") == "pylibjpeg"  # JPEG 2000 lossless: pylibjpeg-openjpeg
    assert codecs.plugin_for("1.2.840.10008.1.2.5") == "pylibjpeg"  # RLE: pylibjpeg-rle
    assert codecs.plugin_for("1.2.840.10008.1.2.4.70") == ""  # JPEG lossless: pydicom's order (GDCM)


def _broken_j2k(path: Path) -> Path:
    """693_J2KR with its codestream cut to a third (the fragment's length still consistent)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(_data("693_J2KR.dcm"))
        frame = next(generate_frames(ds.PixelData))
        ds.PixelData = encapsulate([frame[:len(frame) // 3]])
        ds.SOPInstanceUID = "1.2.3.4.5.6.7"
        ds.save_as(path)
    return path


def test_broken_codestream_is_corrupt_with_the_decoders_message_and_the_build_goes_on(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(_data("693_J2KR.dcm"), inputs / "good.dcm")
    broken = _broken_j2k(inputs / "broken.dcm")
    assert read_header(broken)["status"] == Status.OK  # the header is fine: only decoding tells
    summary = build_series([inputs], tmp_path / "ds",
                           options=BuildOptions(image_size=32, workers=1, progress=False))
    assert summary["counts"] == {"corrupt": 1, "ok": 1}
    slices, _ = load_index(tmp_path / "ds")
    row = slices.set_index("path").loc[str(broken)]
    assert row["status"] == Status.CORRUPT and "J2K" in row["error"] and "\n" not in row["error"]
    assert json.loads((tmp_path / "ds" / "build.json").read_text())["pixel_pass"]["pixel_failures"] == {"corrupt": 1}


def test_decoding_happens_in_the_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = tmp_path / "in"
    for i in range(3):
        ds = pydicom.dcmread(_data("693_J2KR.dcm"))
        ds.SOPInstanceUID, ds.ImagePositionPatient = f"1.2.3.{i}", [0.0, 0.0, 5.0 * i]
        inputs.mkdir(exist_ok=True)
        ds.save_as(inputs / f"{i}.dcm")
    log = tmp_path / "decoders.txt"
    decode = pixels._decode

    def logged(*args: object) -> np.ndarray:
        with open(log, "a") as file:
            file.write(f"{os.getpid()}\n")
        return decode(*args)

    monkeypatch.setattr(pixels, "_decode", logged)
    summary = build_series([inputs], tmp_path / "ds",
                           options=BuildOptions(image_size=32, workers=2, progress=False))
    assert summary["counts"] == {"ok": 3}
    pids = log.read_text().split()
    assert len(pids) == 3 and str(os.getpid()) not in pids


def test_a_missing_decoder_names_the_package_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = types.SimpleNamespace(is_available=False, missing_dependencies=["pylibjpeg-openjpeg"],
                                    available_plugins=())
    monkeypatch.setattr(codecs, "get_decoder", lambda uid: missing)
    row = read_header(_data("693_J2KR.dcm"))
    assert row["status"] == Status.UNSUPPORTED_SYNTAX
    assert "JPEG 2000" in row["error"] and "pip install pylibjpeg pylibjpeg-openjpeg" in row["error"]


def test_12bit_jpeg_extended_needs_the_gpl_extra() -> None:
    row = read_header(_data("JPGExtended.dcm"))
    if "pylibjpeg" in codecs.get_decoder(pydicom.uid.JPEGExtended12Bit).available_plugins:
        pytest.skip("pylibjpeg-libjpeg is installed here")
    assert row["status"] == Status.UNSUPPORTED_SYNTAX and "ich3d[libjpeg]" in row["error"]
