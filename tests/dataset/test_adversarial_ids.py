"""Identity, stacks and inputs on adversarial headers (issue 17, rows 1-11 and 19): no two patients' images
ever share pixels, a cache file or an exam row, and every file is accounted for once."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset

from conftest import write_slice
from ich3d.app.cli import main
from ich3d.constants import Status
from ich3d.dataset.build import build_series
from ich3d.dataset.cache import load_series
from ich3d.dataset.index import load_index
from ich3d.dataset.options import BuildOptions
from ich3d.dataset.roles import SeriesRules
from ich3d.errors import InputError
from ich3d.inference.run import InferOptions, predict
from ich3d.layout import InferFolder

SIZE = 16
_SOPS = itertools.count(1)
_PLACEHOLDER = {"PatientID": "X", "StudyInstanceUID": "Y", "SeriesInstanceUID": "Z"}


def write_series(folder: Path, hu: int, n: int = 4, z0: float = 0.0, raw: dict[str, bytes] | None = None,
                 **attributes: object) -> list[Path]:
    """``n`` slices 5 mm apart whose HU is ``hu`` everywhere (plus 1 per slice), so every patient's pixels are
    recognisable in the cache. ``raw`` sets identifiers to exact bytes (not valid text, any length)."""
    paths = []
    for i in range(n):
        values = {"SOPInstanceUID": f"1.2.826.0.1.{next(_SOPS)}", "InstanceNumber": i + 1,
                  "ImagePositionPatient": [-8.0, -8.0, z0 + 5.0 * i]} | attributes
        for keyword, value in (raw or {}).items():
            values[keyword] = "Q" + _PLACEHOLDER[keyword] + "Q" * (len(value) - 2)
        pixels = np.full((SIZE, SIZE), hu + 1024 + i, dtype=np.int16)
        path = write_slice(folder / f"{values['SOPInstanceUID']}.dcm", pixels, **values)
        data = path.read_bytes()
        for keyword, value in (raw or {}).items():
            placeholder = values[keyword].encode()
            assert data.count(placeholder) == 1 and len(value) == len(placeholder)
            data = data.replace(placeholder, value)
        path.write_bytes(data)
        paths.append(path)
    return paths


def build(folder: Path, out: Path, **options: object) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    summary = build_series([folder], out, options=BuildOptions(image_size=SIZE, workers=1, progress=False, crop="none",
                                                               **options))
    return *load_index(out), summary


def assert_own_pixels(dataset: Path, slices: pd.DataFrame, series: pd.DataFrame, hu_of: dict[str, int]) -> None:
    """Each cached stack holds the HU of its own patient only, in its own file; every file is one row."""
    assert series["series_id"].is_unique and series["cache_file"].is_unique
    assert slices["image_id"].is_unique and slices["path"].is_unique
    for row in series[series["build_cache"]].itertuples():
        volume = np.asarray(load_series(dataset, row.series_id), dtype=float)
        expected = hu_of[row.patient_id] + np.arange(row.n_slices)
        np.testing.assert_allclose(volume.mean(axis=(1, 2)), expected, atol=0.5)


def test_uids_that_differ_only_in_characters_a_file_name_cannot_hold(tmp_path: Path) -> None:
    """Row 1: series ``a/b`` and ``a_b`` (equal, then unequal counts) never share a cache file."""
    for counts in ((4, 4), (4, 6)):
        folder = tmp_path / f"in{counts[1]}"
        write_series(folder / "A", 0, counts[0], PatientID="A", StudyInstanceUID="1.1", SeriesInstanceUID="a/b")
        write_series(folder / "B", 300, counts[1], PatientID="B", StudyInstanceUID="1.2", SeriesInstanceUID="a_b")
        slices, series, _ = build(folder, tmp_path / f"ds{counts[1]}")
        assert sorted(series["series_uid"]) == ["a/b", "a_b"] and sorted(series["n_slices"]) == sorted(counts)
        assert_own_pixels(tmp_path / f"ds{counts[1]}", slices, series, {"A": 0, "B": 300})


def test_a_series_uid_reused_in_two_studies_and_a_third_named_like_the_old_rename(tmp_path: Path) -> None:
    """Row 2: ``S`` in two studies and ``S~2`` in a third: three series, three exams' worth of stacks."""
    write_series(tmp_path / "in/A", 0, 4, PatientID="A", StudyInstanceUID="1.1", SeriesInstanceUID="S")
    write_series(tmp_path / "in/B", 300, 5, PatientID="B", StudyInstanceUID="1.2", SeriesInstanceUID="S")
    write_series(tmp_path / "in/C", 600, 6, PatientID="C", StudyInstanceUID="1.3", SeriesInstanceUID="S~2")
    slices, series, _ = build(tmp_path / "in", tmp_path / "ds")
    assert sorted(zip(series["study_uid"], series["series_uid"], series["n_slices"])) == [
        ("1.1", "S", 4), ("1.2", "S", 5), ("1.3", "S~2", 6)]
    assert series["predict"].all()  # each study reads its own series
    assert_own_pixels(tmp_path / "ds", slices, series, {"A": 0, "B": 300, "C": 600})


def test_uid_bytes_that_are_not_valid_text_stay_distinct(tmp_path: Path) -> None:
    """Row 3: Latin-1 ``Sé`` and ``Sü`` (invalid UTF-8) are two series, escaped one-to-one."""
    write_series(tmp_path / "in/A", 0, 4, PatientID="A", raw={"SeriesInstanceUID": b"S\xe9"})
    write_series(tmp_path / "in/B", 300, 4, PatientID="B", raw={"SeriesInstanceUID": b"S\xfc"})
    slices, series, _ = build(tmp_path / "in", tmp_path / "ds")
    assert sorted(series["series_uid"]) == ["S\\xe9", "S\\xfc"] and (series["n_slices"] == 4).all()
    assert_own_pixels(tmp_path / "ds", slices, series, {"A": 0, "B": 300})


def test_a_uid_longer_than_a_file_name_never_becomes_one(tmp_path: Path) -> None:
    """Row 4: a 304-character SeriesInstanceUID builds, next to another study, and rebuilds."""
    long_uid = "1." + "2" * 302
    write_series(tmp_path / "in/A", 0, 4, PatientID="A", SeriesInstanceUID=long_uid)
    write_series(tmp_path / "in/B", 300, 4, PatientID="B", StudyInstanceUID="1.9", SeriesInstanceUID="1.9.1")
    for _ in range(2):
        slices, series, summary = build(tmp_path / "in", tmp_path / "ds", overwrite=True)
        assert long_uid in set(series["series_uid"]) and summary["counts"] == {"ok": 8}
        assert all(len(name) < 80 for name in os.listdir(tmp_path / "ds" / "cache"))
        assert_own_pixels(tmp_path / "ds", slices, series, {"A": 0, "B": 300})


def _tilted(degrees: float) -> list[float]:
    angle = np.deg2rad(degrees)
    return [1.0, 0.0, 0.0, 0.0, float(np.cos(angle)), float(-np.sin(angle))]


def test_a_gantry_tilt_changed_mid_series_is_still_read(tmp_path: Path) -> None:
    """Row 5: axial cosine 0.97 for half the slices and 0.93 for the rest (as in 3 RSNA stage-1 test
    series): one axial stack, predicted."""
    iops = [_tilted(14.0)] * 3 + [_tilted(21.5)] * 3
    for i, iop in enumerate(iops):
        normal = np.cross(iop[:3], iop[3:])
        write_series(tmp_path / "in", 0, 1, ImageOrientationPatient=iop, InstanceNumber=i + 1,
                     ImagePositionPatient=list(np.array([-8.0, -8.0, 0.0]) + 5.0 * i * normal))
    _, series, _ = build(tmp_path / "in", tmp_path / "ds")
    assert len(series) == 1 and series.loc[0, "n_slices"] == 6
    assert series.loc[0, "role"] == "axial" and series.loc[0, "predict"] and series.loc[0, "mixed_orientation"]


SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]


def test_an_axial_stack_is_read_when_a_sagittal_reformat_shares_its_uid(tmp_path: Path) -> None:
    """Row 6: one SeriesInstanceUID, 8 axial and 4 sagittal slices: two stacks, the axial one read."""
    write_series(tmp_path / "in", 0, 8)
    write_series(tmp_path / "in", 0, 4, ImageOrientationPatient=SAGITTAL, ImageType="DERIVED\\SECONDARY\\MPR")
    slices, series, _ = build(tmp_path / "in", tmp_path / "ds")
    assert series["series_uid"].nunique() == 1 and (series["n_stacks"] == 2).all()
    by_role = series.set_index("role")
    assert by_role.at["axial", "n_slices"] == 8 and by_role.at["axial", "predict"]
    assert by_role.at["reformat", "n_slices"] == 4 and not by_role.at["reformat", "predict"]
    assert slices["slice_index"].notna().all()  # every file in one stack or the other


def test_a_slice_with_a_zero_orientation_is_missing_geometry_not_the_series_a_reformat(tmp_path: Path) -> None:
    """Row 7: the slice is placed by its InstanceNumber and predicted from its neighbours."""
    paths = write_series(tmp_path / "in", 0, 6)
    write_slice(paths[2], np.full((SIZE, SIZE), 1024, dtype=np.int16), SOPInstanceUID=paths[2].stem,
                InstanceNumber=3, ImagePositionPatient=[-8.0, -8.0, 10.0], ImageOrientationPatient=[0.0] * 6)
    slices, series, _ = build(tmp_path / "in", tmp_path / "ds")
    assert len(series) == 1 and series.loc[0, "role"] == "axial" and series.loc[0, "predict"]
    bad = slices.set_index("path").loc[str(paths[2])]
    assert bad["status"] == Status.MISSING_GEOMETRY and bad["slice_index"] == 2
    assert "not two orthogonal unit vectors" in bad["error"] and "InstanceNumber" in bad["error"]


def test_slices_all_at_one_position_are_not_averaged_into_one_slab(tmp_path: Path) -> None:
    """Row 9: 6 slices at one ImagePositionPatient: flagged, not read (role unordered), with the reason."""
    for i in range(6):
        write_series(tmp_path / "in", 10 * i, 1, InstanceNumber=i + 1)
    slices, series, _ = build(tmp_path / "in", tmp_path / "ds")
    assert len(series) == 1 and series.loc[0, "all_one_position"]
    assert series.loc[0, "role"] == "unordered" and not series.loc[0, "predict"]
    assert "all 6 slices at one position" in series.loc[0, "choice"]
    forced = SeriesRules(series_uids=(series.loc[0, "series_uid"],))
    _, again, _ = build(tmp_path / "in", tmp_path / "forced", series_rules=forced)
    assert not again["predict"].any()  # not even on request


def test_links_out_of_the_input_are_reported_not_followed(tmp_path: Path) -> None:
    """Row 10: ``etc -> outside`` and ``../other_export`` links: reported; followed with follow_links."""
    write_series(tmp_path / "export/study", 0, 4, PatientID="A")
    write_series(tmp_path / "outside", 300, 4, PatientID="B", StudyInstanceUID="1.9", SeriesInstanceUID="1.9.1")
    write_series(tmp_path / "other_export", 600, 4, PatientID="C", StudyInstanceUID="1.8", SeriesInstanceUID="1.8.1")
    (tmp_path / "export/etc").symlink_to(tmp_path / "outside")
    (tmp_path / "export/study/more").symlink_to("../../other_export")
    (tmp_path / "export/study/same").symlink_to(".")  # a link inside the input is fine (found once)
    slices, _, summary = build(tmp_path / "export", tmp_path / "ds")
    assert set(slices["patient_id"]) == {"A"} and len(slices) == 4
    assert sorted(Path(link["path"]).name for link in summary["outside_links"]) == ["etc", "more"]
    assert json.loads((tmp_path / "ds/build.json").read_text())["outside_links"] == summary["outside_links"]
    slices, _, summary = build(tmp_path / "export", tmp_path / "followed", follow_links=True)
    assert set(slices["patient_id"]) == {"A", "B", "C"} and summary["outside_links"] == []
    command = ["build-series", "--dicom-dir", str(tmp_path / "export"), "--image-size", "16", "--workers", "1"]
    for flag, n_files in (([], 4), (["--follow-links"], 12)):
        result = CliRunner().invoke(main, ["--quiet", *command, "--out", str(tmp_path / f"cli{n_files}"), *flag])
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / f"cli{n_files}/build.json").read_text())["n_files"] == n_files


def _directory_file(path: Path) -> Path:
    """A media-storage directory file (SOP class 1.2.840.10008.1.3.10) with an empty record sequence."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.99"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.FileSetID = "EXPORT"
    ds.DirectoryRecordSequence = []
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_directory_files_whatever_their_name_are_counted_never_images(tmp_path: Path, trained_run: Path) -> None:
    """Row 11: ``DICOMDIR``, ``dicomdir`` and per-folder ``DIRFILE``: directory files, no probability rows."""
    images = write_series(tmp_path / "in/S1", 0, 4)
    names = ["DICOMDIR", "S1/dicomdir", "S1/DIRFILE"]
    for name in names:
        _directory_file(tmp_path / "in" / name)
    out = InferFolder(tmp_path / "out")
    predict([trained_run], out.root, dicom_dirs=[tmp_path / "in"], progress=False)
    build_json = json.loads((out.dataset / "build.json").read_text())
    assert sorted(build_json["directory_files"]) == sorted(names) and build_json["n_files"] == 4
    rows = pd.read_parquet(out.predictions)
    assert sorted(rows["relative_path"]) == sorted(f"S1/{path.name}" for path in images)
    assert len(pd.read_csv(out.submission)) == 6 * 4


def _copy_with_sop(name: str, folder: Path, sop: str) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.SOPInstanceUID = sop
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / name)
    return folder / name


def test_of_copies_with_one_sop_instance_uid_the_original_is_used(tmp_path: Path) -> None:
    """Row 19: the CQ500 slice as 693_UNCR (original), 693_J2KR (lossless, 16 bits stored), 693_UNCI (DERIVED,
    lossy) and 693_J2KI (DERIVED, lossy JPEG 2000), one SOPInstanceUID: a lossless original is used."""
    sop = pydicom.dcmread(get_testdata_file("693_UNCR.dcm"), stop_before_pixels=True).SOPInstanceUID
    for name in ("693_J2KI.dcm", "693_UNCI.dcm", "693_UNCR.dcm", "693_J2KR.dcm"):
        _copy_with_sop(name, tmp_path / "in", sop)
    slices, _, _ = build(tmp_path / "in", tmp_path / "ds")
    used = slices[slices["image_id"] == sop]
    assert len(used) == 1 and Path(used["path"].iloc[0]).name == "693_J2KR.dcm"  # ORIGINAL, lossless, 16 bits
    copies = slices[slices["status"] == Status.DUPLICATE].set_index("relative_path")["error"]
    assert sorted(copies.index) == ["693_J2KI.dcm", "693_UNCI.dcm", "693_UNCR.dcm"]
    assert copies["693_J2KI.dcm"].startswith("693_J2KI.dcm has the SOPInstanceUID of 693_J2KR.dcm")
    assert "it is ORIGINAL, this copy DERIVED" in copies["693_UNCI.dcm"]
    assert "it has more bits stored" in copies["693_UNCR.dcm"]
    shutil.rmtree(tmp_path / "in")
    _copy_with_sop("693_UNCR.dcm", tmp_path / "in", sop)
    lossy = _copy_with_sop("693_J2KI.dcm", tmp_path / "in", sop)  # relabelled ORIGINAL: the syntax tells
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(lossy)
        ds.ImageType, ds.BitsStored = ["ORIGINAL", "PRIMARY", "AXIAL"], 16
        del ds.LossyImageCompression
        ds.save_as(lossy)
    slices, _, _ = build(tmp_path / "in", tmp_path / "ds2")
    assert Path(slices.set_index("image_id").at[sop, "path"]).name == "693_UNCR.dcm"
    copies = slices[slices["status"] == Status.DUPLICATE].set_index("relative_path")["error"]
    assert "it is lossless, this copy lossy" in copies["693_J2KI.dcm"]


def test_only_a_sagittal_series_gives_no_usable_series_not_a_traceback(tmp_path: Path, trained_run: Path) -> None:
    """Row 8: nothing to read in a study: skipped rows with the reason, exam 'no usable series'."""
    write_series(tmp_path / "sagittal", 0, 6, ImageOrientationPatient=SAGITTAL)
    out = InferFolder(tmp_path / "out-sagittal")
    predict([trained_run], out.root, dicom_dirs=[tmp_path / "sagittal"], progress=False)
    rows = pd.read_parquet(out.predictions)
    exams = pd.read_csv(out.exams_csv)
    assert len(exams) == 1 and exams.loc[0, "status"] == "no usable series"
    assert len(rows) == len(list((tmp_path / "sagittal").iterdir()))
    assert set(rows["predicted_by"]) <= {"skipped", "prior"} and (rows["reason"].str.len() > 0).all()


def test_a_lone_slice_with_a_zero_orientation_is_one_clear_error(tmp_path: Path, trained_run: Path) -> None:
    """Row 7 alone: the only file has no usable geometry: no usable CT image, said in one line (as
    build-series says it), not a traceback."""
    write_series(tmp_path / "zero", 0, 1, ImageOrientationPatient=[0.0] * 6)
    with pytest.raises(InputError, match="usable CT image"):
        predict([trained_run], tmp_path / "out-zero", dicom_dirs=[tmp_path / "zero"], progress=False)


_POOL = [b"1.2.3", b"a/b", b"a_b", b"S\xe9", b"S\xfc", b"S~2", b"1." + b"2" * 300]
#: Identifiers: a pool that collides by construction (the rows above), or any bytes of any length (DICOM's
#: padding, NUL and space, excluded: ``"S "`` and ``"S"`` are the same UID).
_IDS = st.one_of(st.sampled_from(_POOL),
                 st.binary(min_size=2, max_size=80).filter(lambda value: b"\x00" not in value and b" " not in value))


def _probabilities(out: InferFolder) -> pd.DataFrame:
    rows = pd.read_parquet(out.predictions).set_index("image_id")
    return rows[[column for column in rows if column.startswith("p_")]]


@settings(max_examples=3, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(owners=st.lists(st.tuples(_IDS, _IDS, _IDS), min_size=2, max_size=3, unique=True))
def test_random_uids_predict_every_image_as_its_series_alone(owners: list[tuple[bytes, bytes, bytes]],
                                                             trained_run: Path) -> None:
    """Property: whatever bytes the patient, study and series identifiers hold (colliding across studies and
    patients), every image is predicted as when its series is built alone; one exam per (patient, study)."""
    options = InferOptions(series_rules=SeriesRules(mode="all"), workers=1)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as scratch:
        root = Path(scratch)
        for k, (patient, study, series) in enumerate(owners):
            write_series(root / "all" / f"s{k}", 300 * k, 3,
                         raw={"PatientID": patient, "StudyInstanceUID": study, "SeriesInstanceUID": series})
        together = InferFolder(root / "together")
        predict([trained_run], together.root, dicom_dirs=[root / "all"], options=options, progress=False)
        _, stacks = load_index(together.dataset)
        assert len(stacks) == len(owners) and stacks["predict"].all() and stacks["cache_file"].is_unique
        assert len(json.loads(together.exams_json.read_text())) == len({(p, s) for p, s, _ in owners})
        combined = _probabilities(together)
        assert len(combined) == 3 * len(owners)
        for k in range(len(owners)):
            alone = InferFolder(root / f"alone{k}")
            predict([trained_run], alone.root, dicom_dirs=[root / "all" / f"s{k}"], options=options, progress=False)
            expected = _probabilities(alone)
            np.testing.assert_allclose(combined.loc[expected.index].to_numpy(), expected.to_numpy(), atol=1e-5)
