"""build-series on the files of a second generator (scripts/other_phantom.py), written apart from ich3d.synth
in another vendor's style: signed HU stored with intercept 0, real study and series UIDs, another phantom."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pydicom

from ich3d.constants import LABEL_COLUMNS, LABELS, Status
from ich3d.dataset.build import BuildOptions, build_series
from ich3d.dataset.cache import load_series
from ich3d.dataset.index import load_index

SIZE = 48
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "other_phantom.py"


def other_phantom() -> ModuleType:
    spec = importlib.util.spec_from_file_location("other_phantom", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_second_generator_is_read_whole_with_its_labels_and_hounsfield_units(tmp_path: Path) -> None:
    data = tmp_path / "other"
    summary = other_phantom().write_dataset(data, n_train=3, n_test=1, image_size=SIZE, seed=5, workers=1)
    dataset = tmp_path / "dataset"
    build_series([data / "stage_2_train"], dataset, data / "stage_2_train.csv",
                 BuildOptions(image_size=SIZE, crop="none", workers=1, progress=False))
    slices, series = load_index(dataset)
    expected = summary["splits"]["train"]
    assert len(slices) == expected["images"] and (slices["status"] == Status.OK).all()
    assert len(series) == 3 and slices["patient_id"].nunique() == 3
    positives = slices[list(LABEL_COLUMNS)].sum().to_numpy()
    assert positives.tolist() == [expected["positive_slices"][label] for label in LABELS]
    for key, rows in slices.groupby("series_id"):
        rows = rows.sort_values("slice_index")
        assert rows["ipp_z"].is_monotonic_increasing or rows["ipp_z"].is_monotonic_decreasing
        files = [data / "stage_2_train" / Path(path).name for path in rows["path"]]
        written = np.stack([pydicom.dcmread(file).pixel_array for file in files])
        np.testing.assert_array_equal(load_series(dataset, key, mmap=False), written)  # intercept 0: HU as stored
