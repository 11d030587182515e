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

from ich3d.checkpoint import load_checkpoint
from ich3d.constants import ENCODER_CHECKPOINT, LAST_CHECKPOINT, MODEL_CHECKPOINT
from ich3d.errors import ConfigError, InputError
from ich3d.training.fit import fit

from conftest import TINY_TRAINING as TINY


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_learns_and_writes_the_run_folder(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = fit(tiny_dataset, run, "cpu_small", TINY + ["stages.sequence.epochs=6"])
    assert result["stage"] == "sequence" and result["metrics"]["weighted_log_loss"] > 0
    for name in ("config.yaml", "splits.json", "metrics.jsonl", ENCODER_CHECKPOINT, MODEL_CHECKPOINT, LAST_CHECKPOINT):
        assert (run / name).is_file(), name
    records = _records(run)
    assert [r["stage"] for r in records] == ["slice"] * 2 + ["sequence"] * 6
    sequence = [r["train_loss"] for r in records if r["stage"] == "sequence"]
    assert sequence[-1] < sequence[0]
    checkpoint = torch.load(run / MODEL_CHECKPOINT, weights_only=True)
    assert checkpoint["model"]["head"]["name"] == "gru" and len(checkpoint["prevalence"]) == 6


def test_finetune_stage_with_2_5d_input(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "ft"
    extra = ["data.input=bsb25d", "stages.finetune.epochs=1", "stages.finetune.batch_size=2",
             "stages.finetune.crop_len=8", "stages.finetune.lr=1e-4"]
    result = fit(tiny_dataset, run, "cpu_small", TINY + extra)
    assert [r["stage"] for r in _records(run)][-1] == "finetune"
    assert result["stage"] in {"finetune"}
    checkpoint = torch.load(run / MODEL_CHECKPOINT, weights_only=True)
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
    assert not (killed / MODEL_CHECKPOINT).exists()
    fit(tiny_dataset, killed, resume=True)
    a = load_checkpoint(full / MODEL_CHECKPOINT)["state_dict"]
    b = load_checkpoint(killed / MODEL_CHECKPOINT)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["valid"] for r in _records(full)] == [r["valid"] for r in _records(killed)]


def test_run_folder_errors(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError):
        fit(tmp_path / "not-a-dataset", tmp_path / "r0", "cpu_small", TINY)
    with pytest.raises(ConfigError, match="fold 7 does not exist"):
        fit(tiny_dataset, tmp_path / "r1", "cpu_small", TINY, fold=7)
    with pytest.raises(ConfigError, match="nothing to resume"):
        fit(tiny_dataset, tmp_path / "r2", "cpu_small", TINY, resume=True)


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
    assert torch.load(run / MODEL_CHECKPOINT, weights_only=True)["stage"] == "sequence"
