"""Training: a tiny run learns, resume equals an uninterrupted run, bad runs are clear errors, DDP works."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAINING as TINY

from ich3d.checkpoint import load_checkpoint
from ich3d.config import load_config
from ich3d.errors import ConfigError, InputError
from ich3d.layout import RunFolder
from ich3d.training.fit import TrainOptions, fit


def _records(run: Path, fold: int = 0) -> list[dict]:
    return [json.loads(line) for line in RunFolder(run).fold(fold).metrics.read_text().splitlines()]


def _model(run: Path, fold: int = 0) -> Path:
    return RunFolder(run).fold(fold).model


def test_tiny_run_learns_and_writes_the_run_folder(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = fit(tiny_dataset, run, "cpu_small", TINY + ["stages.sequence.epochs=6"])
    assert result["folds"] == [0] and result["mode"] == "single" and result["metrics"]["weighted_log_loss"] > 0
    folder = RunFolder(run)
    for path in (folder.config, folder.splits, folder.info, folder.fold(0).metrics, folder.fold(0).encoder,
                 folder.fold(0).model, folder.fold(0).last):
        assert path.is_file(), path
    assert json.loads(folder.info.read_text())["folds"] == [0]
    records = _records(run)
    assert [r["stage"] for r in records] == ["slice"] * 2 + ["sequence"] * 6
    sequence = [r["train_loss"] for r in records if r["stage"] == "sequence"]
    assert sequence[-1] < sequence[0]
    checkpoint = torch.load(_model(run), weights_only=True)
    assert checkpoint["model"]["head"]["name"] == "gru" and len(checkpoint["prevalence"]) == 6
    assert checkpoint["fold"] == 0 and torch.load(folder.fold(0).last, weights_only=True)["fold"] == 0
    assert checkpoint["stage"] == "sequence" and checkpoint["calibration_report"]["fitted_on"] == "validation fold 0"
    assert len(checkpoint["calibration"]["a"]) == 6


def test_finetune_stage_with_2_5d_input(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "ft"
    extra = ["data.input=bsb25d", "stages.finetune.epochs=1", "stages.finetune.batch_size=2",
             "stages.finetune.crop_len=8", "stages.finetune.lr=1e-4", "stages.finetune.drop_slices=0.2"]
    result = fit(tiny_dataset, run, "cpu_small", TINY + extra)
    assert [r["stage"] for r in _records(run)][-1] == "finetune"
    assert load_checkpoint(_model(run))["stage"] == "finetune"
    checkpoint = torch.load(_model(run), weights_only=True)
    assert checkpoint["in_channels"] == 9


class Killed(Exception):
    """Stands in for a kill right after an epoch's checkpoint was written."""


def _kill_at(stage: str, epoch: int):
    def report(record: dict) -> None:
        if (record["stage"], record["epoch"]) == (stage, epoch):
            raise Killed

    return report


@pytest.mark.parametrize("kill_at", [("slice", 0), ("sequence", 1)])
def test_resume_after_a_kill_equals_an_uninterrupted_run(tiny_dataset: Path, tmp_path: Path, kill_at) -> None:
    full, killed = tmp_path / "full", tmp_path / "killed"
    fit(tiny_dataset, full, "cpu_small", TINY)
    with pytest.raises(Killed):
        fit(tiny_dataset, killed, "cpu_small", TINY, report=_kill_at(*kill_at))
    assert not _model(killed).exists()
    fit(tiny_dataset, killed, options=TrainOptions(resume=True))
    a = load_checkpoint(_model(full))["state_dict"]
    b = load_checkpoint(_model(killed))["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["valid"] for r in _records(full)] == [r["valid"] for r in _records(killed)]


def test_run_folder_errors(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError):
        fit(tmp_path / "not-a-dataset", tmp_path / "r0", "cpu_small", TINY)
    with pytest.raises(ConfigError, match="fold 7 does not exist"):
        fit(tiny_dataset, tmp_path / "r1", "cpu_small", TINY, options=TrainOptions(fold=7))
    with pytest.raises(ConfigError, match="nothing to resume"):
        fit(tiny_dataset, tmp_path / "r2", "cpu_small", TINY, options=TrainOptions(resume=True))
    with pytest.raises(ConfigError, match="unknown encoder 'resnet9'"):
        fit(tiny_dataset, tmp_path / "r3", "cpu_small", TINY + ["model.encoder.name=resnet9"])
    assert not (tmp_path / "r3").exists()  # rejected before anything was written


def test_the_fold_belongs_to_the_run(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "fold1"
    with pytest.raises(Killed):
        fit(tiny_dataset, run, "cpu_small", TINY, options=TrainOptions(fold=1), report=_kill_at("slice", 0))
    with pytest.raises(ConfigError, match="trains fold 1, not --fold 0"):
        fit(tiny_dataset, run, options=TrainOptions(fold=0, resume=True))
    with pytest.raises(ConfigError, match="already holds a training run"):
        fit(tiny_dataset, run, "cpu_small", TINY, options=TrainOptions(fold=0))
    result = fit(tiny_dataset, run, options=TrainOptions(resume=True))  # no --fold: the stored one
    assert result["folds"] == [1] and RunFolder(run).folds_present() == [1]
    assert load_checkpoint(_model(run, 1))["fold"] == 1
    splits = json.loads(RunFolder(run).splits.read_text())["folds"][1]["series"]
    assert sorted(load_checkpoint(_model(run, 1))["metrics"]) and len(splits) > 0
    assert sorted(json.loads(RunFolder(run).fold(1).embedding_set("valid").meta.read_text())) and \
        json.loads(RunFolder(run).fold(1).embedding_set("valid").meta.read_text())["fold"] == 1


def test_resume_with_another_dataset_is_refused(tiny_dataset: Path, synthetic_rsna: Path, tmp_path: Path) -> None:
    from ich3d.dataset.build import BuildOptions, build_series

    run = tmp_path / "run"
    with pytest.raises(Killed):
        fit(tiny_dataset, run, "cpu_small", TINY, report=_kill_at("slice", 0))
    other = tmp_path / "other"
    build_series([synthetic_rsna / "stage_2_train"], other,
                 options=BuildOptions(image_size=32, workers=1, progress=False))  # no labels
    with pytest.raises(ConfigError, match="resume with the run's dataset"):
        fit(other, run, options=TrainOptions(resume=True))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_ddp(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    overrides = [arg for item in TINY for arg in ("--set", item)]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "ich3d.app.cli", "-q", "train", "--dataset", str(tiny_dataset),
               "--config", "cpu_small", "--out", str(run), "--device", "cpu", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    records = _records(run)
    assert [r["stage"] for r in records] == ["slice"] * 2 + ["sequence"] * 3  # rank 0 logs once per epoch
    assert torch.load(_model(run), weights_only=True)["stage"] == "sequence"


OOF = TINY + ["model.features=logits"]


def _kill_in_fold(fold: int, stage: str, epoch: int):
    def report(record: dict) -> None:
        if (record["fold"], record["stage"], record["epoch"]) == (fold, stage, epoch):
            raise Killed

    return report


def test_out_of_fold_features_never_come_from_an_encoder_that_saw_the_series(tiny_dataset: Path,
                                                                            tmp_path: Path) -> None:
    from ich3d.data.tables import build_table
    from ich3d.dataset.index import load_index
    from ich3d.training.embeddings import fingerprint, out_of_fold
    from ich3d.training.splits import load_splits, split_series

    run = RunFolder(tmp_path / "oof")
    result = fit(tiny_dataset, run.root, "cpu_small", OOF, options=TrainOptions(folds="all"))
    assert result["mode"] == "out_of_fold" and result["folds"] == [0, 1, 2] and run.folds_present() == [0, 1, 2]
    calibrations = [load_checkpoint(run.fold(k).model)["calibration"] for k in range(3)]
    assert calibrations[0] == calibrations[1] == calibrations[2]
    assert load_checkpoint(run.fold(0).model)["calibration_report"]["fitted_on"].startswith("out-of-fold")
    fold_of = load_splits(run.splits)
    slices, _ = load_index(tiny_dataset)
    tables = {k: build_table(tiny_dataset, slices, split_series(fold_of, k)[1]) for k in range(3)}
    for k in range(3):
        train = build_table(tiny_dataset, slices, split_series(fold_of, k)[0])
        others = [j for j in range(3) if j != k]
        features = out_of_fold(train, {j: tables[j] for j in others},
                               {j: run.fold(j).embedding_set("valid") for j in others})
        for s, uid in enumerate(train.series_uids):
            rows = slice(train.offsets[s], train.offsets[s + 1])
            source = others[int(features.part_of[rows][0])]
            assert (features.part_of[rows] == features.part_of[rows][0]).all()
            assert source == fold_of[uid] != k  # held out by the fold that embedded it ...
            assert uid not in split_series(fold_of, source)[0]  # ... whose encoder never trained on it
        for j in others:
            meta = json.loads(run.fold(j).embedding_set("valid").meta.read_text())
            assert meta["fold"] == j and meta["encoder"] == fingerprint(run.fold(j).encoder)


def test_a_killed_multi_fold_run_resumes_at_its_fold_and_epoch(tiny_dataset: Path, tmp_path: Path) -> None:
    full, killed = tmp_path / "full", tmp_path / "killed"
    fit(tiny_dataset, full, "cpu_small", OOF, options=TrainOptions(folds="all"))
    with pytest.raises(Killed):
        fit(tiny_dataset, killed, "cpu_small", OOF, options=TrainOptions(folds="all"),
            report=_kill_in_fold(1, "sequence", 1))
    assert _model(killed, 0).is_file() and not _model(killed, 1).exists()
    with pytest.raises(ConfigError, match="trains folds \\[0, 1, 2\\], not --fold 1"):
        fit(tiny_dataset, killed, options=TrainOptions(fold=1, resume=True))
    fit(tiny_dataset, killed, options=TrainOptions(resume=True))
    for k in range(3):
        a, b = load_checkpoint(_model(full, k)), load_checkpoint(_model(killed, k))
        assert all(torch.equal(a["state_dict"][name], b["state_dict"][name]) for name in a["state_dict"])
        assert a["calibration"] == b["calibration"]
        assert [r["valid"] for r in _records(full, k)] == [r["valid"] for r in _records(killed, k)]


def test_augmented_views_are_fixed_draws_of_each_training_series(tiny_dataset: Path, tmp_path: Path) -> None:
    from ich3d.data.batching import AugmentedView
    from ich3d.data.tables import build_table
    from ich3d.dataset.index import load_index
    from ich3d.inference.predictor import Predictor, RuntimeOptions
    from ich3d.models.io import load_trained
    from ich3d.runtime import setup_runtime
    from ich3d.training.embeddings import open_embeddings
    from ich3d.training.splits import load_splits, split_series

    run = RunFolder(tmp_path / "views")
    fit(tiny_dataset, run.root, "cpu_small", TINY + ["stages.sequence.augmented_views=2"])
    slices, _ = load_index(tiny_dataset)
    train = build_table(tiny_dataset, slices, split_series(load_splits(run.splits), 0)[0])
    views = open_embeddings(run.fold(0).embedding_set("train"), train).views
    assert len(views) == 4
    shown = train.readable
    plain, first, second = (np.asarray(views[v], dtype=np.float32)[shown] for v in (0, 2, 3))
    assert not np.allclose(first, plain, atol=1e-2) and not np.allclose(first, second, atol=1e-2)
    # A series' draw depends on the seed, the view and its UID only: embedded alone it is the same
    model = load_trained(run.fold(0).model, torch.device("cpu"))  # the sequence stage kept the encoder as it was
    predictor = Predictor([model], setup_runtime("cpu", False), RuntimeOptions(batch_series=1))
    config = load_config(run.config)
    last = len(train.series_uids) - 1
    alone = predictor.embed_table(0, train, np.array([last]), augmented=AugmentedView(config.augment, config.seed, 1))[0]
    rows = np.arange(train.offsets[last], train.offsets[last + 1])
    rows = rows[train.readable[rows]]
    np.testing.assert_allclose(alone[rows], np.asarray(views[3][rows], dtype=np.float32), rtol=1e-2, atol=1e-2)


def test_out_of_fold_heads_train_on_augmented_held_out_views(tiny_dataset: Path, tmp_path: Path) -> None:
    from ich3d.data.tables import build_table
    from ich3d.dataset.index import load_index
    from ich3d.training.embeddings import open_embeddings, out_of_fold
    from ich3d.training.splits import load_splits, split_series

    run = RunFolder(tmp_path / "oof")
    fit(tiny_dataset, run.root, "cpu_small", OOF + ["stages.sequence.augmented_views=1"],
        options=TrainOptions(folds="all"))
    fold_of, (slices, _) = load_splits(run.splits), load_index(tiny_dataset)
    tables = {k: build_table(tiny_dataset, slices, split_series(fold_of, k)[1]) for k in range(3)}
    valid = open_embeddings(run.fold(1).embedding_set("valid"), tables[1])
    assert len(valid.views) == 3 and len(valid.tta) == 2  # validation scores plain and flipped only
    train = build_table(tiny_dataset, slices, split_series(fold_of, 0)[0])
    features = out_of_fold(train, {j: tables[j] for j in (1, 2)}, {j: run.fold(j).embedding_set("valid") for j in (1, 2)})
    assert features.views == (0, 1, 2)
    assert not run.fold(0).embedding_set("train").root.exists()  # no in-sample features out of fold


def test_fold_requests() -> None:
    from ich3d.training.fit import requested_folds

    assert requested_folds(None, "all", 3) == [0, 1, 2] and requested_folds(None, "2,0,1", 3) == [0, 1, 2]
    assert requested_folds(2, None, 5) == [2] and requested_folds(None, None, 5) is None
    with pytest.raises(ConfigError, match="needs every fold"):
        requested_folds(None, "0,1", 5)
    with pytest.raises(ConfigError, match="not both"):
        requested_folds(0, "all", 5)
    with pytest.raises(ConfigError, match="folds are 0..2"):
        requested_folds(None, "0,1,7", 3)
