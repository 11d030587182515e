"""Synthetic head-CT dataset in the RSNA 2019 layout: DICOM series of a 3-D phantom with hemorrhages, labels
and the RSNA quirks (12-bit intercept wrap, gantry tilt, pixel representations, window tags, odd sizes,
instance numbers, transfer syntaxes, a corrupt and a non-DICOM file per split, duplicate label rows).

Layout under OUT: stage_2_train/ and stage_2_test/ (ID_<9 hex>.dcm), stage_2_train.csv,
stage_2_sample_submission.csv (every test file, incl. the corrupt and the junk one), stage_2_test_labels.csv
(ground truth of every test file: the corrupt image, and the junk file as all-negative) and
synth.json (settings, counts, which series carry which quirk). Output is byte-identical for the same
config; each series draws from its own generator seeded with (seed, split, series index).
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from pydicom import dcmwrite
from pydicom.config import disable_value_validation
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ich3d import __version__
from ich3d.synth import lesions, phantom
from ich3d.constants import LABELS
from ich3d.errors import ConfigError, InputError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
#: Share of the series of a split given each quirk (at least one series each when quirks are on).
QUIRK_SHARES: dict[str, dict[str, float]] = {
    "pixels": {"unsigned": 0.15, "unsigned12": 0.07, "wrapped12": 0.08},  # default "signed"
    "window": {"multi": 0.25, "absent": 0.1},  # default "single"
    "tilt": {"tilted": 0.15},
    "size": {"odd": 0.05},
    "instances": {"shuffled": 0.05, "missing": 0.03},  # default "ordered"
    "syntax": {"implicit": 0.2},  # default "explicit"
}
_DEFAULTS = {"pixels": "signed", "window": "single", "tilt": "none", "size": "standard",
             "instances": "ordered", "syntax": "explicit"}  # fmt: skip
#: Slice spacings (mm) and their shares; a series has about 155 mm / spacing + 1 slices.
_SPACINGS = {5.0: 0.7, 4.0: 0.1, 3.0: 0.1, 2.5: 0.05, 6.0: 0.05}
_WINDOWS = ((40, 80), (35, 135), (40, 150), (30, 80), (36, 100))


@dataclass(frozen=True)
class SynthConfig:
    """Settings of a synthetic dataset.

    Attributes:
        n_train_series, n_test_series: series per split (one study each; some patients have two studies).
        image_size: rows == columns of most series (a few "odd" series are 1.23x or 1.5x larger).
        min_slices, max_slices: range of slices per series (most have 29-35, 5 mm apart; thinner series more).
        seed: everything is drawn from it.
        positive_fraction: share of the series of each split with hemorrhage (rounded; exact, so small
            datasets have positives too).
        subtype_probability: chance of each subtype in a positive series, in LABELS[1:] order
            (epidural, intraparenchymal, intraventricular, subarachnoid, subdural).
        quirks: write the RSNA quirks (QUIRK_SHARES, corrupt and junk files, duplicate label rows).
    """

    n_train_series: int = 40
    n_test_series: int = 10
    image_size: int = 512
    min_slices: int = 20
    max_slices: int = 60
    seed: int = 0
    positive_fraction: float = 0.4
    subtype_probability: tuple[float, ...] = (0.04, 0.6, 0.45, 0.5, 0.38)
    quirks: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.n_train_series >= 1 and self.n_test_series >= 1, "n_train_series and n_test_series must be >= 1"),
            (32 <= self.image_size <= 1024, "image_size must be between 32 and 1024"),
            (8 <= self.min_slices <= self.max_slices <= 300, "need 8 <= min_slices <= max_slices <= 300"),
            (self.seed >= 0, "seed must be >= 0"),
            (0.0 <= self.positive_fraction <= 1.0, "positive_fraction must be in [0, 1]"),
            (len(self.subtype_probability) == len(LABELS) - 1, f"subtype_probability needs {len(LABELS) - 1} values"),
            (all(0.0 <= p <= 1.0 for p in self.subtype_probability), "subtype_probability values must be in [0, 1]"),
            (sum(self.subtype_probability) > 0, "subtype_probability must not be all zero"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"Invalid synthetic-data setting: {message} (got {self}).")


@dataclass(frozen=True)
class SeriesPlan:
    """What one series will be, decided before any pixel is drawn (see `plan_dataset`)."""

    split: str
    index: int  # within its split
    patient: int  # patient number, unique over both splits
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uids: tuple[str, ...]
    spacing: float  # nominal slice spacing, mm
    positive: bool  # has hemorrhage
    quirks: dict[str, str]  # QUIRK_SHARES key -> value


def make_synthetic_dataset(out: Path, config: SynthConfig, progress: Callable[[int], None] | None = None,
                           workers: int = 1) -> dict:  # fmt: skip
    """Write a synthetic RSNA-layout dataset under `out` (see the module docstring) and return its summary.

    Args:
        out: output folder; created if missing, must not already hold stage_2_train/ or stage_2_test/ files.
        config: the settings.
        progress: called with the number of files just written, after each series and extra file
            (`count_files(config)` files in all).
        workers: processes writing series in parallel (the output does not depend on it).

    Returns:
        The summary also written to out/synth.json: config, counts per split (files, images, series,
        studies, patients, positive slices per label) and which series carry which quirk.

    Raises:
        InputError: `out` is a file or already holds a dataset.
        ConfigError: workers < 1.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1 (got {workers}).")
    out = Path(out)
    for split in SPLITS:
        folder = out / f"stage_2_{split}"
        if out.is_file() or (folder.is_dir() and any(folder.iterdir())):
            raise InputError(f"{folder} already holds files: choose an empty --out folder or delete it first.")
        folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    plans, extras = plan_dataset(config)
    labels: dict[str, dict[str, tuple[int, ...]]] = {split: {} for split in SPLITS}
    infos = []
    for plan, (series_labels, info) in zip(plans, _write_all_series(out, plans, config, progress, workers)):
        labels[plan.split].update(series_labels)
        infos.append(info)
    for split, (corrupt, junk) in extras.items():
        _truncate_pixels(out / f"stage_2_{split}" / f"{corrupt}.dcm")
        junk_rng = np.random.default_rng([config.seed, SPLITS.index(split), 99])
        (out / f"stage_2_{split}" / f"{junk}.dcm").write_bytes(b"not a DICOM file\n" + junk_rng.bytes(2048))
        if progress is not None:
            progress(1)  # the junk file (the corrupt one is a slice of a series)
    summary = _summary(config, plans, infos, labels, extras)
    _write_csvs(out, config, labels, extras)
    (out / "synth.json").write_text(json.dumps(summary, indent=1) + "\n")
    n_files = sum(s["files"] for s in summary["splits"].values())
    log.info("wrote %d files in %.1f s to %s", n_files, time.perf_counter() - start, out)
    return summary


def count_files(config: SynthConfig) -> int:
    """How many files `make_synthetic_dataset` writes for `config` (for progress bars)."""
    plans, extras = plan_dataset(config)
    return sum(len(plan.sop_uids) for plan in plans) + len(extras)


def _write_all_series(out: Path, plans: list[SeriesPlan], config: SynthConfig,
                      progress: Callable[[int], None] | None, workers: int) -> list[tuple[dict, dict]]:  # fmt: skip
    """write_series for every plan, in `workers` processes; results in plan order."""
    report = progress or (lambda n: None)
    folders = [out / f"stage_2_{plan.split}" for plan in plans]
    if workers == 1:
        results = []
        for folder, plan in zip(folders, plans):
            results.append(write_series(folder, plan, config))
            report(len(plan.sop_uids))
        return results
    with ProcessPoolExecutor(min(workers, len(plans))) as pool:
        futures = [pool.submit(write_series, folder, plan, config) for folder, plan in zip(folders, plans)]
        for future, plan in zip(futures, plans):
            future.result()
            report(len(plan.sop_uids))
        return [future.result() for future in futures]


def plan_dataset(config: SynthConfig) -> tuple[list[SeriesPlan], dict[str, tuple[str, str]]]:
    """Decide IDs, patients, slice counts and quirks of every series, and the corrupt and junk files.

    Returns:
        The series plans (train then test) and, per split when quirks are on, (corrupt image id, junk id).
    """
    rng = np.random.default_rng([config.seed, 1000])
    used: set[str] = set()
    plans: list[SeriesPlan] = []
    extras: dict[str, tuple[str, str]] = {}
    patient = -1
    for split, n in zip(SPLITS, (config.n_train_series, config.n_test_series)):
        quirks = {key: _assign(rng, n, shares, _DEFAULTS[key], config.quirks) for key, shares in QUIRK_SHARES.items()}
        positive = rng.permutation(np.arange(n) < round(config.positive_fraction * n))
        follow_up = rng.random(n) < 0.12
        if n >= 3 and not follow_up[1:].any():
            follow_up[int(rng.integers(1, n))] = True
        for i in range(n):
            if i == 0 or not follow_up[i] or follow_up[i - 1]:
                patient, patient_id = patient + 1, _new_id(rng, used, 8)
            spacing = float(rng.choice(list(_SPACINGS), p=list(_SPACINGS.values())))
            n_slices = int(np.clip(round(rng.uniform(140, 170) / spacing) + 1, config.min_slices, config.max_slices))
            sops = tuple(_new_id(rng, used, 9) for _ in range(n_slices))
            study, series = _new_id(rng, used, 10), _new_id(rng, used, 10)
            q = {key: values[i] for key, values in quirks.items()}
            plans.append(SeriesPlan(split, i, patient, patient_id, study, series, sops, spacing, bool(positive[i]), q))
        if config.quirks:
            first = len(plans) - n
            victim = plans[first + int(rng.integers(n))]
            extras[split] = (victim.sop_uids[len(victim.sop_uids) // 2], _new_id(rng, used, 9))
    return plans, extras


def _assign(rng: np.random.Generator, n: int, shares: dict[str, float], default: str, on: bool) -> list[str]:
    """Quirk values for n series: round(share * n), at least 1, of each value (when on), shuffled."""
    values: list[str] = []
    for value, share in shares.items():
        values += [value] * (max(1, round(share * n)) if on else 0)
    values = (values[:n] + [default] * n)[:n]
    return [str(v) for v in rng.permutation(np.array(values, dtype=object))]


def _new_id(rng: np.random.Generator, used: set[str], digits: int) -> str:
    """A fresh RSNA-style identifier "ID_<digits lowercase hex>"."""
    while True:
        value = "ID_" + "".join(f"{x:x}" for x in rng.integers(0, 16, size=digits))
        if value not in used:
            used.add(value)
            return value


def write_series(folder: Path, plan: SeriesPlan, config: SynthConfig) -> tuple[dict[str, tuple[int, ...]], dict]:
    """Render and write the DICOM files of one series.

    Returns:
        {image id: its six labels (0/1) in LABELS order} and a description of the acquisition.
    """
    rng = np.random.default_rng([config.seed, SPLITS.index(plan.split), plan.index])
    params = phantom.sample_head(np.random.default_rng([config.seed, 2000, plan.patient]))
    head = phantom.place_head(params, _pose(rng))
    hemorrhages = lesions.sample_lesions(rng, head, _subtypes(rng, config) if plan.positive else [])
    grids, info = _slice_grids(rng, head, plan, config)
    numbers = _instance_numbers(rng, plan.quirks["instances"], len(grids))
    encode = _encoder(rng, plan.quirks["pixels"], info["image_size"])
    sigma, labels = rng.uniform(3.0, 6.0), {}
    with disable_value_validation():
        template, syntax = _template(rng, plan, grids[0])
        for grid, sop, number in zip(grids, plan.sop_uids, numbers):
            hu, labels[sop] = lesions.render_slice(head, hemorrhages, grid)
            hu += _noise(rng, info["image_size"], sigma)
            _write_slice(folder / f"{sop}.dcm", template, syntax, sop, number, grid.origin, encode(hu))
    return labels, info


def _subtypes(rng: np.random.Generator, config: SynthConfig) -> list[str]:
    """The hemorrhage subtypes of a positive series (at least one)."""
    probs = np.asarray(config.subtype_probability)
    chosen = [name for name, p in zip(LABELS[1:], probs) if rng.random() < p]
    return chosen or [str(rng.choice(LABELS[1:], p=probs / probs.sum()))]


def _pose(rng: np.random.Generator) -> phantom.Pose:
    """Where the head lies on the table: offset, scanner z, yaw, flexion and roll."""
    center = np.array([rng.uniform(-12, 12), rng.uniform(-15, 15), rng.uniform(-200, 100)])
    return phantom.Pose(center, phantom.rotation(rng.uniform(-10, 10), rng.uniform(-12, 12), rng.uniform(-3, 3)))


def _slice_grids(rng: np.random.Generator, head: phantom.Head, plan: SeriesPlan,
                 config: SynthConfig) -> tuple[list[phantom.SliceGrid], dict]:  # fmt: skip
    """Image planes from below the posterior fossa to the vertex, with the table moving along z.

    A gantry-tilted series has its planes tilted about x; its ImagePositionPatient moves along z only
    (constant y), as on a scanner, so positions must be projected on the slice normal to order them.
    """
    size = config.image_size
    if plan.quirks["size"] == "odd":
        size = int(round(size * rng.choice([1.23, 1.5])))
    pixel = 2.0 * max(head.params.axes[:2]) * rng.uniform(1.2, 1.4) / size
    tilt = rng.uniform(10, 25) if plan.quirks["tilt"] == "tilted" else 0.0
    c, s = np.cos(np.radians(tilt)), np.sin(np.radians(tilt))
    row, col, normal = np.array([1.0, 0, 0]), np.array([0, c, -s]), np.array([0, s, c])
    ax = head.cerebrum.axes
    low = head.pose.point(head.center + [0, 0.42 * ax[1], -0.74 * ax[2]]) @ normal - rng.uniform(2, 8)
    high = head.pose.center @ normal + head.scalp.extent(normal) - rng.uniform(0, 6)
    n = len(plan.sop_uids)
    ideal = (high - low) / (n - 1)  # a series far too long or short for its head gets another spacing
    step = plan.spacing if 0.9 <= plan.spacing / ideal <= 1.1 else round(ideal * 4) / 4
    first = low + (high - low - step * (n - 1)) * rng.uniform(0.6, 0.9)  # spare slices mostly below the base
    table = head.pose.center[:2] - [rng.uniform(-12, 12), rng.uniform(-15, 15)]
    grids = []
    for k in range(n):
        z = (first + k * step - table[1] * normal[1]) / normal[2]
        origin = np.array([table[0], table[1], z]) - (size - 1) / 2 * pixel * (row + col)
        grids.append(phantom.SliceGrid(origin, row, col, float(pixel), size, size))
    info = {"image_size": size, "pixel_spacing": round(pixel, 4), "slice_spacing": step, "tilt_degrees": round(tilt, 2)}
    return grids, info


def _noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """CT-like noise, (size, size) float32 HU of std `sigma`: sums of four uniform bytes over 2x2 pixel
    boxes, nearly Gaussian (Irwin-Hall) and correlated between neighbours (0.5), ~6x cheaper than normals."""
    white = np.frombuffer(rng.bytes((size + 1) ** 2), dtype=np.int8).reshape(size + 1, size + 1).astype(np.int16)
    box = white[:-1, :-1] + white[1:, :-1]
    box += white[:-1, 1:]
    box += white[1:, 1:]
    return box.astype(np.float32) * np.float32(sigma / np.sqrt(4 * (256**2 - 1) / 12))


def _encoder(rng: np.random.Generator, kind: str, size: int) -> Callable[[np.ndarray], np.ndarray]:
    """HU -> stored pixels for a pixel representation (see `_PIXEL_TAGS`); signed series may pad the
    corners outside the reconstruction circle with -2000 (HU -3024), as many RSNA scanners did."""
    yy, xx = np.ogrid[:size, :size]
    outside = ((yy - (size - 1) / 2) ** 2 + (xx - (size - 1) / 2) ** 2) > (size / 2) ** 2
    pad = kind == "signed" and rng.random() < 0.5

    def encode(hu: np.ndarray) -> np.ndarray:
        v = np.rint(hu)
        if kind == "wrapped12":  # stored = HU mod 4096: the fix (x = p + 1000, wrap at 4096, -1000) undoes it
            return np.mod(np.clip(v, -1000, 3095), 4096).astype(np.uint16)
        if kind == "signed":
            px = (np.clip(v, -1024, 3071) + 1024).astype(np.int16)
            if pad:
                px[outside] = -2000
            return px
        return np.clip(v + 1024, 0, 4095 if kind == "unsigned12" else 65535).astype(np.uint16)

    return encode


#: (BitsStored, PixelRepresentation, RescaleIntercept) of each pixel representation.
_PIXEL_TAGS = {"signed": (16, 1, "-1024"), "unsigned": (16, 0, "-1024"), "unsigned12": (12, 0, "-1024"),
               "wrapped12": (12, 0, "1")}  # fmt: skip


def _el(tag: int, vr: str, value: object) -> DataElement:
    """A data element (made, like the files, without value validation: RSNA's "ID_..." UIDs are invalid)."""
    return DataElement(tag, vr, value)


def _template(rng: np.random.Generator, plan: SeriesPlan, grid: phantom.SliceGrid) -> tuple[list[DataElement], str]:
    """The data elements shared by the slices of a series, and its transfer syntax UID."""
    bits, representation, intercept = _PIXEL_TAGS[plan.quirks["pixels"]]
    elems = [
        _el(0x00080016, "UI", CTImageStorage), _el(0x00080060, "CS", "CT"), _el(0x00100020, "LO", plan.patient_id),
        _el(0x0020000D, "UI", plan.study_uid), _el(0x0020000E, "UI", plan.series_uid), _el(0x00200010, "SH", ""),
        _el(0x00200037, "DS", [f"{x + 0.0:.6f}" for x in (*grid.row_dir, *grid.col_dir)]),  # no "-0.000000"
        _el(0x00280002, "US", 1), _el(0x00280004, "CS", "MONOCHROME2"),
        _el(0x00280010, "US", grid.rows), _el(0x00280011, "US", grid.cols),
        _el(0x00280030, "DS", [f"{grid.spacing:.10g}"] * 2), _el(0x00280100, "US", 16),
        _el(0x00280101, "US", bits), _el(0x00280102, "US", bits - 1), _el(0x00280103, "US", representation),
        _el(0x00281052, "DS", intercept), _el(0x00281053, "DS", "1"),
    ]  # fmt: skip
    center, width = _WINDOWS[int(rng.integers(len(_WINDOWS)))]
    if plan.quirks["window"] == "single":
        elems += [_el(0x00281050, "DS", str(center)), _el(0x00281051, "DS", str(width))]
    elif plan.quirks["window"] == "multi":  # RSNA style: zero-padded, the second pair maybe a bone window
        bone = rng.random() < 0.5
        centers, widths = [center, 500 if bone else center], [width, 2000 if bone else width]
        elems += [_el(0x00281050, "DS", [f"{v:05d}" for v in centers]),
                  _el(0x00281051, "DS", [f"{v:05d}" for v in widths])]
    syntax = ImplicitVRLittleEndian if plan.quirks["syntax"] == "implicit" else ExplicitVRLittleEndian
    return elems, syntax


def _instance_numbers(rng: np.random.Generator, kind: str, n: int) -> list[int | None]:
    """InstanceNumber of each slice in position order: ascending or descending, shuffled, or missing."""
    if kind == "missing":
        return [None] * n
    numbers = np.arange(1, n + 1)
    numbers = rng.permutation(numbers) if kind == "shuffled" else numbers[:: rng.choice([1, -1])]
    return [int(x) for x in numbers]


def _write_slice(path: Path, template: list[DataElement], syntax: str, sop: str, number: int | None,
                 origin: np.ndarray, pixels: np.ndarray) -> None:  # fmt: skip
    """Write one DICOM file (file meta + template + the slice's own elements)."""
    ds = Dataset()
    for elem in template:
        ds.add(elem)
    ds.add(_el(0x00080018, "UI", sop))
    if number is not None:
        ds.add(_el(0x00200013, "IS", str(number)))
    ds.add(_el(0x00200032, "DS", [f"{x:.6f}" for x in origin]))
    ds.add(_el(0x7FE00010, "OW", pixels.tobytes()))
    meta = FileMetaDataset()
    for tag, value in ((0x00020002, CTImageStorage), (0x00020003, sop), (0x00020010, syntax)):
        meta.add(_el(tag, "UI", value))
    ds.file_meta = meta
    dcmwrite(path, ds, enforce_file_format=True)


def _truncate_pixels(path: Path) -> None:
    """Cut the last 40 % of a file: the header stays readable, the pixel data is truncated."""
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.truncate(size - (2 * size) // 5)


def _summary(config: SynthConfig, plans: list[SeriesPlan], infos: list[dict],
             labels: dict[str, dict[str, tuple[int, ...]]], extras: dict[str, tuple[str, str]]) -> dict:  # fmt: skip
    """Settings, counts per split and one entry per series (JSON-serialisable, deterministic)."""
    splits = {}
    for split in SPLITS:
        mine = [p for p in plans if p.split == split]
        table = np.array(list(labels[split].values()), dtype=int).reshape(-1, len(LABELS))
        splits[split] = {
            "files": len(labels[split]) + (1 if split in extras else 0),
            "images": len(labels[split]),
            "series": len(mine),
            "studies": len({p.study_uid for p in mine}),
            "patients": len({p.patient_id for p in mine}),
            "positive_slices": dict(zip(LABELS, table.sum(axis=0).tolist())),
            "corrupt_image": extras[split][0] if split in extras else None,
            "junk_file": f"{extras[split][1]}.dcm" if split in extras else None,
        }
    series = []
    for plan, info in zip(plans, infos):
        positives = np.array([labels[plan.split][sop] for sop in plan.sop_uids]).sum(axis=0)
        series.append({"split": plan.split, "series_uid": plan.series_uid, "study_uid": plan.study_uid,
                       "patient_id": plan.patient_id, "n_slices": len(plan.sop_uids), **info, **plan.quirks,
                       "positive_slices": dict(zip(LABELS, positives.tolist()))})  # fmt: skip
    return {"generator": f"ich3d.synth.generate {__version__}", "config": asdict(config), "splits": splits, "series": series}


def _write_csvs(out: Path, config: SynthConfig, labels: dict[str, dict[str, tuple[int, ...]]],
                extras: dict[str, tuple[str, str]]) -> None:  # fmt: skip
    """stage_2_train.csv (with a few duplicated images), stage_2_test_labels.csv, sample submission."""
    rng = np.random.default_rng([config.seed, 3000])
    train = list(rng.permutation(list(labels["train"])))
    if config.quirks:
        for image in rng.choice(train, size=max(1, len(train) // 400), replace=False):
            train.insert(int(rng.integers(len(train) + 1)), str(image))
    _write_long(out / "stage_2_train.csv", [(i, labels["train"][i]) for i in train])
    test = list(rng.permutation(list(labels["test"])))
    junk = [extras["test"][1]] if "test" in extras else []
    # Like RSNA's, the truth covers every image the sample asks for: the junk file shows no hemorrhage.
    truth = [(i, labels["test"][i]) for i in test] + [(i, (0,) * len(LABELS)) for i in junk]
    _write_long(out / "stage_2_test_labels.csv", truth)
    submission = test + junk
    _write_long(out / "stage_2_sample_submission.csv", [(i, None) for i in rng.permutation(submission)])


def _write_long(path: Path, rows: list[tuple[str, tuple[int, ...] | None]]) -> None:
    """Long RSNA format: ``ID,Label`` with six rows ``<image>_<label>`` per image (None: Label 0.5)."""
    lines = ["ID,Label"]
    for image, values in rows:
        lines += [f"{image}_{name},{0.5 if values is None else values[j]}" for j, name in enumerate(LABELS)]
    path.write_text("\n".join(lines) + "\n")
