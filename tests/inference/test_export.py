"""ONNX export and the ONNX Runtime engine: graphs with dynamic slice counts whose probabilities equal
PyTorch's within ich3d.inference.export.TOLERANCE (1e-4, max absolute difference), for one fold and a
fold ensemble, what export.json says, and the errors a user can meet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAINING

from ich3d.errors import InputError
from ich3d.inference.export import TOLERANCE, export_run, max_difference, synthetic_series
from ich3d.layout import ExportFolder, RunFolder
from ich3d.models.io import load_trained

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def fold_ensemble(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two folds trained out of fold on the slice stage's logits, with 2.5D input and a timm-free encoder
    pooled by average and maximum (both ONNX reductions)."""
    from ich3d.training.fit import TrainOptions, fit

    out = tmp_path_factory.mktemp("runs") / "ensemble"
    fit(tiny_dataset, out, "cpu_small", TINY_TRAINING + ["folds=2", "model.features=logits", "data.input=bsb25d",
                                                       "model.encoder.kwargs.pool=avgmax"],
        options=TrainOptions(folds="all"))
    return out


def _member_probabilities(export: ExportFolder, run: Path, fold: int, member: int) -> float:
    from ich3d.inference.onnx_engine import OnnxMember

    trained = load_trained(RunFolder(run).fold(fold).model)
    return max_difference(trained.module, OnnxMember(export.encoder(member), export.head(member)), trained.data)


def test_one_fold_exports_graphs_equal_to_pytorch(trained_run: Path, tmp_path: Path) -> None:
    info = export_run([trained_run], tmp_path / "onnx")
    export = ExportFolder(tmp_path / "onnx")
    assert json.loads(export.info.read_text()) == info and len(info["members"]) == 1
    member = info["members"][0]
    assert member["max_abs_diff"] <= TOLERANCE and member["fold"] == 0
    assert info["labels"][0] == "any" and info["input"]["windows"]["brain"] == [40, 80]
    assert member["checkpoint"]["config"]["infer"] and len(member["checkpoint"]["prevalence"]) == 6
    assert _member_probabilities(export, trained_run, 0, 0) <= TOLERANCE


def test_fold_ensemble_exports_every_member(fold_ensemble: Path, tmp_path: Path) -> None:
    info = export_run([fold_ensemble], tmp_path / "onnx")
    export = ExportFolder(tmp_path / "onnx")
    assert [m["fold"] for m in info["members"]] == [0, 1] and info["input"]["context"] == 1
    for member, fold in enumerate([0, 1]):
        assert info["members"][member]["features"] == 6  # the slice stage's logits feed the head
        assert _member_probabilities(export, fold_ensemble, fold, member) <= TOLERANCE


def test_graphs_take_any_number_of_slices(trained_run: Path, tmp_path: Path) -> None:
    from ich3d.inference.onnx_engine import OnnxMember

    export_run([trained_run], tmp_path / "onnx")
    member = OnnxMember(ExportFolder(tmp_path / "onnx").encoder(0), ExportFolder(tmp_path / "onnx").head(0))
    trained = load_trained(RunFolder(trained_run).fold(0).model)
    model, data = trained.module, trained.data
    for n in (1, 5, 40):
        images, readable = synthetic_series(data, n_slices=n, seed=n)
        readable[:] = True
        with torch.inference_mode():
            expected = model.head(model.encode(images)[None], readable, readable)
        got = member.head(member.encode(images)[None], readable, readable)
        assert got.shape == (1, n, 6) and float((got - expected).abs().max()) < 1e-4
    # padded batches: each row is its own series
    images, _ = synthetic_series(data, n_slices=7)
    features = member.encode(images)
    padded = torch.zeros(2, 7, features.shape[1])
    padded[0], padded[1, :4] = features, features[:4]
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    with torch.inference_mode():
        expected = model.head(padded, mask, mask)
    assert float((member.head(padded, mask, mask) - expected)[mask].abs().max()) < 1e-4


def test_export_errors_are_one_line(tmp_path: Path, trained_run: Path) -> None:
    from ich3d.inference.onnx_engine import load_exported

    with pytest.raises(InputError, match="--format torchscript"):
        export_run([trained_run], tmp_path / "a", fmt="torchscript")
    with pytest.raises(InputError, match="no trained model"):
        export_run([tmp_path / "nowhere"], tmp_path / "b")
    with pytest.raises(InputError, match="written by `ich3d export"):
        load_exported(tmp_path)


@pytest.mark.slow
def test_infer_with_onnxruntime_writes_what_torch_writes(fold_ensemble: Path, synthetic_rsna: Path,
                                                         tmp_path: Path) -> None:
    """The CLI end to end from a DICOM folder: export, then infer with each engine; same rows, same exams."""
    import pandas as pd
    from click.testing import CliRunner

    from ich3d.app.cli import main
    from ich3d.layout import InferFolder

    runner = CliRunner()
    result = runner.invoke(main, ["export", str(fold_ensemble), "--format", "onnx", "--out", str(tmp_path / "onnx")])
    assert result.exit_code == 0, result.output
    outs = {}
    for engine, run in (("torch", fold_ensemble), ("onnxruntime", tmp_path / "onnx")):
        outs[engine] = InferFolder(tmp_path / engine)
        result = runner.invoke(main, ["infer", "--engine", engine, "--run", str(run), "--dicom-dir",
                                      str(synthetic_rsna / "stage_2_test"), "--out", str(tmp_path / engine),
                                      "--device", "cpu", "-q"])
        assert result.exit_code == 0, result.output
    torch_rows, ort_rows = (pd.read_csv(outs[e].submission) for e in ("torch", "onnxruntime"))
    assert list(torch_rows["ID"]) == list(ort_rows["ID"]) and len(torch_rows) > 0
    assert np.abs(torch_rows["Label"].to_numpy() - ort_rows["Label"].to_numpy()).max() <= TOLERANCE
    torch_exams, ort_exams = (pd.read_csv(outs[e].exams_csv) for e in ("torch", "onnxruntime"))
    assert list(torch_exams.columns) == list(ort_exams.columns) and len(torch_exams) == len(ort_exams) > 0
    numeric = torch_exams.select_dtypes("number").columns
    assert np.nanmax(np.abs(torch_exams[numeric].to_numpy(float) - ort_exams[numeric].to_numpy(float))) <= TOLERANCE
    other = [c for c in torch_exams.columns if c not in numeric]
    assert torch_exams[other].equals(ort_exams[other])  # study keys, slice ranges, flags
