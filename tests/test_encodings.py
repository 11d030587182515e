"""One folder mixing every encoding (uncompressed, JPEG 2000, RLE, JPEG-LS, enhanced multi-frame DICOM, NIfTI)
builds into one dataset with every image accounted for, and predicts what the same images stored
uncompressed predict (docs/design.md §12)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from conftest import series_key
from ich3d.app.cli import main
from ich3d.dataset.cache import load_series
from ich3d.dataset.index import load_index
from ich3d.inference.run import predict
from ich3d.layout import InferFolder
from ich3d.synth.formats import write_compressed, write_enhanced, write_nifti

pytestmark = pytest.mark.slow


def _series_files(dataset: Path) -> dict[str, list[Path]]:
    """Every series of a dataset (its unreadable files included): UID → files in slice order."""
    slices, _ = load_index(dataset)
    rows = slices[slices["series_id"].notna()].sort_values(["series_uid", "slice_index"])
    return {uid: [Path(p) for p in group["path"]] for uid, group in rows.groupby("series_uid", sort=True)}


def _copy(paths: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        shutil.copy(path, folder / path.name)


def _predictions(out: Path) -> pd.DataFrame:
    frame = pd.read_parquet(InferFolder(out).predictions)
    frame["series"] = frame["series_uid"].str.removeprefix("nifti/").str.removesuffix(".nii.gz")
    return frame.sort_values(["series", "slice_index"]).reset_index(drop=True)


def test_mixed_encodings_build_and_predict_like_uncompressed(tiny_dataset: Path, trained_run: Path,
                                                             tmp_path: Path) -> None:
    series = _series_files(tiny_dataset)
    slices, _ = load_index(tiny_dataset)
    clean = [uid for uid, paths in series.items()
             if (slices.loc[slices["series_uid"] == uid, "status"] == "ok").all()]
    plain = next(uid for uid in series if uid not in clean)  # a series with an unreadable file, copied as is
    assert len(clean) >= 5
    j2k, rle, jpeg_ls, enhanced, volume = clean[:5]
    mixed, reference = tmp_path / "mixed" / "dicom", tmp_path / "reference"
    for uid in (plain, *clean[:5]):
        _copy(series[uid], reference / uid)
    _copy(series[plain], mixed / "plain")
    write_compressed(series[j2k], mixed / "j2k", JPEG2000Lossless)
    write_compressed(series[rle], mixed / "rle", RLELossless)
    write_compressed(series[jpeg_ls], mixed / "jpeg_ls", JPEGLSLossless)
    (mixed / "enhanced").mkdir()
    write_enhanced(series[enhanced], mixed / "enhanced" / "series.dcm", syntax=JPEG2000Lossless,
                   frame_order=list(range(len(series[enhanced])))[::-1])
    (tmp_path / "mixed" / "nifti").mkdir()
    nii = write_nifti(series[volume], tmp_path / "mixed" / "nifti" / f"{volume}.nii.gz", orientation="RAS")

    predict([trained_run], tmp_path / "expected", dicom_dirs=[reference], progress=False)
    result = CliRunner().invoke(main, ["-q", "infer", "--run", str(trained_run), "--dicom-dir", str(mixed),
                                       "--nifti", str(nii), "--out", str(tmp_path / "got"), "--workers", "2"])
    assert result.exit_code == 0, result.output

    expected, got = _predictions(tmp_path / "expected"), _predictions(tmp_path / "got")
    assert len(got) == len(expected) == sum(len(series[uid]) for uid in (plain, *clean[:5]))  # every image
    assert got["series"].tolist() == expected["series"].tolist()
    assert got["predicted_by"].tolist() == expected["predicted_by"].tolist()
    assert set(got.loc[got["series"] == enhanced, "frame"]) == set(range(1, len(series[enhanced]) + 1))
    probabilities = [c for c in got.columns if c.startswith("p_")]
    dicom = got["series"] != volume
    np.testing.assert_allclose(got.loc[dicom, probabilities], expected.loc[dicom, probabilities], atol=1e-5)
    np.testing.assert_allclose(got.loc[~dicom, probabilities], expected.loc[~dicom, probabilities], atol=2e-3)

    built, want = InferFolder(tmp_path / "got").dataset, InferFolder(tmp_path / "expected").dataset
    for uid in (plain, j2k, rle, jpeg_ls, enhanced):
        np.testing.assert_array_equal(load_series(built, series_key(built, uid)),
                                      load_series(want, series_key(want, uid)))
    difference = (load_series(built, series_key(built, f"nifti/{volume}.nii.gz")).astype(int)
                  - load_series(want, series_key(want, volume)))
    assert np.abs(difference).max() <= 1
