"""Enhanced (multi-frame) CT: one row per frame from the functional groups, ordered, cached and keyed like
single-frame files (pydicom-data's eCT_Supplemental and the package's own synthetic series)."""

from __future__ import annotations

import types
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import clean_series
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless

from ich3d.constants import Status
from ich3d.dataset.build import BuildOptions, build_series
from ich3d.dataset.cache import load_series
from ich3d.dataset.dicom import read_header
from ich3d.dataset.index import load_index
from ich3d.dataset.pixels import read_pixels, to_hu
from ich3d.dataset.roles import SeriesRules
from ich3d.dataset.rows import read_rows
from ich3d.synth.formats import write_enhanced

ALL = SeriesRules(mode="all")


def _ect() -> Path:
    path = get_testdata_file("eCT_Supplemental.dcm", download=False)
    if path is None:
        pytest.skip("eCT_Supplemental.dcm not installed (pip install pydicom-data)")
    return Path(path)


def _hu(row: dict) -> np.ndarray:
    stored = read_pixels(types.SimpleNamespace(**row))
    return to_hu(stored, row["rescale_slope"], row["rescale_intercept"], row["bits_stored"],
                 row["pixel_representation"])


def test_enhanced_ct_gives_one_row_per_frame_from_its_functional_groups() -> None:
    rows = read_rows(_ect())
    assert [row["frame"] for row in rows] == [1, 2] and all(row["status"] == Status.OK for row in rows)
    assert [row["ipp_z"] for row in rows] == [-159.0, -149.0]  # Per-frame Plane Position
    assert {(row["iop_rx"], row["pixel_spacing"], row["rescale_intercept"], row["window_center"],
             row["slice_thickness"]) for row in rows} == {(-1.0, 0.388672, -1024.0, 49.0, 10.0)}  # shared groups
    assert rows[1]["pixel_offset"] - rows[0]["pixel_offset"] == rows[0]["pixel_length"] == 512 * 512 * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = pydicom.dcmread(_ect()).pixel_array
    for row, frame in zip(rows, frames):
        np.testing.assert_array_equal(_hu(row), frame * 1.0 - 1024)
    single = read_header(_ect())
    assert single["status"] == Status.UNSUPPORTED_IMAGE and "read_rows" in single["error"]


def test_enhanced_ct_is_a_series_of_images_keyed_by_frame(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ect.dcm").write_bytes(_ect().read_bytes())
    build_series([tmp_path / "in"], tmp_path / "ds",
                 options=BuildOptions(image_size=32, workers=1, progress=False, series_rules=ALL))
    slices, series = load_index(tmp_path / "ds")
    sop = read_rows(_ect())[0]["sop_uid"]
    # IOP (-1, 0, 0), (0, 1, 0): the normal points to -z, so frame 2 (z = -149) comes first
    assert slices["image_id"].tolist() == [f"{sop}#2", f"{sop}#1"] and slices["frame"].tolist() == [2, 1]
    assert slices["slice_index"].tolist() == [0, 1] and len(series) == 1 and series["n_ok"].item() == 2


def test_frames_without_positions_are_missing_geometry() -> None:
    path = get_testdata_file("emri_small.dcm", download=False)  # enhanced MR stripped of its functional groups
    if path is None:
        pytest.skip("emri_small.dcm not installed")
    rows = read_rows(path)
    assert len(rows) == 10 and {row["status"] for row in rows} == {Status.MISSING_GEOMETRY}
    assert "frame 1 of 10" in rows[0]["error"]


def test_a_per_frame_sequence_of_the_wrong_length_is_corrupt(tiny_dataset: Path, tmp_path: Path) -> None:
    paths = next(iter(clean_series(tiny_dataset).values()))
    path = write_enhanced(paths[:3], tmp_path / "mf.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        del ds.PerFrameFunctionalGroupsSequence[2]
        ds.save_as(path)
    rows = read_rows(path)
    assert len(rows) == 1 and rows[0]["status"] == Status.CORRUPT and "2 Per-frame" in rows[0]["error"]


@pytest.mark.parametrize(("syntax", "per_frame_rescale"), [(None, False), (JPEG2000Lossless, True)])
def test_synthetic_series_as_one_file_orders_and_caches_like_its_slices(
        tiny_dataset: Path, tmp_path: Path, syntax: str | None, per_frame_rescale: bool) -> None:
    uid, paths = next(iter(clean_series(tiny_dataset).items()))
    shuffled = np.random.default_rng(0).permutation(len(paths)).tolist()
    options = {"syntax": syntax} if syntax else {}
    (tmp_path / "in").mkdir()
    write_enhanced(paths, tmp_path / "in" / "series.dcm", frame_order=shuffled, per_frame_rescale=per_frame_rescale,
                   **options)
    build_series([tmp_path / "in"], tmp_path / "ds",
                 options=BuildOptions(image_size=32, workers=1, progress=False, series_rules=ALL))
    slices, series = load_index(tmp_path / "ds")
    reference, _ = load_index(tiny_dataset)
    reference = reference[reference["series_uid"] == uid].sort_values("slice_index")
    assert series["series_uid"].tolist() == [uid] and (slices["status"] == Status.OK).all()
    assert slices["frame"].tolist() == [shuffled.index(k) + 1 for k in range(len(paths))]  # frames by position
    np.testing.assert_allclose(slices["position"], reference["position"], atol=1e-4)
    np.testing.assert_array_equal(load_series(tmp_path / "ds", uid), load_series(tiny_dataset, uid))
