"""Fuzzing: a few hundred DICOM files mutated at random (seeded) go through build-series and infer.

Bytes flipped, files truncated, elements deleted, value representations and lengths corrupted: no
crash, every file in the per-image output exactly once (predicted, or recorded with a reason), and
the intact series' predictions unchanged by the broken files beside them.
"""

from __future__ import annotations

import io
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from ich3d.inference.run import predict
from ich3d.layout import InferFolder

N_MUTANTS = 240
#: Elements a mutation may delete (identity, geometry, pixel layout, rescale, the pixels).
DELETABLE = ["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "ImagePositionPatient",
             "ImageOrientationPatient", "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation",
             "RescaleIntercept", "RescaleSlope", "PixelData", "SamplesPerPixel", "PixelSpacing"]
VRS = [b"US", b"SS", b"UL", b"DS", b"IS", b"OB", b"SQ", b"UN", b"XX", b"\x00\x00"]


def _flip_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for position in rng.integers(0, len(out), size=int(rng.integers(1, 12))):
        out[position] = int(rng.integers(0, 256))
    return bytes(out)


def _truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[:int(rng.integers(0, len(data)))]


def _element_offsets(data: bytes) -> list[int]:
    """Offsets of explicit-VR element headers (a letter pair after a 4-byte tag), in the header part."""
    limit = min(len(data), 4096)
    return [i for i in range(132, limit - 6) if data[i + 4:i + 6].isalpha() and data[i + 4:i + 6].isupper()]


def _wrong_vr(data: bytes, rng: np.random.Generator) -> bytes:
    offsets = _element_offsets(data)
    if not offsets:
        return _flip_bytes(data, rng)
    at = int(rng.choice(offsets))
    return data[:at + 4] + VRS[int(rng.integers(len(VRS)))] + data[at + 6:]


def _wrong_length(data: bytes, rng: np.random.Generator) -> bytes:
    offsets = _element_offsets(data)
    if not offsets:
        return _truncate(data, rng)
    at = int(rng.choice(offsets)) + 6
    length = int(rng.choice([0, 1, 3, 0xFFFF, int(rng.integers(0, 1 << 16))]))
    return data[:at] + length.to_bytes(2, "little") + data[at + 2:]


def _delete_element(path: Path, rng: np.random.Generator) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(path)
        for keyword in rng.choice(DELETABLE, size=int(rng.integers(1, 3)), replace=False):
            if keyword in dataset:
                delattr(dataset, keyword)
        buffer = io.BytesIO()
        dataset.save_as(buffer)
    return buffer.getvalue()


def _mutants(sources: list[Path], out: Path, seed: int = 7) -> list[Path]:
    """``N_MUTANTS`` mutated copies of ``sources`` in ``out`` (deterministic for ``seed``)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    written = []
    for i in range(N_MUTANTS):
        source = sources[int(rng.integers(len(sources)))]
        kind = int(rng.integers(5))
        if kind == 4:
            data = _delete_element(source, rng)
        else:
            data = (_flip_bytes, _truncate, _wrong_vr, _wrong_length)[kind](source.read_bytes(), rng)
        path = out / f"mutant{i:04d}.dcm"
        path.write_bytes(data)
        written.append(path)
    return written


@pytest.mark.slow
def test_mutated_files_never_crash_and_every_file_is_accounted_for(synthetic_rsna: Path, trained_run: Path,
                                                                    tmp_path: Path) -> None:
    files = sorted((synthetic_rsna / "stage_2_test").glob("*.dcm"))
    by_series: dict[str, list[Path]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            try:
                by_series.setdefault(str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID), []).append(path)
            except Exception:  # noqa: BLE001 - the junk file of the split
                continue
    (good_uid, good_files), (_, base_files) = sorted(by_series.items())[:2]
    good = tmp_path / "good"
    good.mkdir()
    for path in good_files:
        shutil.copy(path, good / path.name)
    mutants = _mutants(base_files, tmp_path / "fuzz")

    alone = InferFolder(tmp_path / "alone")
    predict([trained_run], alone.root, dicom_dirs=[good], progress=False)
    mixed = InferFolder(tmp_path / "mixed")
    summary = predict([trained_run], mixed.root, dicom_dirs=[good, tmp_path / "fuzz"], progress=False)

    rows = pd.read_parquet(mixed.predictions)
    assert len(rows) == len(good_files) + len(mutants)  # every file once
    assert rows["image_id"].is_unique and rows["relative_path"].is_unique
    assert set(rows["predicted_by"]) <= {"model", "context", "prior", "skipped"}
    assert summary["images"] == (rows["predicted_by"] != "skipped").sum()
    broken = rows[rows["status"] != "ok"]
    assert len(broken) > N_MUTANTS // 4 and (broken["error"].str.len() > 0).all()
    skipped = rows[rows["predicted_by"] == "skipped"]
    assert (skipped["reason"].str.len() > 0).all()  # recorded with a reason
    probabilities = [c for c in rows if c.startswith("p_")]
    assert np.isfinite(rows.loc[rows["predicted_by"] != "skipped", probabilities].to_numpy()).all()
    reference = pd.read_parquet(alone.predictions).set_index("image_id")[probabilities]
    together = rows.set_index("image_id").loc[reference.index, probabilities]
    np.testing.assert_allclose(together.to_numpy(), reference.to_numpy(), atol=1e-6)
    assert good_uid in set(rows["series_uid"].dropna())
