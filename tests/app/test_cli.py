"""The CLI through its real entry point: help, version, exit codes, and the demo end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ich3d import __version__
from ich3d.app.cli import main

COMMANDS = ["synth", "build-series", "show", "train", "infer", "merge", "score", "demo"]


def test_console_script_help_and_version() -> None:
    done = subprocess.run([sys.executable, "-m", "ich3d.app.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and __version__ in done.stdout
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert CliRunner().invoke(main, ["train", "--out", str(tmp_path)]).exit_code == 2
    assert CliRunner().invoke(main, ["build-series", "--out", str(tmp_path)]).exit_code == 2


def test_user_errors_exit_1_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["train", "--dataset", str(tmp_path / "empty"), "--config", "cpu_small",
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    result = CliRunner().invoke(main, ["build-series", "--dicom-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "d")])
    assert result.exit_code == 1 and "error:" in result.output
    result = CliRunner().invoke(main, ["train", "--dataset", str(tmp_path / "empty"), "--config", "cpu_small",
                                       "--out", str(tmp_path / "run"), "--set", "stages.slice.epoch=3"])
    assert result.exit_code == 1 and "stages.slice.epoch" in result.output


def test_strict_build_exits_3_on_skipped_inputs(synthetic_rsna: Path, tmp_path: Path) -> None:
    args = ["-q", "build-series", "--dicom-dir", str(synthetic_rsna / "stage_2_test"), "--out", str(tmp_path / "d"),
            "--image-size", "32", "--workers", "1"]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert CliRunner().invoke(main, args + ["--strict"]).exit_code == 3


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_before_or_after_the_command(synthetic_rsna: Path, tmp_path: Path, where: str) -> None:
    args = ["build-series", "--dicom-dir", str(synthetic_rsna / "stage_2_test"), "--out", str(tmp_path / "d"),
            "--image-size", "32", "--workers", "1"]
    loud = CliRunner().invoke(main, args)
    assert loud.exit_code == 0 and "build-series" in loud.stdout
    quiet = CliRunner().invoke(main, ["-q", *args] if where == "before" else [*args, "-q"])
    assert quiet.exit_code == 0 and quiet.stdout == ""


def test_train_infer_score_commands(tiny_dataset: Path, trained_run: Path, synthetic_rsna: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    result = CliRunner().invoke(main, ["-q", "infer", "--run", str(trained_run), "--dicom-dir",
                                       str(synthetic_rsna / "stage_2_test"), "--sample-submission",
                                       str(synthetic_rsna / "stage_2_sample_submission.csv"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["score", str(out / "submission.csv"), "--labels",
                                       str(synthetic_rsna / "stage_2_test_labels.csv")])
    assert result.exit_code == 0, result.output
    assert "weighted log loss" in result.output
    assert json.loads((out / "score.json").read_text())["weighted_log_loss"] > 0


@pytest.mark.slow
def test_demo_beats_the_prior(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo"), "--n-series", "36", "--n-test-series", "8",
                                       "--set", "stages.slice.samples_per_epoch=1024", "--set", "stages.sequence.epochs=12"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert summary["score"]["weighted_log_loss"] < 0.85 * summary["prior_score"]
    assert "demo test weighted log loss" in result.output
    assert (tmp_path / "demo" / "predictions" / "submission.csv").is_file()


def test_demo_reruns_in_the_same_folder(tmp_path: Path) -> None:
    tiny = ["--n-series", "6", "--n-test-series", "2", "--set", "folds=2", "--set", "stages.slice.samples_per_epoch=64",
            "--set", "stages.slice.epochs=1", "--set", "stages.sequence.epochs=1", "--set", "data.image_size=32"]
    args = ["-q", "demo", "--out", str(tmp_path / "demo"), *tiny]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert CliRunner().invoke(main, args).exit_code == 0  # reuses the data and the finished run
    other = CliRunner().invoke(main, [*args[:4], "--n-series", "7", *tiny[2:]])
    assert other.exit_code == 1 and "other settings" in other.output
