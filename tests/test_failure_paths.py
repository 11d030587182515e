"""Failure paths of issue 17: every failure one line, nothing left half-made, usage errors exit 2
(docs/design.md §9). Each test is named after the case a user met."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_TRAINING
from test_faults import _fails, _run
from torch.utils.data import DataLoader, Dataset

from ich3d.dataset.build import BuildOptions, build_series
from ich3d.errors import InputError, UsageError
from ich3d.folders import FolderLock
from ich3d.layout import DatasetFolder, RunFolder

SMALL = BuildOptions(image_size=32, workers=1, progress=False)
QUICK = [arg for item in TINY_TRAINING + ["stages.slice.epochs=1", "stages.sequence.epochs=1"]
         for arg in ("--set", item)]


class _DamagedCache(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> None:
        raise InputError("cache/s1.npy: damaged cache file; rerun `ich3d build-series`")


def test_an_input_error_in_a_loader_worker_is_its_one_line_message() -> None:
    with pytest.raises(InputError) as caught:
        next(iter(DataLoader(_DamagedCache(), num_workers=1)))
    assert str(caught.value) == "cache/s1.npy: damaged cache file; rerun `ich3d build-series`"


def test_a_damaged_cache_read_by_infer_workers_is_one_line(tiny_dataset: Path, trained_run: Path,
                                                          tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    shutil.copytree(tiny_dataset, dataset)
    cache = sorted(DatasetFolder(dataset).cache.glob("*.npy"))[0]
    cache.write_bytes(cache.read_bytes()[:200])
    line = _fails(_run(["infer", "--run", str(trained_run), "--dataset", str(dataset), "--out", str(tmp_path / "o"),
                        "--workers", "1"]), str(cache))
    assert len(line) < 400 and "Traceback" not in line and "worker" not in line


@pytest.fixture()
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: anything larger than a few JSON files fills it (ENOSPC)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_while_train_saves_a_checkpoint_is_one_line(tiny_dataset: Path, full_disk: Path) -> None:
    run = full_disk / "run"
    line = _fails(_run(["train", "--dataset", str(tiny_dataset), "--config", "cpu_small", "--out", str(run), *QUICK]),
                  "no space left on device", str(RunFolder(run).fold(0).last))
    assert "free space" in line
    assert not list(full_disk.rglob("*.tmp"))  # the partial checkpoint is gone


def test_a_train_killed_before_its_first_checkpoint_can_be_restarted(tiny_dataset: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    for name, restart in [("resumed", ["--resume"]), ("rerun", ["--config", "cpu_small", *QUICK])]:
        run = tmp_path / name
        args = ["-q", "train", "--dataset", str(tiny_dataset), "--out", str(run)]
        with monkeypatch.context() as patch:
            patch.setattr("ich3d.training.fit.train_folds", killed)
            assert _run([*args, "--config", "cpu_small", *QUICK]).exit_code == 130
        assert RunFolder(run).info.is_file() and not RunFolder(run).fold(0).last.exists()
        result = _run([*args, *restart])
        assert result.exit_code == 0, result.output
        assert RunFolder(run).fold(0).model.is_file()


def test_absurd_image_sizes_are_refused_before_allocation(synthetic_rsna: Path, tiny_dataset: Path,
                                                          tmp_path: Path) -> None:
    small_input = synthetic_rsna / "stage_2_test"
    result = _run(["build-series", "--dicom-dir", str(small_input), "--out", str(tmp_path / "d"),
                   "--image-size", "100000"])
    assert result.exit_code == 2 and "--image-size" in result.output and "--workers" not in result.output
    with pytest.raises(UsageError, match="--image-size 100000: must be 1 to 1024 pixels"):
        build_series([small_input], tmp_path / "d", options=BuildOptions(image_size=100_000, workers=1))
    _fails(_run(["train", "--dataset", str(tiny_dataset), "--config", "cpu_small", "--out", str(tmp_path / "r"),
                 "--set", "data.image_size=100000"]), "data.image_size", "16 to 1024")
    assert not (tmp_path / "d").exists() and not (tmp_path / "r").exists()


def test_show_of_a_dicom_file_outside_the_dataset_is_one_line(tiny_dataset: Path, synthetic_rsna: Path,
                                                               tmp_path: Path) -> None:
    outside = sorted((synthetic_rsna / "stage_2_test").glob("*.dcm"))[0]
    _fails(_run(["show", str(outside), "--dataset", str(tiny_dataset), "--out", str(tmp_path / "x.png")]),
           str(outside), "not a file of the dataset")


def test_a_second_build_into_one_folder_is_refused_and_the_index_kept(synthetic_rsna: Path, tmp_path: Path) -> None:
    out = tmp_path / "d"
    build_series([synthetic_rsna / "stage_2_test"], out, options=SMALL)
    index = DatasetFolder(out).slices.read_bytes()
    with FolderLock(DatasetFolder(out).part_lock(0), "the first build"):  # a build of other files still running
        with pytest.raises(InputError, match="is in use by another ich3d job"):
            build_series([synthetic_rsna / "stage_2_train"], out, options=SMALL)
    assert DatasetFolder(out).slices.read_bytes() == index


def test_a_failed_command_leaves_no_empty_output_folder(tiny_dataset: Path, trained_run: Path, synthetic_rsna: Path,
                                                        tmp_path: Path) -> None:
    sample = synthetic_rsna / "stage_2_sample_submission.csv"  # the test split's images: not in tiny_dataset
    args = ["infer", "--run", str(trained_run), "--dataset", str(tiny_dataset), "--sample-submission", str(sample)]
    _fails(_run([*args, "--out", str(tmp_path / "new" / "out")]), "have no DICOM file")
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    _fails(_run([*args, "--out", str(tmp_path / "mine")]), "have no DICOM file")
    assert (tmp_path / "mine").is_dir()  # a folder the user made is never removed


def test_infer_of_a_dataset_refuses_series_choice_options(tiny_dataset: Path, trained_run: Path,
                                                         tmp_path: Path) -> None:
    result = _run(["infer", "--run", str(trained_run), "--dataset", str(tiny_dataset), "--series-uid", "NOPE",
                   "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--series-uid" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


#: Usage errors of every command ({dir}: an existing folder, {out}: a new one): each exits with code 2.
USAGE_ERRORS = {
    "synth-no-series": "synth --out {out} --n-series 0",
    "synth-huge-image": "synth --out {out} --image-size 100000",
    "build-no-workers": "build-series --dicom-dir {dir} --out {out} --workers 0",
    "build-part-beyond-parts": "build-series --dicom-dir {dir} --out {out} --part-id 3",
    "build-no-input": "build-series --out {out}",
    "train-fold-and-folds": "train --dataset {dir} --config cpu_small --out {out} --fold 0 --folds all",
    "train-bad-folds": "train --dataset {dir} --config cpu_small --out {out} --folds x",
    "train-bad-set": "train --dataset {dir} --config cpu_small --out {out} --set nokey",
    "train-no-config": "train --dataset {dir} --out {out}",
    "infer-no-input": "infer --run {dir} --out {out}",
    "infer-no-batch": "infer --run {dir} --dataset {dir} --out {out} --batch 0",
    "infer-threshold-above-1": "infer --run {dir} --dataset {dir} --out {out} --threshold 2",
    "infer-part-beyond-parts": "infer --run {dir} --dataset {dir} --out {out} --part-id 2",
    "merge-no-folder": "merge --out {out}",
    "score-no-labels": "score {dir}",
    "score-threshold-above-1": "score {dir} --exams {file} --threshold 3",
    "demo-no-series": "demo --out {out} --n-series 0",
    "report-negative-count": "report --predictions {dir} --max-series -1",
    "show-no-dataset": "show ID_x --out {out}",
    "explain-no-run": "explain ID_x --dataset {dir} --out {out}",
}


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_usage_errors_exit_2_in_every_command(case: str, tmp_path: Path) -> None:
    args = USAGE_ERRORS[case].format(dir=tmp_path, out=tmp_path / "out", file=__file__).split()
    result = _run(args)
    assert result.exit_code == 2, (args, result.output)
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_a_junk_only_folder_is_an_error_in_infer_as_in_build_series(trained_run: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(3):
        (junk / f"{i}.dcm").write_bytes(b"not a DICOM file " * (i + 1))
    fragment = "none of the 3 files under"
    _fails(_run(["build-series", "--dicom-dir", str(junk), "--out", str(tmp_path / "d"), "--workers", "1"]), fragment)
    _fails(_run(["infer", "--run", str(trained_run), "--dicom-dir", str(junk), "--out", str(tmp_path / "o"),
                 "--workers", "1"]), fragment, "build.json")
    assert not (tmp_path / "o" / "submission.csv").exists()


def test_merge_refuses_parts_of_different_datasets(tiny_dataset: Path, trained_run: Path, synthetic_rsna: Path,
                                                   tmp_path: Path) -> None:
    other = tmp_path / "other"
    build_series([synthetic_rsna / "stage_2_test"], other, options=SMALL)
    out = tmp_path / "parts"
    for part, dataset in enumerate([tiny_dataset, other]):
        result = _run(["-q", "infer", "--run", str(trained_run), "--dataset", str(dataset), "--out", str(out),
                       "--num-parts", "2", "--part-id", str(part)])
        assert result.exit_code == 0, result.output
    _fails(_run(["merge", "--out", str(out)]), "predict different datasets", str(other.resolve()))
    assert not (out / "submission.csv").exists()
    result = _run(["-q", "infer", "--run", str(trained_run), "--dataset", str(tiny_dataset), "--out", str(out),
                   "--num-parts", "2", "--part-id", "1"])
    assert result.exit_code == 0 and _run(["-q", "merge", "--out", str(out)]).exit_code == 0
    assert len(pd.read_csv(out / "submission.csv")) == 6 * len(pd.read_parquet(DatasetFolder(tiny_dataset).slices))
