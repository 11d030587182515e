"""Inference: every requested image gets rows, raw-folder == built dataset, shards merge exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ich3d.errors import InputError
from ich3d.inference.run import InferOptions, merge, predict
from ich3d.shard import Shard


def test_submission_matches_sample_including_unreadable(trained_run: Path, synthetic_rsna: Path, tmp_path: Path) -> None:
    sample = synthetic_rsna / "stage_2_sample_submission.csv"
    summary = predict([trained_run], tmp_path / "out", dicom_dirs=[synthetic_rsna / "stage_2_test"],
                      sample_submission=sample, progress=False)
    written = pd.read_csv(tmp_path / "out" / "submission.csv")
    expected = pd.read_csv(sample)
    assert written["ID"].tolist() == expected["ID"].tolist()
    assert written["Label"].between(0, 1).all() and written["Label"].notna().all()
    predictions = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert summary["context"] >= 1 and summary["prior"] >= 1  # the corrupt slice and the junk file
    assert set(predictions.loc[predictions["status"] != "ok", "predicted_by"]) <= {"context", "prior"}
    assert summary["model"] + summary["context"] + summary["prior"] == summary["images"]


def test_raw_folder_equals_built_dataset_and_shards_merge(trained_run: Path, synthetic_rsna: Path, tmp_path: Path) -> None:
    from ich3d.dataset.build import BuildOptions, build_series

    test_dir = synthetic_rsna / "stage_2_test"
    raw = tmp_path / "raw"
    predict([trained_run], raw, dicom_dirs=[test_dir], progress=False)
    dataset = tmp_path / "dataset"
    from ich3d.models.io import load_trained

    build_series([test_dir], dataset,
                 options=BuildOptions(image_size=load_trained(trained_run / "fold_0" / "model.pt").image_size,
                                      progress=False))
    built = tmp_path / "built"
    predict([trained_run], built, dataset=dataset, progress=False)
    sharded = tmp_path / "sharded"
    for part in range(2):
        predict([trained_run], sharded, dataset=dataset, options=InferOptions(shard=Shard(2, part)), progress=False)
    merge(sharded)
    frames = [pd.read_csv(p / "submission.csv").sort_values("ID").reset_index(drop=True) for p in (raw, built, sharded)]
    for other in frames[1:]:
        assert other["ID"].tolist() == frames[0]["ID"].tolist()
        np.testing.assert_allclose(other["Label"], frames[0]["Label"], atol=1e-5)


def test_missing_images_are_errors_unless_allowed(trained_run: Path, synthetic_rsna: Path, tmp_path: Path) -> None:
    sample = pd.read_csv(synthetic_rsna / "stage_2_sample_submission.csv")
    extra = pd.DataFrame({"ID": [f"ID_ffffffff0_{label}" for label in
                                 ("any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")],
                          "Label": 0.5})
    pd.concat([sample, extra]).to_csv(tmp_path / "sample.csv", index=False)
    args = dict(dicom_dirs=[synthetic_rsna / "stage_2_test"], sample_submission=tmp_path / "sample.csv", progress=False)
    with pytest.raises(InputError, match="1 requested image.*ID_ffffffff0.*--allow-missing"):
        predict([trained_run], tmp_path / "a", **args)
    summary = predict([trained_run], tmp_path / "b", options=InferOptions(allow_missing=True), **args)
    assert summary["missing"] == 1
    written = pd.read_csv(tmp_path / "b" / "submission.csv").set_index("ID")["Label"]
    assert 0 < written["ID_ffffffff0_any"] < 0.5  # the training prevalence, not 0.5 or 0


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path, synthetic_rsna: Path) -> None:
    with pytest.raises(InputError, match="no trained model"):
        predict([tmp_path / "nowhere"], tmp_path / "o", dicom_dirs=[synthetic_rsna / "stage_2_test"], progress=False)
