"""A PACS-style export end to end: every file once, one exam per study, the right series read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ich3d.dataset.index import load_index
from ich3d.dataset.roles import SeriesRules
from ich3d.inference.exams import smoothed_maximum
from ich3d.inference.outputs import PROB_COLUMNS
from ich3d.inference.run import InferOptions, predict
from ich3d.layout import InferFolder

#: How far the exam probabilities of a study's 1.25 mm series (read as 5 mm slabs) may lie from those
#: of its 5 mm series (absolute, per label).
THIN_THICK_TOLERANCE = 0.1


@pytest.fixture(scope="module")
def predicted(trained_run: Path, clinical_export: Path, tmp_path_factory: pytest.TempPathFactory) -> InferFolder:
    out = InferFolder(tmp_path_factory.mktemp("clinical-out"))
    predict([trained_run], out.root, dicom_dirs=[clinical_export / "export"], progress=False)
    return out


def test_every_file_once_and_every_key_unique(predicted: InferFolder, clinical_export: Path) -> None:
    files = sorted(p for p in (clinical_export / "export").rglob("*") if p.is_file())
    rows = pd.read_parquet(predicted.predictions)
    assert len(rows) == len(files) and rows["image_id"].is_unique and rows["relative_path"].is_unique
    assert sorted(rows["relative_path"]) == sorted(str(p.relative_to(clinical_export / "export")) for p in files)
    assert len({p.name for p in files}) < len(files)  # file names repeat across series folders
    submission = pd.read_csv(predicted.submission)
    assert submission["ID"].is_unique and len(submission) == 6 * (rows["predicted_by"] != "skipped").sum()
    for column in ("patient_id", "study_uid", "series_uid", "sop_uid", "slice_index", "instance_number"):
        assert rows.loc[rows["predicted_by"] == "model", column].notna().all(), column


def test_the_soft_axial_series_is_read_and_the_others_skipped_with_their_reasons(predicted: InferFolder,
                                                                                clinical_export: Path) -> None:
    truth = json.loads((clinical_export / "synth.json").read_text())
    exams = pd.read_csv(predicted.exams_csv).set_index("study_uid")
    assert sorted(exams.index) == sorted(study["study_uid"] for study in truth["studies"])
    for study in truth["studies"]:
        assert exams.at[study["study_uid"], "series_uid"] == study["chosen_series_uid"]
        assert exams.at[study["study_uid"], "status"] == "ok"
    rows = pd.read_parquet(predicted.predictions)
    role_of = {s["series_uid"]: s["role"] for s in truth["series"]}
    skipped = rows[rows["predicted_by"] == "skipped"]
    reasons = skipped["series_uid"].map(role_of)
    assert skipped.loc[reasons == "localizer", "reason"].str.startswith("not read: localizer").all()
    assert skipped.loc[reasons == "bone_kernel", "reason"].str.startswith("not read: bone_kernel").all()
    dose = skipped[skipped["relative_path"].str.contains("Dose Report")]
    assert len(dose) == len(truth["studies"]) and (dose["reason"] == "not a CT image").all()
    _, series = load_index(predicted.dataset)
    chosen = series[series["predict"]].set_index("series_uid")
    assert set(chosen.index) == {study["chosen_series_uid"] for study in truth["studies"]}
    stacks = {uid: role for uid, role in role_of.items() if role != "non_ct"}  # dose reports: images without a plane
    assert series.set_index("series_uid")["role"].to_dict() == stacks  # every series' role as the export says
    assert not (predicted.dataset / "cache").exists() or \
        len(list((predicted.dataset / "cache").iterdir())) == len(chosen)  # only what is read is cached


def test_thin_and_thick_series_of_an_exam_agree(trained_run: Path, clinical_export: Path, tmp_path: Path) -> None:
    out = InferFolder(tmp_path / "all")
    options = InferOptions(series_rules=SeriesRules(mode="all"))
    predict([trained_run], out.root, dicom_dirs=[clinical_export / "export"], options=options, progress=False)
    rows = pd.read_parquet(out.predictions)
    _, series = load_index(out.dataset)
    axial = series[(series["role"] == "axial") & series["predict"]]
    compared = 0
    for _, study in axial.groupby("study_uid"):
        thin, thick = study[study["slice_thickness"] < 2], study[study["slice_thickness"] > 4]
        if thin.empty or thick.empty:
            continue
        exam = {}
        for kind, uid in (("thin", thin["series_uid"].iloc[0]), ("thick", thick["series_uid"].iloc[0])):
            mine = rows[rows["series_uid"] == uid].sort_values("slice_index")
            exam[kind] = smoothed_maximum(mine[PROB_COLUMNS].to_numpy())
            if kind == "thin":  # every thin slice has a row, read as part of a slab
                assert len(mine) == int(thin["n_slices"].iloc[0])
                assert mine["reason"].str.fullmatch(r"thin series read as [0-9.]+ mm slabs").all()
        np.testing.assert_allclose(exam["thin"], exam["thick"], atol=THIN_THICK_TOLERANCE)
        compared += 1
    assert compared >= 2
