"""The synthetic clinical (PACS-style) export: layout, the headers of each series kind as a reader sees
them, quirks, thick/thin agreement, reads vs exam truth, the chosen series, determinism."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.uid import (
    UID,
    CTImageStorage,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
)

from ich3d.app.cli import main
from ich3d.constants import LABELS
from ich3d.dataset.pixels import to_hu
from ich3d.errors import ConfigError, InputError
from ich3d.layout import ClinicalExportFolder
from ich3d.synth.clinical import CQ500_COLUMNS, count_files, make_clinical_export
from ich3d.synth.clinical_images import LOCALIZER_FOV_MM
from ich3d.synth.clinical_plan import AXIAL_KINDS, ClinicalConfig
from ich3d.synth.clinical_series import VENDORS

CONFIG = ClinicalConfig(n_studies=4, image_size=64, seed=0)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> ClinicalExportFolder:
    folder = ClinicalExportFolder(tmp_path_factory.mktemp("clinical"))
    make_clinical_export(folder.root, CONFIG, workers=2)
    return folder


@pytest.fixture(scope="module")
def summary(export: ClinicalExportFolder) -> dict:
    return json.loads(export.summary.read_text())


@pytest.fixture(scope="module")
def headers(export: ClinicalExportFolder, summary: dict) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    """Per series UID (from synth.json), every file of its folder with its header, sorted by file name."""
    return {s["series_uid"]: [(p, pydicom.dcmread(p, stop_before_pixels=True))
                              for p in sorted((export.root / s["folder"]).iterdir())]
            for s in summary["series"]}  # fmt: skip


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def _image_labels(export: ClinicalExportFolder) -> dict[str, tuple[int, ...]]:
    rows = _csv(export.image_labels)
    keys = [row["ID"] for row in rows]
    for start in range(0, len(keys), len(LABELS)):  # six rows per image, LABELS order
        sop = keys[start].rsplit("_", 1)[0]
        assert keys[start : start + len(LABELS)] == [f"{sop}_{label}" for label in LABELS]
    values = [int(row["Label"]) for row in rows]
    return {keys[i].rsplit("_", 1)[0]: tuple(values[i : i + len(LABELS)]) for i in range(0, len(keys), len(LABELS))}


def _positions(series: list[tuple[Path, pydicom.Dataset]]) -> np.ndarray:
    """(N,) ImagePositionPatient projected on the slice normal, in file order."""
    iop = np.array(series[0][1].ImageOrientationPatient, dtype=float)
    return np.array([np.array(ds.ImagePositionPatient, dtype=float) for _, ds in series]) @ np.cross(iop[:3], iop[3:])


@pytest.mark.parametrize("change, message", [
    ({"n_studies": 0}, "n_studies"), ({"image_size": 16}, "image_size"), ({"seed": -1}, "seed"),
    ({"thin_fraction": 1.5}, "thin_fraction"), ({"contrast_fraction": -0.1}, "contrast_fraction"),
    ({"follow_up_fraction": 0.8}, "follow_up_fraction"), ({"subtype_probability": (0.5,)}, "subtype_probability"),
    ({"n_studies": 2.5}, "n_studies"), ({"reader_disagreement": True}, "reader_disagreement"),
])  # fmt: skip
def test_config_is_validated(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ClinicalConfig(**change)


def test_layout_names_repeat_and_uids_do_not(export: ClinicalExportFolder, summary: dict, headers: dict) -> None:
    assert {p.name for p in export.root.iterdir()} == {"export", "reads.csv", "reads_map.csv", "exam_labels.csv",
                                                       "image_labels.csv", "synth.json"}  # fmt: skip
    studies = sorted(p.name for p in export.export.iterdir())
    assert studies == sorted(s["folder"].split("/")[-1] for s in summary["studies"])
    assert all(re.fullmatch(r"S\d{4}_SYN\d{7}", name) for name in studies)
    assert summary["counts"]["patients"] < summary["counts"]["studies"]  # a patient with two studies
    names: Counter = Counter()
    sops = []
    for record in summary["series"]:
        files = headers[record["series_uid"]]
        assert len(files) == record["n_images"]
        prefix = record["modality"]
        assert [p.name for p, _ in files] == [f"{prefix}{i:06d}.dcm" for i in range(len(files))]
        names.update(p.name for p, _ in files)
        for _, ds in files:
            assert ds.SeriesInstanceUID == record["series_uid"] and ds.StudyInstanceUID == record["study_uid"]
            assert "PatientName" not in ds and "PatientBirthDate" not in ds
            sops.append(ds.SOPInstanceUID)
    assert names["CT000000.dcm"] > 10  # the same file name in (nearly) every series folder
    assert len(sops) == len(set(sops)) == summary["counts"]["files"] == count_files(CONFIG)
    uids = sops + [s["series_uid"] for s in summary["series"]] + [s["study_uid"] for s in summary["studies"]]
    assert all(UID(uid).is_valid and uid.startswith(pydicom.uid.PYDICOM_ROOT_UID) for uid in uids)
    assert len({s["manufacturer"] for s in summary["studies"]}) >= 2


def test_series_tags_by_kind(summary: dict, headers: dict) -> None:
    seen = set()
    for record in summary["series"]:
        kind, files = record["kind"], headers[record["series_uid"]]
        ds = files[0][1]
        seen.add(kind)
        assert ds.Modality == record["modality"] and ds.BodyPartExamined == "HEAD"
        assert ds.SeriesDescription == record["description"] and int(ds.SeriesNumber) == record["series_number"]
        vendor = next(v for v in VENDORS if v.manufacturer == ds.Manufacturer)
        if kind == "dose":
            assert ds.SOPClassUID == SecondaryCaptureImageStorage and ds.Modality in ("CT", "OT")
            assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
            assert (ds.SamplesPerPixel, ds.PhotometricInterpretation) == (3, "RGB")
            assert "ImagePositionPatient" not in ds and "ImageOrientationPatient" not in ds
            assert pydicom.dcmread(files[0][0]).pixel_array.shape == (512, 512, 3)
            continue
        assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
        assert ds.ConvolutionKernel == record["kernel"] and float(ds.SliceThickness) == record["slice_thickness"]
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        normal = np.abs(np.cross(iop[:3], iop[3:]))
        if kind == "localizer":
            assert "LOCALIZER" in ds.ImageType and len(files) == 2
            cosines = [np.reshape(np.array(d.ImageOrientationPatient, dtype=float), (2, 3)) for _, d in files]
            normals = {int(np.argmax(np.abs(np.cross(*c)))) for c in cosines}
            assert normals == {0, 1}  # a lateral (sagittal plane) and an AP (coronal plane) image
            assert float(ds.PixelSpacing[0]) == pytest.approx(LOCALIZER_FOV_MM / ds.Rows)
            continue
        if kind == "reformat":
            assert ds.ImageType[0] == "DERIVED" and np.argmax(normal) == 1  # coronal
            continue
        assert list(ds.ImageType[:3]) == ["ORIGINAL", "PRIMARY", "AXIAL"] and normal[2] > 0.9
        spacing = np.diff(np.sort(_positions(files)))
        assert np.allclose(spacing, record["slice_thickness"], atol=1e-3)
        if kind == "bone":
            assert "bone" in ds.SeriesDescription.lower() and ds.ConvolutionKernel == vendor.kernels[1]
        else:
            assert ds.ConvolutionKernel == vendor.kernels[0]
        agent = str(ds.get("ContrastBolusAgent", "")).strip()
        assert (agent != "") == (kind == "contrast")
    assert seen == {"localizer", "thick", "thin", "bone", "reformat", "contrast", "repeat", "dose"}


def test_quirks_are_in_the_headers(export: ClinicalExportFolder, summary: dict, headers: dict) -> None:
    found: Counter = Counter()
    for record in summary["series"]:
        files = headers[record["series_uid"]]
        ds = files[0][1]
        quirks = set(record["quirks"])
        if record["kind"] not in AXIAL_KINDS:
            assert not quirks
            continue
        wrapped = ds.BitsStored == 12 and ds.PixelRepresentation == 0 and float(ds.RescaleIntercept) > -100
        multi, absent = "WindowCenter" in ds and ds["WindowCenter"].VM == 2, "WindowCenter" not in ds
        implicit = ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        tilted = abs(float(ds.GantryDetectorTilt)) > 1 and abs(float(ds.ImageOrientationPatient[4])) < 0.99
        assert (wrapped, multi, absent, implicit, tilted) == tuple(
            q in quirks for q in ("wrapped12", "multi_window", "no_window", "implicit_vr", "gantry_tilt"))
        found.update(quirks)
        if wrapped:
            full = pydicom.dcmread(files[len(files) // 2][0])
            hu = to_hu(full.pixel_array, 1.0, float(full.RescaleIntercept), 12, 0)
            assert np.all(hu[:2, :2] < -900) and hu.max() > 300  # air and skull after the 12-bit fix
    assert set(found) == {"wrapped12", "multi_window", "no_window", "implicit_vr", "gantry_tilt"}


def test_thick_and_thin_show_the_same_exam(export: ClinicalExportFolder, summary: dict, headers: dict) -> None:
    labels = _image_labels(export)
    axial_sops = {ds.SOPInstanceUID for s in summary["series"] if s["kind"] in AXIAL_KINDS
                  for _, ds in headers[s["series_uid"]]}  # fmt: skip
    assert set(labels) == axial_sops
    compared = 0
    for study in summary["studies"]:
        series = {s["kind"]: s for s in summary["series"] if s["study_uid"] == study["study_uid"]}
        by_position = {}
        for kind in [k for k in AXIAL_KINDS if k in series]:
            files = headers[series[kind]["series_uid"]]
            positions = _positions(files)
            assert [positions.min(), positions.max()] == pytest.approx(series[kind]["z_range"], abs=1e-3)
            by_position[kind] = {round(float(p), 2): labels[ds.SOPInstanceUID] for p, (_, ds) in zip(positions, files)}
        thick = by_position["thick"]
        for kind in ("bone", "contrast", "repeat"):
            if kind in by_position:
                assert all(thick[p] == value for p, value in by_position[kind].items())
        if "thin" in by_position:
            thin = by_position["thin"]
            assert min(thin) == min(thick) and max(thin) == max(thick)  # same range
            assert all(thin[p] == value for p, value in thick.items())  # every thick plane is a thin plane
            assert tuple(np.max(list(thin.values()), axis=0)) == tuple(study["labels"][label] for label in LABELS)
            compared += 1
        assert max(v[0] for v in thick.values()) == study["labels"]["any"]
    assert compared >= 2 and sum(s["labels"]["any"] for s in summary["studies"]) >= 1


def test_pixels_differ_by_kind_as_on_a_scanner(export: ClinicalExportFolder, summary: dict, headers: dict) -> None:
    study = next(s for s in summary["studies"] if any(r["kind"] == "contrast" and r["study_uid"] == s["study_uid"]
                                                     for r in summary["series"]))  # fmt: skip
    images = {}
    for record in (r for r in summary["series"] if r["study_uid"] == study["study_uid"]):
        if record["kind"] in ("thick", "bone", "contrast"):
            files = headers[record["series_uid"]]
            path = files[int(np.argsort(_positions(files))[len(files) * 3 // 4])][0]
            ds = pydicom.dcmread(path)
            images[record["kind"]] = to_hu(ds.pixel_array, float(ds.RescaleSlope), float(ds.RescaleIntercept),
                                           int(ds.BitsStored), int(ds.PixelRepresentation))  # fmt: skip
    brain = (images["thick"] > 0) & (images["thick"] < 80)
    enhancement = (images["contrast"] - images["thick"])[brain]
    assert 0 < np.mean(enhancement) < 20 and np.percentile(enhancement, 99) > 25  # a little, vessels more
    pairs = brain[:, 1:] & brain[:, :-1]  # neighbouring brain pixels
    roughness = {kind: np.std(np.diff(hu, axis=1)[pairs]) for kind, hu in images.items()}
    assert roughness["bone"] > 2 * roughness["thick"]  # sharp kernel: noisier, edges overshoot


def test_reads_majority_is_the_exam_truth(export: ClinicalExportFolder, summary: dict) -> None:
    reads, mapping, exams = _csv(export.reads), _csv(export.reads_map), _csv(export.exam_labels)
    header = ["name", "Category"] + [f"R{r}:{c}" for r in (1, 2, 3) for c in ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH")]
    assert list(reads[0]) == header and list(exams[0]) == ["study_uid", *LABELS]
    assert [r["name"] for r in reads] == [f"SYN-CT-{i + 1}" for i in range(CONFIG.n_studies)]
    assert {r["Category"] for r in reads} <= {"B1", "B2"}
    uid_of = {row["name"]: row["study_uid"] for row in mapping}
    truth = {row["study_uid"]: {label: int(row[label]) for label in LABELS} for row in exams}
    assert truth == {s["study_uid"]: s["labels"] for s in summary["studies"]}
    disagreements = 0
    for read in reads:
        votes = np.array([[int(read[f"R{r}:{c}"]) for c in CQ500_COLUMNS] for r in (1, 2, 3)])
        assert np.array_equal(votes[:, 0], votes[:, 1:].max(axis=1))  # each reader's ICH follows their subtypes
        majority = votes.sum(axis=0) >= 2
        assert [int(m) for m in majority] == [truth[uid_of[read["name"]]][label] for label in CQ500_COLUMNS.values()]
        disagreements += int(np.any(votes != votes[0]))
    assert disagreements >= 1


def test_chosen_series_is_the_thick_soft_plain_one(summary: dict) -> None:
    for study in summary["studies"]:
        candidates = [s for s in summary["series"] if s["study_uid"] == study["study_uid"] and s["role"] == "axial"]
        best = min(candidates, key=lambda s: (abs(s["slice_thickness"] - 5.0), s["z_range"][0] - s["z_range"][1]))
        assert study["chosen_series_uid"] == best["series_uid"]
        assert best["kind"] == "thick" and best["contrast_agent"] in (None, "")


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_deterministic_and_parallel_identical(tmp_path: Path) -> None:
    config = ClinicalConfig(n_studies=2, image_size=32, seed=3, thin_fraction=0.0, reformat_fraction=0.0,
                            repeat_fraction=0.0)  # fmt: skip
    digests = []
    for name, workers in (("a", 1), ("b", 2)):  # separate processes: the same bytes
        advanced: list[int] = []
        make_clinical_export(tmp_path / name, config, progress=advanced.append, workers=workers)
        assert sum(advanced) == count_files(config)
        digests.append(_digest(tmp_path / name))
    assert digests[0] == digests[1]
    with pytest.raises(InputError, match="already holds files"):
        make_clinical_export(tmp_path / "a", config)
    with pytest.raises(ConfigError, match="workers"):
        make_clinical_export(tmp_path / "d", config, workers=0)


def test_cli_writes_a_clinical_export(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["synth", "--layout", "clinical", "--out", str(tmp_path), "--n-series",
                                       "1", "--image-size", "32", "--n-test-series", "99"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "clinical export" in result.output and "1 studies" in result.output
    assert json.loads(ClinicalExportFolder(tmp_path).summary.read_text())["config"]["n_studies"] == 1
