"""The synthetic RSNA dataset: layout, CSV formats, labels vs pixels, quirks, HU ranges, determinism."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.config import disable_value_validation
from pydicom.errors import InvalidDicomError

from ich3d.constants import LABELS
from ich3d.dataset.pixels import to_hu
from ich3d.errors import ConfigError, InputError
from ich3d.synth import lesions, phantom
from ich3d.synth.generate import count_files, make_synthetic_dataset
from ich3d.synth.plan import SynthConfig

ID9 = re.compile(r"^ID_[0-9a-f]{9}$")


@pytest.fixture(autouse=True)
def _no_uid_warnings() -> Iterator[None]:
    with disable_value_validation():  # RSNA-style IDs ("ID_0a1b2c3d4") are not valid UIDs
        yield


def _read(path: Path, pixels: bool = True) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=not pixels)


def _hu(ds: pydicom.Dataset) -> np.ndarray:
    return to_hu(ds.pixel_array, float(ds.RescaleSlope), float(ds.RescaleIntercept), int(ds.BitsStored),
                 int(ds.PixelRepresentation))  # fmt: skip


def _long_csv(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "ID,Label"
    return [tuple(line.split(",")) for line in lines[1:]]  # type: ignore[misc]


def _labels(path: Path) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for key, value in _long_csv(path):
        image, label = key.rsplit("_", 1)
        table.setdefault(image, {})[label] = int(value)
    return table


@pytest.fixture(scope="module")
def summary(synthetic_rsna: Path) -> dict:
    return json.loads((synthetic_rsna / "synth.json").read_text())


@pytest.fixture(scope="module")
def headers(synthetic_rsna: Path) -> dict[str, dict[str, pydicom.Dataset]]:
    """Readable headers per split, by image id (the junk file is left out)."""
    out: dict[str, dict[str, pydicom.Dataset]] = {}
    for split in ("train", "test"):
        out[split] = {}
        for path in sorted((synthetic_rsna / f"stage_2_{split}").iterdir()):
            try:
                out[split][path.stem] = _read(path, pixels=False)
            except InvalidDicomError:
                continue
    return out


@pytest.mark.parametrize("change, message", [
    ({"n_train_series": 0}, "n_train_series"), ({"image_size": 16}, "image_size"),
    ({"min_slices": 30, "max_slices": 20}, "min_slices"), ({"positive_fraction": 1.5}, "positive_fraction"),
    ({"subtype_probability": (0.5,)}, "subtype_probability"), ({"seed": -1}, "seed"),
])  # fmt: skip
def test_config_is_validated(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SynthConfig(**change)


def test_layout_and_summary(synthetic_rsna: Path, summary: dict, headers: dict) -> None:
    names = {p.name for p in synthetic_rsna.iterdir()}
    assert names == {"stage_2_train", "stage_2_test", "stage_2_train.csv", "stage_2_sample_submission.csv",
                     "stage_2_test_labels.csv", "synth.json", "masks"}  # fmt: skip
    for split in ("train", "test"):
        files = sorted((synthetic_rsna / f"stage_2_{split}").iterdir())
        counts = summary["splits"][split]
        assert len(files) == counts["files"] == counts["images"] + 1
        assert all(ID9.match(f.stem) and f.suffix == ".dcm" for f in files)
        assert all(ds.SOPInstanceUID == image for image, ds in headers[split].items())
        assert counts["series"] == len({ds.SeriesInstanceUID for ds in headers[split].values()})
    assert summary["config"]["image_size"] == 64
    train = [s for s in summary["series"] if s["split"] == "train"]
    assert summary["splits"]["train"]["patients"] < len(train)  # some patients have two studies
    assert count_files(SynthConfig(**summary["config"])) == sum(c["files"] for c in summary["splits"].values())


def test_identifiers_and_geometry(headers: dict) -> None:
    by_series: dict[str, list[pydicom.Dataset]] = {}
    for ds in headers["train"].values():
        assert re.match(r"^ID_[0-9a-f]{8}$", ds.PatientID) and ds.Modality == "CT"
        assert all(re.match(r"^ID_[0-9a-f]{10}$", uid) for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID))
        assert "PatientName" not in ds and "PatientBirthDate" not in ds
        by_series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    for series in by_series.values():
        iop = np.array(series[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        positions = np.sort([np.array(ds.ImagePositionPatient, dtype=float) @ normal for ds in series])
        steps = np.diff(positions)
        assert np.allclose(steps, steps[0], atol=0.01) and 2.0 <= steps[0] <= 8.0
        assert {len(series[0].PixelSpacing), series[0].Rows == series[0].Columns} == {2, True}


def test_labels_csv_format(synthetic_rsna: Path, summary: dict, headers: dict) -> None:
    rows = _long_csv(synthetic_rsna / "stage_2_train.csv")
    keys = [key for key, _ in rows]
    for start in range(0, len(keys), len(LABELS)):  # six rows per image, LABELS order
        block = keys[start : start + len(LABELS)]
        image = block[0].rsplit("_", 1)[0]
        assert block == [f"{image}_{label}" for label in LABELS]
    assert any(n > 1 for n in Counter(rows).values())  # exact duplicates, as RSNA had
    train = _labels(synthetic_rsna / "stage_2_train.csv")
    assert set(train) == set(headers["train"])  # every image incl. the corrupt one; not the junk file
    assert summary["splits"]["train"]["corrupt_image"] in train
    for values in train.values():
        assert values["any"] == max(values[label] for label in LABELS[1:])
    test_truth = _labels(synthetic_rsna / "stage_2_test_labels.csv")
    junk = Path(summary["splits"]["test"]["junk_file"]).stem
    assert set(test_truth) == set(headers["test"]) | {junk}  # every requested file has a truth
    assert set(test_truth[junk].values()) == {0}
    sample = _long_csv(synthetic_rsna / "stage_2_sample_submission.csv")
    assert {value for _, value in sample} == {"0.5"}
    files = {p.stem for p in (synthetic_rsna / "stage_2_test").iterdir()}
    assert {key.rsplit("_", 1)[0] for key, _ in sample} == files
    positives = summary["splits"]["train"]["positive_slices"]
    assert positives == {label: sum(v[label] for v in train.values()) for label in LABELS}
    assert positives["any"] > 0


def test_quirks_present(synthetic_rsna: Path, summary: dict, headers: dict) -> None:
    series = {s["series_uid"]: s for s in summary["series"]}
    seen: Counter = Counter()
    for ds in (*headers["train"].values(), *headers["test"].values()):
        kind = series[ds.SeriesInstanceUID]
        seen["wrapped12"] += ds.BitsStored == 12 and ds.PixelRepresentation == 0 and float(ds.RescaleIntercept) > -100
        seen["signed"] += ds.PixelRepresentation == 1
        seen["unsigned"] += ds.PixelRepresentation == 0 and float(ds.RescaleIntercept) == -1024
        seen["multi_window"] += "WindowCenter" in ds and ds["WindowCenter"].VM == 2
        seen["no_window"] += "WindowCenter" not in ds
        seen["no_instance"] += "InstanceNumber" not in ds
        seen["implicit"] += ds.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
        seen["odd_size"] += ds.Rows != 64
        tilted = not np.allclose(np.array(ds.ImageOrientationPatient, dtype=float), [1, 0, 0, 0, 1, 0])
        seen["tilted"] += tilted
        assert tilted == (kind["tilt"] != "none")
    assert all(seen[k] > 0 for k in ("wrapped12", "signed", "unsigned", "multi_window", "no_window", "no_instance",
                                     "implicit", "odd_size", "tilted")), seen  # fmt: skip
    for split in ("train", "test"):
        corrupt = synthetic_rsna / f"stage_2_{split}" / f"{summary['splits'][split]['corrupt_image']}.dcm"
        assert _read(corrupt, pixels=False).SOPInstanceUID == corrupt.stem
        with pytest.raises(Exception):
            _read(corrupt).pixel_array  # noqa: B018
        with pytest.raises(InvalidDicomError):
            _read(synthetic_rsna / f"stage_2_{split}" / summary["splits"][split]["junk_file"])


def test_tilted_series_needs_projected_positions(headers: dict, summary: dict) -> None:
    tilted = [s["series_uid"] for s in summary["series"] if s["tilt"] != "none"]
    slices = [ds for ds in (*headers["train"].values(), *headers["test"].values()) if ds.SeriesInstanceUID == tilted[0]]
    ipp = np.array([ds.ImagePositionPatient for ds in slices], dtype=float)
    assert np.ptp(ipp[:, 1]) < 1e-3 and np.ptp(ipp[:, 2]) > 50  # the table moves along z only
    iop = np.array(slices[0].ImageOrientationPatient, dtype=float)
    assert 10 <= np.degrees(np.arccos(abs(np.cross(iop[:3], iop[3:])[2]))) <= 25


def test_hu_ranges_after_the_fix(synthetic_rsna: Path, summary: dict, headers: dict) -> None:
    wrapped = {s["series_uid"] for s in summary["series"] if s["pixels"] == "wrapped12"}
    corrupt = {summary["splits"][split]["corrupt_image"] for split in ("train", "test")}
    checked = 0
    for split in ("train", "test"):
        for image, header in list(headers[split].items())[::3]:
            if image in corrupt:
                continue
            ds = _read(synthetic_rsna / f"stage_2_{split}" / f"{image}.dcm")
            hu = _hu(ds)
            assert hu.min() >= -3024 and hu.max() <= 2000
            air = hu[:3, :3]
            assert np.all((air < -950) & (air >= -3024))
            if header.SeriesInstanceUID in wrapped:
                assert float(ds.RescaleIntercept) > -100 and ds.pixel_array.max() > 3000  # air stored wrapped
            checked += 1
    assert checked > 20


def test_brain_and_skull_hu(synthetic_rsna: Path, summary: dict, headers: dict) -> None:
    uid = next(s["series_uid"] for s in summary["series"] if s["split"] == "train" and s["image_size"] == 64)
    slices = [ds for ds in headers["train"].values() if ds.SeriesInstanceUID == uid]
    iop = np.array(slices[0].ImageOrientationPatient, dtype=float)
    slices.sort(key=lambda ds: np.array(ds.ImagePositionPatient, dtype=float) @ np.cross(iop[:3], iop[3:]))
    middle = _hu(_read(synthetic_rsna / "stage_2_train" / f"{slices[len(slices) // 2].SOPInstanceUID}.dcm"))
    soft = middle[(middle > -100) & (middle < 100)]
    assert 22 <= np.median(soft) <= 42  # mostly parenchyma
    assert 700 <= np.percentile(middle, 99.5) <= 1800  # skull
    assert np.count_nonzero((middle > -100) & (middle < 15)) > 5  # ventricles and sulci (CSF)


def _inside_skull(hu: np.ndarray) -> np.ndarray:
    bone = hu > 300
    inside = np.ones_like(bone)
    for axis in (0, 1):
        n = hu.shape[axis]
        first = np.where(bone.any(axis=axis, keepdims=True), np.argmax(bone, axis=axis, keepdims=True), n)
        last = n - 1 - np.argmax(np.flip(bone, axis=axis), axis=axis, keepdims=True)
        index = np.arange(n).reshape((-1, 1) if axis == 0 else (1, -1))
        inside &= (index > first) & (index < last)
    return inside


def test_positive_slices_show_blood(synthetic_rsna: Path, headers: dict) -> None:
    labels = _labels(synthetic_rsna / "stage_2_train.csv")
    blood = {True: [], False: []}
    for image, header in headers["train"].items():
        try:
            hu = _hu(_read(synthetic_rsna / "stage_2_train" / f"{image}.dcm"))
        except ValueError:
            continue  # the corrupt file
        blood[bool(labels[image]["any"])].append(np.count_nonzero((hu >= 55) & (hu <= 95) & _inside_skull(hu)))
    positive, negative = np.array(blood[True]), np.array(blood[False])
    assert positive.size > 5 and negative.size > 50
    auc = np.mean(positive[:, None] > negative[None, :]) + 0.5 * np.mean(positive[:, None] == negative[None, :])
    assert auc > 0.75 and positive.mean() > 3 * negative.mean()


def test_lesion_labels_follow_the_painted_pixels() -> None:
    """Noise-free: positive slices of a lesion are contiguous, and each shows blood (raised >= 7 HU)."""
    rng = np.random.default_rng(3)
    for label in lesions.SUBTYPES:
        head = phantom.place_head(phantom.sample_head(rng), phantom.Pose(np.zeros(3), np.eye(3)))
        lesion = lesions.sample_lesions(rng, head, [label])
        positive, raised = [], []
        for z in np.arange(-70.0, 95.0, 5.0):
            grid = phantom.SliceGrid(np.array([-127.0, -127.0, z]), np.eye(3)[0], np.eye(3)[1], 2.0, 128, 128)
            clean, none, no_mask = lesions.render_slice(head, [], grid)
            bloody, labels, mask = lesions.render_slice(head, lesion, grid)
            assert none == (0,) * len(LABELS) and labels[0] == labels[LABELS.index(label)] == max(labels)
            assert not no_mask.any() and set(np.unique(mask)) <= {0, lesions.MASK_BITS[label]}
            assert labels[0] == (np.count_nonzero(mask) >= 3)  # 2 mm pixels: 3 pixels make a slice positive
            positive.append(labels[0])
            raised.append(np.count_nonzero(bloody - clean >= 7.0))
        runs = np.flatnonzero(positive)
        assert runs.size >= 1 and np.all(np.diff(runs) == 1), (label, positive)
        assert min(raised[i] for i in runs) >= 3 and max(raised) == max(raised[i] for i in runs), label


def test_lesion_masks_match_the_labels_and_the_pixels(synthetic_rsna: Path, summary: dict, headers: dict) -> None:
    """Each series' mask volume: one slice per file in position order, in the file's pixel grid; a slice's
    subtype label is 1 exactly when its mask holds that subtype on at least MIN_LESION_AREA_MM2."""
    from ich3d.layout import SynthFolder
    from ich3d.synth.series import load_mask

    labels = {**_labels(synthetic_rsna / "stage_2_train.csv"), **_labels(synthetic_rsna / "stage_2_test_labels.csv")}
    positives = 0
    for entry in summary["series"]:
        mask, ids = load_mask(SynthFolder(synthetic_rsna).mask_file(entry["series_uid"]))
        split = headers[entry["split"]]
        slices = sorted((ds for ds in split.values() if ds.SeriesInstanceUID == entry["series_uid"]),
                        key=lambda ds: float(ds.ImagePositionPatient[2]))  # the table moves along z
        assert list(ids) == [ds.SOPInstanceUID for ds in slices]
        assert mask.dtype == np.uint8 and mask.shape == (len(slices), slices[0].Rows, slices[0].Columns)
        spacing = float(slices[0].PixelSpacing[0])
        least = max(3, int(np.ceil(lesions.MIN_LESION_AREA_MM2 / spacing**2)))
        for image, bits in zip(ids, mask):
            for name, bit in lesions.MASK_BITS.items():
                assert labels[image][name] == (np.count_nonzero(bits & bit) >= least), (image, name)
            positives += labels[image]["any"]
    assert positives > 0


def test_deterministic_and_parallel_identical(tmp_path: Path) -> None:
    config = SynthConfig(n_train_series=2, n_test_series=1, image_size=32, min_slices=8, max_slices=10, seed=4)
    digests = []
    for name, workers in (("a", 1), ("b", 1), ("c", 2)):
        advanced: list[int] = []
        make_synthetic_dataset(tmp_path / name, config, progress=advanced.append, workers=workers)
        assert sum(advanced) == count_files(config)
        digest = hashlib.sha256()
        for path in sorted((tmp_path / name).rglob("*")):
            if path.is_file():
                digest.update(path.name.encode() + path.read_bytes())
        digests.append(digest.hexdigest())
    assert digests[0] == digests[1] == digests[2]
    with pytest.raises(InputError, match="already holds files"):
        make_synthetic_dataset(tmp_path / "a", config)


def test_quirks_off_gives_clean_data(tmp_path: Path) -> None:
    config = SynthConfig(n_train_series=2, n_test_series=1, image_size=32, min_slices=8, max_slices=10, quirks=False)
    summary = make_synthetic_dataset(tmp_path, config)
    assert summary["splits"]["train"]["junk_file"] is None
    assert {s["pixels"] for s in summary["series"]} == {"signed"} and {s["tilt"] for s in summary["series"]} == {"none"}
    rows = _long_csv(tmp_path / "stage_2_train.csv")
    assert len(rows) == len(set(rows)) == len(LABELS) * summary["splits"]["train"]["images"]
