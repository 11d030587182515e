"""build_series / load_index on the synthetic RSNA dataset: statuses, labels, cache, resume, parts, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import ich3d.dataset.build
import ich3d.dataset.cache
import ich3d.dataset.index
from ich3d.constants import LABEL_COLUMNS, MISSING_HU, Status
from ich3d.dataset.build import BuildOptions, build_series
from ich3d.dataset.cache import load_series
from ich3d.dataset.index import load_index, part_series
from ich3d.errors import InputError
from ich3d.layout import DatasetFolder
from ich3d.shard import Shard

SIZE = 32
CONTRACT_COLUMNS = ["image_id", "sop_uid", "path", "source", "patient_id", "study_uid", "series_uid",
                    "instance_number", "slice_index", "position", "ipp_x", "ipp_y", "ipp_z", "rows", "cols",
                    "pixel_spacing", "bits_stored", "pixel_representation", "rescale_intercept", "rescale_slope",
                    "window_center", "window_width", "transfer_syntax", "status", "error", *LABEL_COLUMNS]


def build(synthetic_rsna: Path, out: Path, labels_csv: Path | None = None, **kwargs: Any) -> dict:
    options = BuildOptions(**({"image_size": SIZE, "workers": 1, "progress": False} | kwargs))
    return build_series([synthetic_rsna / "stage_2_train"], out, labels_csv or synthetic_rsna / "stage_2_train.csv",
                        options)


def cache_bytes(dataset: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((dataset / "cache").glob("*.npy"))}


@pytest.fixture(scope="module")
def built(synthetic_rsna: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("built") / "dataset"
    return out, build(synthetic_rsna, out, workers=2)


def test_index_schema_statuses_and_labels(built: tuple[Path, dict], synthetic_rsna: Path) -> None:
    out, summary = built
    slices, series = load_index(out)
    synth = json.loads((synthetic_rsna / "synth.json").read_text())["splits"]["train"]
    assert set(CONTRACT_COLUMNS) <= set(slices.columns)
    assert len(slices) == synth["files"] == summary["n_files"]
    status = slices.set_index("image_id")["status"]
    assert status[synth["corrupt_image"]] == Status.CORRUPT
    assert status[Path(synth["junk_file"]).stem] == Status.NOT_DICOM
    assert summary["counts"] == {"corrupt": 1, "not_dicom": 1, "ok": synth["files"] - 2} and summary["n_skipped"] == 2
    assert len(series) == summary["n_series"] == synth["series"]
    assert summary["n_labeled"] == synth["images"] and summary["labels"]["n_exact_duplicates"] > 0
    assert (slices[list(LABEL_COLUMNS)].dtypes == np.float32).all()
    assert json.loads(DatasetFolder(out).build_summary().read_text())["counts"] == summary["counts"]


def test_rows_sorted_by_series_then_slice_and_orphans_last(built: tuple[Path, dict]) -> None:
    slices, series = load_index(built[0])
    in_series = slices["slice_index"].notna()
    assert in_series.iloc[: in_series.sum()].all() and slices.loc[~in_series, "series_uid"].isna().all()
    ordered = slices[in_series]
    assert ordered["series_uid"].is_monotonic_increasing
    for uid, rows in ordered.groupby("series_uid"):
        assert rows["slice_index"].tolist() == list(range(len(rows)))
        assert rows["position"].is_monotonic_increasing
    assert series["n_slices"].sum() == in_series.sum()


def test_cache_holds_every_slice_and_missing_ones_are_marked(built: tuple[Path, dict]) -> None:
    out = built[0]
    slices, series = load_index(out)
    for row in series.itertuples():
        volume = load_series(out, row.series_uid)
        assert volume.shape == (row.n_slices, SIZE, SIZE) and volume.dtype == np.int16
        assert (out / row.cache_file).is_file()
    corrupt = slices[slices["status"] == Status.CORRUPT].iloc[0]
    volume = load_series(out, corrupt["series_uid"])
    assert (volume[corrupt["slice_index"]] == MISSING_HU).all()
    assert (volume[(corrupt["slice_index"] + 1) % len(volume)] > -900).any()  # a real neighbour: head in HU


def test_index_is_reused_and_an_unchanged_rebuild_does_nothing(built: tuple[Path, dict], synthetic_rsna: Path,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    shutil.copytree(built[0], out)
    before = cache_bytes(out)
    summary = build(synthetic_rsna, out)
    assert summary["index_reused"] and summary["pixel_pass"]["series_built"] == 0
    assert cache_bytes(out) == before


def test_resume_rebuilds_only_the_missing_series(built: tuple[Path, dict], synthetic_rsna: Path,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    shutil.copytree(built[0], out)
    before = cache_bytes(out)
    victim = sorted(before)[1]
    (out / "cache" / victim).unlink()
    summary = build(synthetic_rsna, out)
    assert summary["pixel_pass"]["series_built"] == 1 and cache_bytes(out) == before


def test_resume_after_a_killed_pixel_pass(built: tuple[Path, dict], synthetic_rsna: Path, tmp_path: Path) -> None:
    """A kill leaves: some series journaled, one cache file written but not journaled, a temp file, a cut line."""
    out = tmp_path / "dataset"
    shutil.copytree(built[0], out)
    before = cache_bytes(out)
    journal = DatasetFolder(out).journal(0)
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:2]) + "\n" + lines[2][:15])
    unjournaled = [json.loads(line)["series_uid"] + ".npy" for line in lines[2:]]
    for name in unjournaled[1:]:
        (out / "cache" / name).unlink()
    (out / "cache" / f".{unjournaled[0]}.x1y2.tmp").write_bytes(b"half")
    summary = build(synthetic_rsna, out, workers=2)
    assert summary["pixel_pass"]["series_built"] == len(lines) - 2
    assert cache_bytes(out) == before
    assert build(synthetic_rsna, out)["pixel_pass"]["series_built"] == 0  # the journal healed


def test_two_parts_give_the_same_cache_as_one(built: tuple[Path, dict], synthetic_rsna: Path, tmp_path: Path) -> None:
    out = tmp_path / "parts"
    first = build(synthetic_rsna, out, index_only=True)
    assert first["pixel_pass"] == {} and not (out / "cache").exists()
    summaries = [build(synthetic_rsna, out, shard=Shard(2, i)) for i in (0, 1)]
    assert all(s["index_reused"] for s in summaries)
    _, series = load_index(out)
    assert [s["pixel_pass"]["series_in_part"] for s in summaries] == [len(part_series(series, Shard(2, i))) for i in (0, 1)]
    assert cache_bytes(out) == cache_bytes(built[0])
    assert (out / "build-part-1.json").is_file()


def test_pixel_failures_are_merged_into_the_index(synthetic_rsna: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "dataset"
    build(synthetic_rsna, out, index_only=True)
    slices, _ = load_index(out)
    victim = slices[slices["status"] == Status.OK].iloc[3]
    real = ich3d.dataset.cache.read_pixels

    def flaky(slice_: ich3d.dataset.cache.CacheSlice, scratch: bytearray | None = None) -> np.ndarray:
        if slice_.path == victim["path"]:
            raise ValueError("decoder exploded")
        return real(slice_, scratch)

    monkeypatch.setattr(ich3d.dataset.cache, "read_pixels", flaky)
    summary = build(synthetic_rsna, out)
    assert summary["pixel_pass"]["pixel_failures"] == {"corrupt": 1} and summary["n_skipped"] == 3
    merged, series = load_index(out)
    row = merged.set_index("path").loc[victim["path"]]
    n_ok = series.set_index("series_uid").loc[victim["series_uid"], "n_ok"]
    assert n_ok == (merged[merged["series_uid"] == victim["series_uid"]]["status"] == Status.OK).sum()
    assert row["status"] == Status.CORRUPT and "decoder exploded" in row["error"]
    assert (load_series(out, victim["series_uid"])[victim["slice_index"]] == MISSING_HU).all()
    failures = pd.read_parquet(DatasetFolder(out).failures(0))
    assert failures[["image_id", "status"]].values.tolist() == [[victim["image_id"], "corrupt"]]


def test_new_labels_rebuild_the_index_but_keep_headers_and_cache(
        built: tuple[Path, dict], synthetic_rsna: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ich3d.dataset.index, "header_pass", lambda *args: pytest.fail("headers read again"))
    out = tmp_path / "dataset"
    shutil.copytree(built[0], out)
    labels = tmp_path / "labels.csv"
    rows = pd.read_csv(synthetic_rsna / "stage_2_train.csv")
    rows.iloc[: len(rows) // 2].to_csv(labels, index=False)
    summary = build(synthetic_rsna, out, labels_csv=labels)
    assert not summary["index_reused"] and summary["pixel_pass"]["series_built"] == 0
    assert 0 < summary["n_labeled"] < built[1]["n_labeled"]
    rebuilt, _ = load_index(out)
    original, _ = load_index(built[0])
    same = ["image_id", "series_uid", "slice_index", "position", "status", "pixel_offset"]
    pd.testing.assert_frame_equal(rebuilt[same], original[same])


def test_input_errors(tmp_path: Path, synthetic_rsna: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="no image files found"):
        build_series([empty], tmp_path / "out", options=BuildOptions(progress=False))
    with pytest.raises(InputError, match="not a folder"):
        build_series([tmp_path / "nowhere"], tmp_path / "out", options=BuildOptions(progress=False))
    bad = tmp_path / "bad.csv"
    bad.write_text("Image,Label\nx,1\n")
    with pytest.raises(InputError, match="ID,Label"):
        build(synthetic_rsna, tmp_path / "out", labels_csv=bad)
    with pytest.raises(InputError, match="part-id"):
        build(synthetic_rsna, tmp_path / "out", shard=Shard(2, 2))


def test_load_index_errors(tmp_path: Path, built: tuple[Path, dict]) -> None:
    with pytest.raises(InputError, match="not a dataset folder"):
        load_index(tmp_path)
    out = tmp_path / "dataset"
    shutil.copytree(built[0], out)
    table = pq.read_table(DatasetFolder(out).slices)
    meta = json.loads(table.schema.metadata[b"ich3d"]) | {"version": 0}
    pq.write_table(table.replace_schema_metadata({b"ich3d": json.dumps(meta).encode()}), DatasetFolder(out).slices)
    with pytest.raises(InputError, match="version 0"):
        load_index(out)


def test_a_folder_of_junk_gives_an_index_without_series(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.dcm").write_bytes(b"not dicom")
    (junk / "b").write_bytes(b"\0" * 300)
    summary = build_series([junk], tmp_path / "out", options=BuildOptions(workers=1, progress=False))
    assert summary["counts"] == {"not_dicom": 2} and summary["n_series"] == 0 and summary["n_skipped"] == 2
    slices, series = load_index(tmp_path / "out")
    assert len(slices) == 2 and series.empty and slices["slice_index"].isna().all()
