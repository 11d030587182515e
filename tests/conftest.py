"""Shared fixtures: a small synthetic RSNA dataset, its built dataset folder and a tiny trained run
(session-scoped, so the whole suite pays once for generation, build and training), and a writer of
hand-made DICOM slices for the data-side unit tests.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

#: Overrides that make the cpu_small config train in seconds on 32-pixel slices.
TINY_TRAINING = [
    "folds=3", "num_workers=0", "data.image_size=32",
    "model.head.hidden=16", "model.head.num_layers=1",
    "stages.slice.epochs=2", "stages.slice.batch_size=16", "stages.slice.samples_per_epoch=96",
    "stages.sequence.epochs=3", "stages.sequence.batch_size=4",
]


@pytest.fixture(scope="session")
def synthetic_rsna(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RSNA layout, 6 training and 3 test series at 64 px (with the corrupt and junk files)."""
    from ich3d.synth.generate import make_synthetic_dataset
    from ich3d.synth.plan import SynthConfig

    out = tmp_path_factory.mktemp("rsna")
    make_synthetic_dataset(out, SynthConfig(n_train_series=6, n_test_series=3, image_size=64, seed=0))
    return out


@pytest.fixture(scope="session")
def tiny_dataset(synthetic_rsna: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The training split built at 32 px with labels."""
    from ich3d.dataset.build import BuildOptions, build_series

    out = tmp_path_factory.mktemp("dataset") / "train32"
    build_series([synthetic_rsna / "stage_2_train"], out, labels_csv=synthetic_rsna / "stage_2_train.csv",
                 options=BuildOptions(image_size=32, workers=2, progress=False))
    return out


@pytest.fixture(scope="session")
def trained_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder trained with :data:`TINY_TRAINING` (slice + sequence stages)."""
    from ich3d.training.fit import fit

    out = tmp_path_factory.mktemp("runs") / "tiny"
    fit(tiny_dataset, out, "cpu_small", TINY_TRAINING)
    return out


# --- hand-made DICOM slices (data-side unit tests: edge cases synth does not produce) ---

SLICE_DEFAULTS: dict[str, Any] = {
    "SOPClassUID": CTImageStorage,
    "Modality": "CT",
    "PatientID": "ID_patient",
    "StudyInstanceUID": "1.2.3.1",
    "SeriesInstanceUID": "1.2.3.1.1",
    "InstanceNumber": 1,
    "ImagePositionPatient": [-16.0, -16.0, 0.0],
    "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    "SamplesPerPixel": 1,
    "PhotometricInterpretation": "MONOCHROME2",
    "PixelSpacing": [0.5, 0.5],
    "BitsAllocated": 16,
    "BitsStored": 16,
    "HighBit": 15,
    "PixelRepresentation": 1,
    "RescaleIntercept": -1024.0,
    "RescaleSlope": 1.0,
    "WindowCenter": 40.0,
    "WindowWidth": 80.0,
}


def ramp(size: int = 32, dtype: type = np.int16) -> np.ndarray:
    """(size, size) stored values 1024 + 10 * (row + col): distinct, orientation-revealing."""
    return (1024 + np.add.outer(np.arange(size), np.arange(size)) * 10).astype(dtype)


def write_slice(path: Path, pixels: np.ndarray | None = None, syntax: str = ExplicitVRLittleEndian,
                preamble: bool = True, **attributes: Any) -> Path:
    """Writes one CT slice; ``attributes`` override header elements, or remove them (value None).

    Args:
        path: file to write (its stem becomes the SOPInstanceUID unless given).
        pixels: (rows, cols) stored values (default :func:`ramp`); ``PixelData=None`` writes none.
        syntax: transfer syntax UID; compressed ones are encoded by pydicom (e.g. RLE Lossless).
        preamble: False writes the bare data set (no preamble, no DICM, no file meta).
    """
    pixels = ramp() if pixels is None else pixels
    values = SLICE_DEFAULTS | {"SOPInstanceUID": path.stem, "Rows": pixels.shape[0], "Columns": pixels.shape[1]}
    values |= attributes
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RSNA-style IDs are not valid UIDs
        ds = Dataset()
        for keyword, value in values.items():
            if value is not None and keyword != "PixelData":
                setattr(ds, keyword, value)
        if values.get("PixelData", True) is not None:
            ds.PixelData = pixels.tobytes()
        if not preamble:
            ds.save_as(path, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True)
            return path
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if UID(syntax).is_compressed:
            ds.compress(syntax)
        else:
            ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="session")
def clinical_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PACS-style export of 4 studies at 64 px (topogram, 5 mm, 1.25 mm, bone, contrast, dose report...)."""
    from ich3d.synth.clinical import make_clinical_export
    from ich3d.synth.clinical_plan import ClinicalConfig

    out = tmp_path_factory.mktemp("clinical")
    make_clinical_export(out, ClinicalConfig(n_studies=4, image_size=64, seed=0), workers=2)
    return out


def clean_series(dataset: Path) -> dict[str, list[Path]]:
    """The series of a built dataset whose every slice is readable: series UID → its files in slice order."""
    from ich3d.dataset.index import load_index

    slices, series = load_index(dataset)
    clean = series.loc[series["n_ok"] == series["n_slices"], "series_uid"]
    rows = slices[slices["series_uid"].isin(clean)].sort_values(["series_uid", "slice_index"])
    return {uid: [Path(p) for p in group["path"]] for uid, group in rows.groupby("series_uid", sort=True)}


@pytest.fixture(scope="session")
def clinical_predictions(trained_run: Path, clinical_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ich3d infer`` of the clinical export: 4 studies, topograms, bone kernels, thin and contrast series and
    dose reports skipped, one series per study read (OUT/dataset holds its index and cache)."""
    from ich3d.inference.run import predict

    out = tmp_path_factory.mktemp("clinical_predictions") / "pred"
    predict([trained_run], out, dicom_dirs=[clinical_export / "export"], progress=False)
    return out
