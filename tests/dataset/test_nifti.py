"""NIfTI volumes: one series per file, slices along the superior-inferior voxel axis in the same order and
orientation whatever the storage, HU from scl_slope/scl_inter, a warning for values that are not HU,
one decompression per volume, CT-ICH labels."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import clean_series

from ich3d.app.cli import main
from ich3d.constants import LABEL_COLUMNS, Status
from ich3d.dataset import nifti
from ich3d.dataset.build import BuildOptions, build_series
from ich3d.dataset.cache import load_series
from ich3d.dataset.index import load_index
from ich3d.dataset.roles import SeriesRules
from ich3d.synth.formats import write_nifti

ALL = SeriesRules(mode="all")


@pytest.fixture(scope="module")
def series(tiny_dataset: Path) -> tuple[str, list[Path]]:
    """A clean synthetic series of the tiny dataset: (series UID, its files)."""
    return next(iter(clean_series(tiny_dataset).items()))


def _build(inputs: list[Path], out: Path, **options: object) -> tuple[pd.DataFrame, pd.DataFrame]:
    build_series(inputs, out, options=BuildOptions(**({"image_size": 32, "workers": 1, "progress": False,
                                                       "series_rules": ALL} | options)))
    return load_index(out)


def test_a_volume_caches_like_its_dicom_series(series: tuple[str, list[Path]], tiny_dataset: Path,
                                               tmp_path: Path) -> None:
    uid, paths = series
    (tmp_path / "vol").mkdir()
    write_nifti(paths, tmp_path / "vol" / f"{uid}.nii.gz", orientation="RAS", intercept=-1024.0)
    slices, table = _build([tmp_path / "vol"], tmp_path / "ds")
    reference, _ = load_index(tiny_dataset)
    reference = reference[reference["series_uid"] == uid].sort_values("slice_index")
    assert table["series_uid"].tolist() == [f"{uid}.nii.gz"] and (slices["status"] == Status.OK).all()
    assert slices["image_id"].tolist() == [f"{uid}.nii.gz#{k}" for k in range(1, len(paths) + 1)]
    assert slices["patient_id"].unique().tolist() == [uid] and (slices["modality"] == "CT").all()
    np.testing.assert_allclose(slices["position"], reference["position"], atol=1e-3)
    cached, expected = load_series(tmp_path / "ds", f"{uid}.nii.gz"), load_series(tiny_dataset, uid)
    assert np.abs(cached.astype(int) - expected).max() <= 1  # rounding: rescaled before or after the resize


@pytest.mark.parametrize(("orientation", "reverse"), [("LPS", False), ("RAS", True), ("LPS", True)])
def test_storage_orientation_does_not_change_the_slices(series: tuple[str, list[Path]], tmp_path: Path,
                                                        orientation: str, reverse: bool) -> None:
    _, paths = series
    for name, options in (("ras", {"orientation": "RAS"}), ("other", {"orientation": orientation,
                                                                       "reverse_slices": reverse})):
        (tmp_path / name).mkdir()
        write_nifti(paths, tmp_path / name / "v.nii", **options)
    first, _ = _build([tmp_path / "ras"], tmp_path / "a")
    second, _ = _build([tmp_path / "other"], tmp_path / "b")
    assert np.all(np.diff(first["position"]) > 0)  # inferior → superior
    np.testing.assert_allclose(first["position"], second["position"], atol=1e-3)
    np.testing.assert_array_equal(load_series(tmp_path / "a", "v.nii"), load_series(tmp_path / "b", "v.nii"))
    expected = first["frame"] if not reverse else len(first) + 1 - first["frame"]
    assert second["frame"].tolist() == expected.tolist()


def test_slice_axis_is_the_voxel_axis_nearest_superior_inferior() -> None:
    coronal = np.array([[-1.0, 0, 0, 0], [0, 0, 2.0, 0], [0, -0.8, 0, 0], [0, 0, 0, 1]])  # j: down, k: front
    layout = nifti.slice_layout(coronal)
    assert (layout.axis, layout.col_axis, layout.row_axis) == (1, 0, 2)
    assert layout.flip_cols is False and layout.flip_rows is True  # LPS: x to the left, y to the back


def _volume(path: Path, data: np.ndarray, slope: float = 1.0, inter: float = 0.0) -> Path:
    image = nibabel.Nifti1Image(data, np.diag([0.5, 0.5, 5.0, 1.0]))
    image.header.set_slope_inter(slope, inter)
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(image, path)
    return path


def test_scaled_values_are_hu_and_windowed_volumes_are_noted(tmp_path: Path) -> None:
    head = np.full((16, 16, 4), -1000, np.int16)
    head[4:12, 4:12] = 40
    head[6, 6] = 1200
    _volume(tmp_path / "in" / "scaled.nii.gz", ((head + 1000) // 2).astype(np.int16), slope=2.0, inter=-1000.0)
    windowed = _volume(tmp_path / "in" / "windowed.nii", np.clip((head.astype(np.int32) + 20) * 255 // 120, 0, 255).astype(np.uint8))
    summary = build_series([tmp_path / "in"], tmp_path / "ds", options=BuildOptions(
        image_size=16, workers=1, progress=False, series_rules=ALL, crop="none"))  # the cache shows the whole slice
    slices, _ = load_index(tmp_path / "ds")
    scaled = slices[slices["series_uid"] == "scaled.nii.gz"]
    assert (scaled["status"] == Status.OK).all() and (scaled["error"] == "").all()
    # RAS voxel axes (i to the right, j to the front) shown as DICOM rows and columns: both reversed
    np.testing.assert_array_equal(load_series(tmp_path / "ds", "scaled.nii.gz")[0], head[::-1, ::-1, 0].T)
    notes = slices.loc[slices["series_uid"] == "windowed.nii", "error"]
    assert notes.str.contains("do not look like HU").all()
    assert summary["nifti_notes"] == [{"path": str(windowed), "error": notes.iloc[0]}]
    assert json.loads((tmp_path / "ds" / "build.json").read_text())["transfer_syntaxes"] == {"nifti": 8}


def test_a_volume_is_decompressed_once_per_series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _volume(tmp_path / "in" / "v.nii.gz", np.full((8, 8, 6), -1000, np.int16))
    loads = []
    load = nifti._load
    monkeypatch.setattr(nifti, "_load", lambda path: loads.append(path) or load(path))
    nifti._volume.cache_clear()
    build_series([tmp_path / "in"], tmp_path / "ds",
                 options=BuildOptions(image_size=8, workers=1, progress=False, series_rules=ALL))
    assert len(loads) == 2  # the header pass, then the pixel pass for all 6 slices


def test_unreadable_and_4d_files_are_reported(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "junk.nii").write_bytes(b"not a nifti file" * 40)
    _volume(tmp_path / "in" / "t.nii.gz", np.zeros((4, 4, 3, 2), np.int16))
    _volume(tmp_path / "in" / "ok.nii.gz", np.full((8, 8, 4), -1000, np.int16))
    (tmp_path / "in" / "notes.txt.gz").write_bytes(b"ignored")
    summary = build_series([tmp_path / "in"], tmp_path / "ds",
                           options=BuildOptions(image_size=8, workers=1, progress=False))
    assert summary["counts"] == {"corrupt": 1, "ok": 4, "unsupported_image": 1} and summary["n_ignored_files"] == 1
    slices, _ = load_index(tmp_path / "ds")
    assert "3-D volume" in slices.set_index("relative_path").at["t.nii.gz", "error"]


def test_ct_ich_layout_with_its_labels_from_the_command_line(tmp_path: Path) -> None:
    data = np.full((8, 8, 3), -1000, np.int16)
    data[2:6, 2:6] = 40
    for number in (49, 50):
        _volume(tmp_path / "ct_ich" / "ct_scans" / f"{number:03d}.nii", data)
    csv = tmp_path / "ct_ich" / "hemorrhage_diagnosis_raw_ct.csv"
    pd.DataFrame({"PatientNumber": [49, 49, 49, 50, 50, 50, 50], "SliceNumber": [1, 2, 3, 1, 2, 3, 3],
                  "Intraventricular": [0, 1, 0, 0, 0, 0, 0], "Intraparenchymal": [0, 1, 0, 0, 0, 0, 0],
                  "Subarachnoid": 0, "Epidural": 0, "Subdural": [0, 0, 0, 0, 0, 1, 1],
                  "No_Hemorrhage": [1, 0, 1, 1, 1, 0, 0], "Fracture_Yes_No": 0}).to_csv(csv, index=False)
    result = CliRunner().invoke(main, ["-q", "build-series", "--nifti", str(tmp_path / "ct_ich" / "ct_scans" / "049.nii"),
                                       "--nifti", str(tmp_path / "ct_ich" / "ct_scans" / "050.nii"), "--labels",
                                       str(csv), "--labels-format", "ct-ich", "--out", str(tmp_path / "ds"),
                                       "--image-size", "8", "--workers", "1", "--series", "all"])
    assert result.exit_code == 0, result.output
    slices, series = load_index(tmp_path / "ds")
    labels = slices.set_index("image_id")[list(LABEL_COLUMNS)]
    assert len(series) == 2 and len(labels) == 6 and labels.notna().all().all()
    assert labels.loc["049.nii#2"].tolist() == [1, 0, 1, 1, 0, 0]  # any, epidural, IPH, IVH, SAH, SDH
    assert labels.loc["050.nii#3"].tolist() == [1, 0, 0, 0, 0, 1] and labels["label_any"].sum() == 2
    summary = json.loads((tmp_path / "ds" / "build.json").read_text())
    assert summary["labels"]["n_exact_duplicates"] == 1 and summary["labels"]["n_labeled_images"] == 6


def test_ct_ich_predictions_are_scored_against_their_labels(tmp_path: Path, trained_run: Path) -> None:
    from ich3d.inference.run import InferOptions, predict
    from ich3d.inference.submission import score_submission

    for number in (49, 50):
        data = np.full((16, 16, 3), -1000, np.int16)
        data[4:12, 4:12] = 40
        _volume(tmp_path / "ct_scans" / f"{number:03d}.nii", data)
    csv = tmp_path / "hemorrhage_diagnosis_raw_ct.csv"
    pd.DataFrame({"PatientNumber": [49, 49, 49, 50, 50, 50], "SliceNumber": [1, 2, 3, 1, 2, 3],
                  "Intraventricular": 0, "Intraparenchymal": [0, 1, 0, 0, 0, 0], "Subarachnoid": 0, "Epidural": 0,
                  "Subdural": [0, 0, 0, 0, 1, 1], "No_Hemorrhage": [1, 0, 1, 1, 0, 0]}).to_csv(csv, index=False)
    out = tmp_path / "out"
    predict([trained_run], out, dicom_dirs=[tmp_path / "ct_scans"], options=InferOptions(series_rules=ALL),
            progress=False)
    result = score_submission(out / "submission.csv", csv, labels_format="ct-ich")
    assert result["n_images"] == 6 and result["labels"]["n_images"] == 6 and 0 < result["weighted_log_loss"]
