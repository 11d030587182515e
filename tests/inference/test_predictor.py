"""The Predictor: loaded once, it answers folder after folder as `ich3d infer` does; its two network calls
are the model's; members are calibrated and averaged by the ensemble module."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import ich3d.inference.predictor as predictor_module
from ich3d.dataset.opened import Dataset
from ich3d.inference import ensemble
from ich3d.inference.job import PredictOptions
from ich3d.inference.outputs import PROB_COLUMNS
from ich3d.inference.predictor import Predictor, Reading, RuntimeOptions
from ich3d.inference.run import predict


@pytest.fixture(scope="module")
def predictor(trained_run: Path) -> Predictor:
    return Predictor.from_runs([trained_run], RuntimeOptions(device="cpu", workers=1))


def test_one_predictor_answers_two_folders_without_reloading(trained_run: Path, synthetic_rsna: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[Path] = []
    real = predictor_module.load_trained
    monkeypatch.setattr(predictor_module, "load_trained", lambda path, device: loads.append(path) or real(path, device))
    predictor = Predictor.from_runs([trained_run], RuntimeOptions(device="cpu", workers=1))
    assert len(loads) == len(predictor.models) == 1
    module = predictor.models[0].module
    first_dir, second_dir = synthetic_rsna / "stage_2_test", tmp_path / "second"
    files = sorted(first_dir.iterdir())
    second_dir.mkdir()
    for path in files[: len(files) // 2]:
        shutil.copy(path, second_dir / path.name)

    first = predictor.predict_folder(first_dir, tmp_path / "a")
    second = predictor.predict_folder(second_dir, tmp_path / "b")

    assert len(loads) == 1 and predictor.models[0].module is module  # nothing reloaded between studies
    assert first.predictions is not None and second.predictions is not None
    assert set(first.predictions["relative_path"]) >= {p.name for p in files if p.is_file()} - {""}
    assert len(second.predictions) < len(first.predictions)
    assert first.exams is not None and len(first.exams) and first.dataset == tmp_path / "a" / "dataset"
    assert first.exams[[f"flag_{label}" for label in ("any", "subdural")]].notna().all().all()
    # the same answer as `ich3d infer --dicom-dir` on that folder
    predict([trained_run], tmp_path / "cli", dicom_dirs=[first_dir], progress=False)
    cli = pd.read_parquet(tmp_path / "cli" / "predictions.parquet")
    assert cli["image_id"].tolist() == first.predictions["image_id"].tolist()
    np.testing.assert_array_equal(cli[PROB_COLUMNS].to_numpy(), first.predictions[PROB_COLUMNS].to_numpy())


def test_a_series_alone_is_predicted_as_in_its_dataset(predictor: Predictor, tiny_dataset: Path, tmp_path: Path) -> None:
    result = predictor.predict_dataset(tiny_dataset, tmp_path / "out")
    rows = result.predictions[result.predictions["predicted_by"].isin(["model", "context"])]
    uid = rows["series_id"].iloc[0]
    alone = predictor.predict_series(Dataset.open(tiny_dataset), uid)
    in_dataset = rows[rows["series_id"] == uid].sort_values("slice_index")[PROB_COLUMNS].to_numpy(np.float32)
    np.testing.assert_allclose(alone, in_dataset, atol=1e-6)


def test_embed_then_head_is_the_model(predictor: Predictor) -> None:
    torch.manual_seed(0)
    model = predictor.models[0]
    x = torch.rand(5, model.data.in_channels, model.image_size, model.image_size)
    mask = torch.ones(1, 5, dtype=torch.bool)
    logits = predictor.head(0, predictor.embed(0, x)[None], mask, mask)
    with torch.no_grad():
        expected = model.module(x, mask, mask)
    torch.testing.assert_close(logits, expected)


def test_identical_members_average_to_one(predictor: Predictor, tiny_dataset: Path) -> None:
    from ich3d.data.tables import build_table

    dataset = Dataset.open(tiny_dataset)
    table = build_table(dataset.root, dataset.slices, dataset.series["series_id"].tolist()[:2])
    twice = Predictor(predictor.models * 2, predictor.runtime, predictor.options)
    one, _ = predictor.predict_table(table, Reading(resample="off"))
    two, _ = twice.predict_table(table, Reading(resample="off"))
    np.testing.assert_allclose(one, two, atol=1e-7)
    assert twice.operating == predictor.operating and np.array_equal(twice.prior, predictor.prior)
    raw = predictor.predict_member(0, table)
    calibrated = ensemble.member_probabilities(predictor.models[0], raw)
    np.testing.assert_allclose(one, calibrated, atol=1e-7)


def test_a_threshold_overrides_the_operating_points(predictor: Predictor, tiny_dataset: Path, tmp_path: Path) -> None:
    result = predictor.predict_dataset(tiny_dataset, tmp_path / "t", PredictOptions(exam_threshold=0.01))
    exams = result.exams[result.exams["status"] != "no usable series"]
    flags = exams[[f"flag_{name}" for name in ("any", "epidural")]].to_numpy(bool)
    probs = exams[["p_any", "p_epidural"]].to_numpy(float)
    np.testing.assert_array_equal(flags, (probs >= 0.01) & (probs[:, :1] >= 0.01))


def test_a_version_1_checkpoint_predicts_exactly_as_before(predictor: Predictor, trained_run: Path,
                                                           tiny_dataset: Path, tmp_path: Path) -> None:
    from ich3d.checkpoint import load_checkpoint, save_checkpoint
    from ich3d.data.tables import build_table

    payload = load_checkpoint(predictor.models[0].path)
    old = {k: v for k, v in payload.items() if k not in ("model_version", "operating_points", "calibration_report")}
    save_checkpoint(tmp_path / "v1.pt", old)
    upgraded = Predictor.from_runs([tmp_path / "v1.pt"], predictor.options)
    dataset = Dataset.open(tiny_dataset)
    table = build_table(dataset.root, dataset.slices, dataset.series["series_id"].tolist())
    np.testing.assert_array_equal(upgraded.predict_table(table)[0], predictor.predict_table(table)[0])
    assert upgraded.operating.threshold == (0.5,) * 6  # the documented default of version 1
