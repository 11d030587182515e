"""Training: a tiny run learns, resume equals an uninterrupted run, bad runs are clear errors, DDP works."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAINING as TINY

from ich3d.checkpoint import load_checkpoint
from ich3d.errors import ConfigError, InputError
from ich3d.layout import RunFolder
from ich3d.training.fit import fit


def _records(run: Path, fold: int = 0) -> list[dict]:
    return [json.loads(line) for line in RunFolder(run).fold(fold).metrics.read_text().splitlines()]


def _model(run: Path, fold: int = 0) -> Path:
    return RunFolder(run).fold(fold).model


def test_tiny_run_learns_and_writes_the_run_folder(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = fit(tiny_dataset, run, "cpu_small", TINY + ["stages.sequence.epochs=6"])
    assert result["stage"] == "sequence" and result["metrics"]["weighted_log_loss"] > 0 and result["fold"] == 0
    folder = RunFolder(run)
    for path in (folder.config, folder.splits, folder.info, folder.fold(0).metrics, folder.fold(0).encoder,
                 folder.fold(0).model, folder.fold(0).last):
        assert path.is_file(), path
    assert json.loads(folder.info.read_text())["fold"] == 0
    records = _records(run)
    assert [r["stage"] for r in records] == ["slice"] * 2 + ["sequence"] * 6
    sequence = [r["train_loss"] for r in records if r["stage"] == "sequence"]
    assert sequence[-1] < sequence[0]
    checkpoint = torch.load(_model(run), weights_only=True)
    assert checkpoint["model"]["head"]["name"] == "gru" and len(checkpoint["prevalence"]) == 6
    assert checkpoint["fold"] == 0 and torch.load(folder.fold(0).last, weights_only=True)["fold"] == 0


def test_finetune_stage_with_2_5d_input(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "ft"
    extra = ["data.input=bsb25d", "stages.finetune.epochs=1", "stages.finetune.batch_size=2",
             "stages.finetune.crop_len=8", "stages.finetune.lr=1e-4", "stages.finetune.drop_slices=0.2"]
    result = fit(tiny_dataset, run, "cpu_small", TINY + extra)
    assert [r["stage"] for r in _records(run)][-1] == "finetune"
    assert result["stage"] in {"finetune"}
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
    fit(tiny_dataset, killed, resume=True)
    a = load_checkpoint(_model(full))["state_dict"]
    b = load_checkpoint(_model(killed))["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["valid"] for r in _records(full)] == [r["valid"] for r in _records(killed)]


def test_run_folder_errors(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError):
        fit(tmp_path / "not-a-dataset", tmp_path / "r0", "cpu_small", TINY)
    with pytest.raises(ConfigError, match="fold 7 does not exist"):
        fit(tiny_dataset, tmp_path / "r1", "cpu_small", TINY, fold=7)
    with pytest.raises(ConfigError, match="nothing to resume"):
        fit(tiny_dataset, tmp_path / "r2", "cpu_small", TINY, resume=True)
    with pytest.raises(ConfigError, match="unknown encoder 'resnet9'"):
        fit(tiny_dataset, tmp_path / "r3", "cpu_small", TINY + ["model.encoder.name=resnet9"])
    assert not (tmp_path / "r3").exists()  # rejected before anything was written


def test_the_fold_belongs_to_the_run(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "fold1"
    with pytest.raises(Killed):
        fit(tiny_dataset, run, "cpu_small", TINY, fold=1, report=_kill_at("slice", 0))
    with pytest.raises(ConfigError, match="trains fold 1, not --fold 0"):
        fit(tiny_dataset, run, fold=0, resume=True)
    with pytest.raises(ConfigError, match="already holds a training run"):
        fit(tiny_dataset, run, "cpu_small", TINY, fold=0)
    result = fit(tiny_dataset, run, resume=True)  # no --fold: the stored one
    assert result["fold"] == 1 and RunFolder(run).folds_present() == [1]
    assert load_checkpoint(_model(run, 1))["fold"] == 1
    splits = json.loads(RunFolder(run).splits.read_text())["folds"][1]["series"]
    assert sorted(load_checkpoint(_model(run, 1))["metrics"]) and len(splits) > 0
    assert sorted(json.loads((RunFolder(run).fold(1).embeddings / "valid" / "meta.json").read_text())) and \
        json.loads((RunFolder(run).fold(1).embeddings / "valid" / "meta.json").read_text())["fold"] == 1


def test_resume_with_another_dataset_is_refused(tiny_dataset: Path, synthetic_rsna: Path, tmp_path: Path) -> None:
    from ich3d.dataset.build import build_series

    run = tmp_path / "run"
    with pytest.raises(Killed):
        fit(tiny_dataset, run, "cpu_small", TINY, report=_kill_at("slice", 0))
    other = tmp_path / "other"
    build_series([synthetic_rsna / "stage_2_train"], other, image_size=32, workers=1, progress=False)  # no labels
    with pytest.raises(ConfigError, match="resume with the run's dataset"):
        fit(other, run, resume=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_ddp(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    overrides = [arg for item in TINY for arg in ("--set", item)]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "ich3d.cli", "-q", "train", "--dataset", str(tiny_dataset),
               "--config", "cpu_small", "--out", str(run), "--device", "cpu", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    records = _records(run)
    assert [r["stage"] for r in records] == ["slice"] * 2 + ["sequence"] * 3  # rank 0 logs once per epoch
    assert torch.load(_model(run), weights_only=True)["stage"] == "sequence"
