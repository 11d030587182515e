"""Fault injection: bad inputs and file-system faults are one-line errors (exit 1, the file named, no
traceback) and lose nothing: the other inputs are built, earlier results stay intact (docs/design.md §9)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result
from conftest import TINY_TRAINING

from ich3d.app.cli import main
from ich3d.layout import DatasetFolder, InferFolder, RunFolder

IS_ROOT = os.geteuid() == 0
#: Root ignores file permissions; without these capabilities it does not (setpriv drops them).
NO_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if IS_ROOT else []


def _run(args: list[str]) -> Result:
    return CliRunner().invoke(main, args)


def _fails(result: Result, *fragments: str) -> str:
    """Asserts a one-line user error naming ``fragments``; returns the line."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _cli(args: list[str], privileged: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real console entry point in a new process (``privileged=False``: without root's overrides)."""
    prefix = [] if privileged else NO_OVERRIDE
    return subprocess.run([*prefix, sys.executable, "-m", "ich3d.app.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture()
def small_input(synthetic_rsna: Path, tmp_path: Path) -> Path:
    """A copy of the synthetic test split in two sub-folders."""
    root = tmp_path / "input"
    files = sorted((synthetic_rsna / "stage_2_test").iterdir())
    for i, path in enumerate(files):
        target = root / ("a" if i % 2 else "b") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return root


@pytest.mark.skipif(IS_ROOT and shutil.which("setpriv") is None, reason="needs setpriv to drop root's overrides")
def test_an_unreadable_sub_folder_is_recorded_and_the_rest_built(small_input: Path, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    os.chmod(small_input / "a", 0)
    try:
        done = _cli(["build-series", "--dicom-dir", str(small_input), "--out", str(out), "--image-size", "32",
                     "--workers", "1"], privileged=False)
    finally:
        os.chmod(small_input / "a", 0o755)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "cannot read" in done.stderr
    summary = json.loads(DatasetFolder(out).build_summary().read_text())
    assert summary["unreadable_paths"][0]["path"] == str((small_input / "a").resolve())
    assert summary["n_files"] == len(list((small_input / "b").iterdir()))


@pytest.mark.skipif(IS_ROOT and shutil.which("setpriv") is None, reason="needs setpriv to drop root's overrides")
def test_a_read_only_output_folder_fails_before_any_work(small_input: Path, tmp_path: Path) -> None:
    out = tmp_path / "read-only"
    out.mkdir()
    os.chmod(out, 0o555)
    try:
        done = _cli(["build-series", "--dicom-dir", str(small_input), "--out", str(out / "d")], privileged=False)
    finally:
        os.chmod(out, 0o755)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: --out {out / 'd'}: cannot write there")


def test_bad_labels_config_and_device_are_one_line_errors(small_input: Path, tiny_dataset: Path,
                                                         tmp_path: Path) -> None:
    header_only = tmp_path / "labels.csv"
    header_only.write_text("ID,Label\n")
    _fails(_run(["build-series", "--dicom-dir", str(small_input), "--labels", str(header_only), "--out",
                 str(tmp_path / "d")]), str(header_only), "no rows")
    binary = tmp_path / "config.yaml"
    binary.write_bytes(bytes(range(256)))
    _fails(_run(["train", "--dataset", str(tiny_dataset), "--config", str(binary), "--out", str(tmp_path / "r")]),
           str(binary), "not a valid YAML text file")
    _fails(_run(["train", "--dataset", str(tiny_dataset), "--config", "/nonexistent/cpu_small.yaml", "--out",
                 str(tmp_path / "r")]), "/nonexistent/cpu_small.yaml", "not found")
    _fails(_run(["train", "--dataset", str(tiny_dataset), "--config", "cpu_small", "--out", str(tmp_path / "r"),
                 "--device", "gpu0"]), "--device gpu0")
    assert not (tmp_path / "r").exists()  # nothing written for a run that could not start


def test_outputs_on_a_file_are_one_line_errors(small_input: Path, tiny_dataset: Path, trained_run: Path,
                                               tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    _fails(_run(["build-series", "--dicom-dir", str(small_input), "--out", str(a_file)]), str(a_file), "is a file")
    _fails(_run(["train", "--dataset", str(tiny_dataset), "--config", "cpu_small", "--out", str(a_file)]),
           str(a_file), "is a file")
    _fails(_run(["infer", "--run", str(trained_run), "--dataset", str(tiny_dataset), "--out", str(a_file)]),
           str(a_file), "is a file")
    image = pd.read_parquet(DatasetFolder(tiny_dataset).slices)["image_id"].iloc[0]
    _fails(_run(["show", image, "--dataset", str(tiny_dataset), "--out", str(tmp_path)]), str(tmp_path))
    assert a_file.read_text() == "keep me"


def test_model_and_run_mistakes(tiny_dataset: Path, trained_run: Path, synthetic_rsna: Path, tmp_path: Path) -> None:
    last = RunFolder(trained_run).fold(0).last
    _fails(_run(["infer", "--run", str(last), "--dataset", str(tiny_dataset), "--out", str(tmp_path / "o")]),
           str(last), "not a model checkpoint")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.dcm").write_bytes(b"not dicom at all" * 10)
    _fails(_run(["-q", "build-series", "--dicom-dir", str(junk), "--out", str(tmp_path / "j")]), "none of the 1 files",
           "build.json")
    sample = tmp_path / "sample.csv"
    sample.write_text("ID,Label\n")
    _fails(_run(["infer", "--run", str(trained_run), "--dicom-dir", str(synthetic_rsna / "stage_2_test"),
                 "--sample-submission", str(sample), "--out", str(tmp_path / "p")]), str(sample), "no rows")


def test_requested_images_without_files_fail_before_the_model_pass(trained_run: Path, synthetic_rsna: Path,
                                                                  tmp_path: Path) -> None:
    sample = pd.read_csv(synthetic_rsna / "stage_2_sample_submission.csv")
    extra = sample.iloc[:6].assign(ID=lambda f: f["ID"].str.replace(r"^ID_[0-9a-f]+", "ID_ffffffff9", regex=True))
    pd.concat([sample, extra]).to_csv(tmp_path / "sample.csv", index=False)
    out = tmp_path / "out"
    _fails(_run(["infer", "--run", str(trained_run), "--dicom-dir", str(synthetic_rsna / "stage_2_test"),
                 "--sample-submission", str(tmp_path / "sample.csv"), "--out", str(out)]),
           "ID_ffffffff9", "--allow-missing")
    assert not InferFolder(out).parts.exists() and not DatasetFolder(InferFolder(out).dataset).cache.exists()


def test_score_rejects_labels_that_are_not_labels(trained_run: Path, synthetic_rsna: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    assert _run(["-q", "infer", "--run", str(trained_run), "--dicom-dir", str(synthetic_rsna / "stage_2_test"),
                 "--sample-submission", str(synthetic_rsna / "stage_2_sample_submission.csv"), "--out",
                 str(out)]).exit_code == 0
    submission = InferFolder(out).submission
    _fails(_run(["score", str(submission), "--labels", str(submission)]), str(submission), "Label must be 0 or 1")
    truth = pd.read_csv(synthetic_rsna / "stage_2_test_labels.csv")
    text = truth.assign(Label=truth["Label"].astype(str).where(truth.index > 0, "yes"))
    text.to_csv(tmp_path / "text.csv", index=False)
    _fails(_run(["score", str(submission), "--labels", str(tmp_path / "text.csv")]), "text.csv", "0 or 1")
    conflicting = pd.concat([truth, truth.iloc[:1].assign(Label=1 - truth["Label"].iloc[0])])
    conflicting.to_csv(tmp_path / "conflict.csv", index=False)
    result = _run(["score", str(submission), "--labels", str(tmp_path / "conflict.csv")])
    assert result.exit_code == 0
    assert json.loads((out / "score.json").read_text())["labels"]["n_conflicts"] == 1  # resolved as build-series does


def test_show_after_the_source_moved(synthetic_rsna: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(synthetic_rsna / "stage_2_test", source)
    dataset = tmp_path / "d"
    assert _run(["-q", "build-series", "--dicom-dir", str(source), "--out", str(dataset), "--image-size", "32",
                 "--workers", "1"]).exit_code == 0
    image = pd.read_parquet(DatasetFolder(dataset).slices).query("status == 'ok'")["image_id"].iloc[0]
    source.rename(tmp_path / "moved")
    _fails(_run(["show", image, "--dataset", str(dataset), "--out", str(tmp_path / "x.png")]), "cannot be read any more")


def test_a_damaged_cache_file_is_rebuilt_and_counted(synthetic_rsna: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "d"
    args = ["-q", "build-series", "--dicom-dir", str(synthetic_rsna / "stage_2_test"), "--out", str(dataset),
            "--image-size", "32", "--workers", "1"]
    assert _run(args).exit_code == 0
    folder = DatasetFolder(dataset)
    victim = sorted(folder.cache.iterdir())[0]
    good = np.load(victim)
    victim.write_bytes(victim.read_bytes()[:200])  # cut short, as by a full disk
    assert _run(args).exit_code == 0
    np.testing.assert_array_equal(np.load(victim), good)
    assert json.loads(folder.build_summary().read_text())["pixel_pass"]["damaged_cache_files_rebuilt"] == 1


def test_two_infer_jobs_into_one_folder(trained_run: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "shared"
    args = ["-q", "infer", "--run", str(trained_run), "--dataset", str(tiny_dataset), "--out", str(out)]
    first = subprocess.Popen([sys.executable, "-m", "ich3d.app.cli", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lock = InferFolder(out).lock
    deadline = time.monotonic() + 60
    while not (lock.is_file() and lock.read_text()) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    second = _cli(args)
    first_out, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    if second.returncode == 1:  # it ran while the first held the folder
        assert "is in use by another ich3d job" in second.stderr and "Traceback" not in second.stderr
    else:  # the first finished before the second started: then both are complete, one after the other
        assert second.returncode == 0, second.stderr
    submission = pd.read_csv(InferFolder(out).submission)
    assert len(submission) == 6 * len(pd.read_parquet(DatasetFolder(tiny_dataset).slices))
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind


def test_killed_build_leaves_no_worker_behind(synthetic_rsna: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "ich3d.app.cli", "-q", "build-series", "--dicom-dir", str(synthetic_rsna),
               "--out", str(tmp_path / "d"), "--image-size", "512", "--workers", "2", "--overwrite"]
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[int] = []
    deadline = time.monotonic() + 60
    while not children and parent.poll() is None and time.monotonic() < deadline:
        children = _children(parent.pid)
        time.sleep(0.02)
    if parent.poll() is not None:
        pytest.skip("the build finished before its workers could be seen")
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in children if _alive(pid)]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.is_file() else []


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    if not status.is_file():
        return False
    state = next((line for line in status.read_text().splitlines() if line.startswith("State:")), "")
    return "Z" not in state  # a zombie has exited


def test_resume_with_another_dataset_from_the_cli(tiny_dataset: Path, synthetic_rsna: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    overrides = [arg for item in TINY_TRAINING + ["stages.sequence.epochs=1"] for arg in ("--set", item)]
    assert _run(["-q", "train", "--dataset", str(tiny_dataset), "--config", "cpu_small", "--out", str(run),
                 *overrides]).exit_code == 0
    other = tmp_path / "other"
    assert _run(["-q", "build-series", "--dicom-dir", str(synthetic_rsna / "stage_2_test"), "--out", str(other),
                 "--image-size", "32", "--workers", "1"]).exit_code == 0
    _fails(_run(["train", "--dataset", str(other), "--out", str(run), "--resume"]), "resume with the run's dataset")
    _fails(_run(["train", "--dataset", str(tiny_dataset), "--out", str(run), "--resume", "--fold", "2"]),
           "trains fold 0, not --fold 2")
