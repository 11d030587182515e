"""RSNA-sized synthetic inputs for ``scripts/bench_scale.py``, without pixel data.

Everything is vectorised over images (numpy/pyarrow, no Python loop per image) and seeded, so a
fraction's inputs are the same on every run; they are written once per fraction into
``<data>/f<fraction>/`` and reused (``inputs.json`` written last marks a complete set).

Per fraction f of RSNA 2019 stage 2 (752,803 training images in ~21,000 series; 121,232 test images):

* ``train/header.parquet``: the header pass's table (:data:`ich3d.dataset.dicom.HEADER_COLUMNS` in the
  index's dtypes, null where RSNA has no value, plus ``relative_path`` and ``source``), rows in
  file-name order as the header pass reads them. Series of
  20-51 slices (mean ~36) mostly 5 mm apart, axial orientation, a quarter gantry-tilted by 5-25°
  (stack sheared), some with reversed InstanceNumber, a duplicated position or a missing slice;
  one series per study, ~10 % of patients with two studies; a few corrupt files and a few files
  without a header (no series).
* ``train/labels.csv``: the RSNA long format (``ID_<12 hex>_<label>,Label``, six rows per image in
  a random image order, ~14 % ``any`` positive in contiguous runs per series, a few images'
  rows duplicated exactly); ``train/joined.parquet``: the header with those labels joined.
* ``train/dataset/index/{slices,series}.parquet``: :func:`ich3d.dataset.index.make_index` of the above
  (the order step's output, computed here once so every step can start from it).
* ``train/table.npz``: the SeriesTable of fold 0's training series (5 folds, seed 0), and
  ``train/embeddings/view{0,1}.npy``: random (n_slices, 2,048) float16 embeddings of its slices,
  the files :mod:`ich3d.training.embeddings` writes.
* ``test/``: the same for the test images (index built without labels), ``sample_submission.csv``
  (Label 0.5, six rows per image, random image order) and ``labels.csv`` (the test truth).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ich3d.constants import LABEL_COLUMNS, LABELS, Status
from ich3d.data.tables import SeriesTable, build_table
from ich3d.dataset.dicom import HEADER_COLUMNS
from ich3d.dataset.index import (  # header pass's dtypes
    _HEADER_DTYPES,
    INDEX_VERSION,
    STR,
    make_index,
    write_parquet,
)
from ich3d.dataset.labels import read_labels
from ich3d.layout import DatasetFolder
from ich3d.training.splits import make_folds, split_series

RSNA_TRAIN_IMAGES = 752_803
RSNA_TRAIN_SERIES = 21_000
RSNA_TEST_IMAGES = 121_232
FEATURES = 2_048
FOLDS = 5
SEED = 0
#: Bumped when the generator changes, so stale caches are rebuilt.
GENERATOR_VERSION = 1
_MEAN_SLICES = RSNA_TRAIN_IMAGES / RSNA_TRAIN_SERIES
_MIN_SLICES, _MAX_SLICES = 20, 52  # rng.integers bounds: mean 35.5 slices
_SUBTYPE_P = np.array([0.05, 0.35, 0.25, 0.35, 0.45])  # per positive series: epidural ... subdural
_EMBED_CHUNK = 32_768  # rows per random fill of an embedding file


@dataclass(frozen=True)
class Split:
    """The files of one split (``train`` or ``test``) of a fraction's inputs."""

    root: Path

    @property
    def header(self) -> Path:
        return self.root / "header.parquet"

    @property
    def joined(self) -> Path:
        return self.root / "joined.parquet"

    @property
    def labels(self) -> Path:
        return self.root / "labels.csv"

    @property
    def sample(self) -> Path:
        return self.root / "sample_submission.csv"

    @property
    def dataset(self) -> DatasetFolder:
        return DatasetFolder(self.root / "dataset")

    @property
    def table(self) -> Path:
        return self.root / "table.npz"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    def views(self, n_views: int = 2) -> list[Path]:
        return [self.embeddings / f"view{v}.npy" for v in range(n_views)]


@dataclass(frozen=True)
class Inputs:
    """A fraction's input folder: ``train``, ``test`` and ``inputs.json`` (the counts)."""

    root: Path

    @property
    def train(self) -> Split:
        return Split(self.root / "train")

    @property
    def test(self) -> Split:
        return Split(self.root / "test")

    @property
    def info(self) -> Path:
        return self.root / "inputs.json"

    def counts(self) -> dict:
        return json.loads(self.info.read_text())


def signature() -> dict:
    """What a set of inputs depends on besides the fraction: this generator, the index layout, the
    header columns, the SeriesTable fields (a set made for others is rebuilt)."""
    return {"generator": GENERATOR_VERSION, "index_version": INDEX_VERSION, "header_columns": list(HEADER_COLUMNS),
            "table_fields": [field.name for field in dataclasses.fields(SeriesTable)]}


def inputs_for(data: Path, fraction: float) -> Inputs:
    """The input folder of ``fraction`` under ``data`` (made when absent or stale)."""
    inputs = Inputs(Path(data) / f"f{fraction:g}")
    if not inputs.info.is_file() or inputs.counts().get("signature") != signature():
        shutil.rmtree(inputs.root, ignore_errors=True)
        make_inputs(inputs, fraction)
    return inputs


def hex_ids(codes: np.ndarray, width: int, prefix: str = "ID_") -> np.ndarray:
    """``prefix`` + ``width`` lower-case hex digits of each code: (n,) str array, vectorised."""
    shifts = np.arange(4 * (width - 1), -1, -4, dtype=np.uint64)
    nibbles = ((codes.astype(np.uint64)[:, None] >> shifts) & np.uint64(15)).astype(np.uint8)
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nibbles]
    return np.strings.add(prefix, np.ascontiguousarray(digits).view(f"S{width}").ravel().astype(str))


def scrambled(start: int, n: int, bits: int, multiplier: int) -> np.ndarray:
    """(n,) distinct pseudo-random codes below 2**bits: ``(i * multiplier + c) mod 2**bits`` for
    i in [start, start + n), a bijection since ``multiplier`` is odd."""
    mask = np.uint64((1 << bits) - 1)
    codes = np.arange(start, start + n, dtype=np.uint64) * np.uint64(multiplier | 1) + np.uint64(0x5DEECE66D)
    return codes & mask


def series_lengths(n_images: int, rng: np.random.Generator) -> np.ndarray:
    """(n_series,) int64 slices per series summing to ``n_images`` (the last series takes the rest)."""
    draws = rng.integers(_MIN_SLICES, _MAX_SLICES, size=int(n_images / _MIN_SLICES) + 2)
    ends = np.cumsum(draws)
    last = int(np.searchsorted(ends, n_images))
    lengths = draws[:last + 1].copy()
    lengths[last] = n_images - (ends[last - 1] if last else 0)
    return lengths


def _run_mask(lengths: np.ndarray, begin: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """(sum(lengths),) bool: slice k of series s lies in [begin[s], stop[s])."""
    k = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return (k >= np.repeat(begin, lengths)) & (k < np.repeat(stop, lengths))


def synth_labels(lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n_images, 6) int8 labels in series order: ~36 % of series hold one contiguous positive run
    over ~40 % of their slices (~14 % of images ``any`` positive), its subtypes fixed per series."""
    n_series = len(lengths)
    positive = rng.random(n_series) < 0.36
    run = np.maximum(1, np.round(lengths * rng.uniform(0.2, 0.6, n_series))).astype(np.int64)
    begin = (rng.random(n_series) * (lengths - run + 1)).astype(np.int64)
    subtypes = rng.random((n_series, len(_SUBTYPE_P))) < _SUBTYPE_P
    subtypes[~subtypes.any(axis=1), -1] = True  # every positive series has a subtype
    inside = _run_mask(lengths, begin, np.where(positive, begin + run, begin))
    labels = np.zeros((len(inside), len(LABELS)), dtype=np.int8)
    labels[:, 0] = inside
    labels[:, 1:] = np.repeat(subtypes, lengths, axis=0) & inside[:, None]
    return labels


def synth_header(n_images: int, code_start: int, source: str,
                 rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """A header-pass table of ``n_images`` files and their labels.

    Args:
        n_images: rows (files).
        code_start: first image code (train and test use disjoint ranges, so disjoint IDs).
        source: the input folder the paths lie in.

    Returns:
        (header, image_ids, labels): header rows in file-name order with the columns of
        :data:`HEADER_COLUMNS` plus ``relative_path`` and ``source`` (index dtypes); the image IDs
        (``ID_<12 hex>``, the file stems and SOPInstanceUIDs) and labels (n_images, 6) int8 in the
        same row order.
    """
    lengths = series_lengths(n_images, rng)
    n_series = len(lengths)
    series_of = np.repeat(np.arange(n_series), lengths)
    k = np.arange(n_images) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # slice number in its series
    second_study = (rng.random(n_series) < 0.1) & (np.arange(n_series) > 0)  # shares the previous patient
    patient = np.arange(n_series) - np.cumsum(second_study)
    spacing = np.where(rng.random(n_series) < 0.9, 5.0, rng.choice([2.5, 3.0, 4.0], n_series))
    tilt = np.where(rng.random(n_series) < 0.25, np.deg2rad(rng.uniform(5, 25, n_series)), 0.0)
    reversed_numbers = rng.random(n_series) < 0.3
    # A missing slice (a gap) in ~1 % of series, a repeated position in ~0.5 %: slice k's step number.
    gap_at = np.where(rng.random(n_series) < 0.01, lengths // 2, -1)
    duplicate_at = np.where(rng.random(n_series) < 0.005, lengths // 3, -1)
    step = k + (k >= np.repeat(gap_at, lengths)) * (np.repeat(gap_at, lengths) >= 0)
    step = step - (k == np.repeat(duplicate_at, lengths)) * (np.repeat(duplicate_at, lengths) > 0)
    z = np.repeat(rng.uniform(-150, 50, n_series), lengths) + step * np.repeat(spacing, lengths)
    angle = np.repeat(tilt, lengths)
    image_code = scrambled(code_start, n_images, 48, 0x9E3779B97F4A7C15)
    image_ids = hex_ids(image_code, 12)
    n_files = n_images
    status = np.full(n_files, str(Status.OK), dtype=object)
    status[rng.random(n_files) < 5e-4] = str(Status.CORRUPT)
    no_header = rng.random(n_files) < 2e-4  # unreadable headers: no series, no geometry
    status[no_header] = str(Status.NOT_DICOM)
    geometry = {
        "ipp_x": np.repeat(rng.uniform(-130, -110, n_series), lengths),
        "ipp_y": np.repeat(rng.uniform(-140, -100, n_series), lengths),
        "ipp_z": z,
        "iop_rx": np.ones(n_images), "iop_ry": np.zeros(n_images), "iop_rz": np.zeros(n_images),
        "iop_cx": np.zeros(n_images), "iop_cy": np.cos(angle), "iop_cz": -np.sin(angle),
    }
    offset = 1_500 + rng.integers(0, 400, n_series)
    names = np.strings.add(image_ids, ".dcm")
    values = {
        "image_id": image_ids,
        "path": np.strings.add(f"{source}/", names),
        "sop_uid": image_ids,
        "modality": "CT", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "image_type": "ORIGINAL\\PRIMARY\\AXIAL",
        "series_number": np.repeat(rng.integers(1, 8, n_series), lengths), "body_part": "HEAD",
        "slice_thickness": np.repeat(spacing, lengths),
        "patient_id": hex_ids(scrambled(code_start, n_series, 32, 0x2545F4914F6CDD1D), 8)[patient][series_of],
        "study_uid": hex_ids(scrambled(code_start, n_series, 40, 0x5851F42D4C957F2D), 10)[series_of],
        "series_uid": hex_ids(scrambled(code_start, n_series, 40, 0x14057B7EF767814F), 10)[series_of],
        "instance_number": np.where(np.repeat(reversed_numbers, lengths), np.repeat(lengths, lengths) - k, k + 1),
        **geometry,
        "rows": np.full(n_images, 512), "cols": np.full(n_images, 512), "pixel_spacing": np.full(n_images, 0.488281),
        "bits_allocated": np.full(n_images, 16),
        "bits_stored": np.repeat(np.where(rng.random(n_series) < 0.7, 12, 16), lengths),
        "pixel_representation": np.repeat(rng.integers(0, 2, n_series), lengths),
        "rescale_intercept": np.repeat(np.where(rng.random(n_series) < 0.9, -1024.0, 0.0), lengths),
        "rescale_slope": np.ones(n_images), "window_center": np.full(n_images, 40.0),
        "window_width": np.full(n_images, 80.0), "transfer_syntax": np.full(n_images, "1.2.840.10008.1.2.1"),
        "pixel_offset": np.repeat(offset, lengths), "pixel_length": np.full(n_images, 512 * 512 * 2),
        "status": status, "error": np.where(status == str(Status.OK), "", "synthetic failure"),
    }
    header = pd.DataFrame({name: values.get(name) for name in HEADER_COLUMNS}).astype(_HEADER_DTYPES)
    header.loc[no_header, ["series_uid", "study_uid", "sop_uid"]] = None
    header.loc[no_header, list(geometry)] = np.nan
    header.loc[no_header, ["rows", "cols", "instance_number"]] = pd.NA
    at = header.columns.get_loc("path") + 1  # what the header pass adds: the path in its folder, the folder
    header.insert(at, "relative_path", pd.Series(names, dtype=STR))
    header.insert(at + 1, "source", pd.Series(np.full(n_images, source), dtype=STR))
    order = np.argsort(image_code, kind="stable")  # the header pass reads files in name order
    labels = synth_labels(lengths, rng)
    return header.iloc[order].reset_index(drop=True), image_ids[order], labels[order]


def keyed(header: pd.DataFrame) -> pd.DataFrame:
    """The header with its image keys (``image_id``), as ``make_index`` has it before joining labels
    (an ich3d whose header pass gives ``image_id`` itself needs nothing)."""
    if "image_id" in header:
        return header
    from ich3d.dataset.identity import assign_image_ids

    return assign_image_ids(header)


def write_long_csv(path: Path, image_ids: np.ndarray, values: np.ndarray, rng: np.random.Generator,
                   n_duplicates: int = 0) -> None:
    """An RSNA long-format CSV (``ID_<image>_<label>,Label``): six rows per image, images in a random
    order, then the rows of ``n_duplicates`` images again (exact duplicates).

    Args:
        image_ids: (n,) str.
        values: (n, 6) labels (int) or probabilities (float), ``LABELS`` order.
    """
    order = rng.permutation(len(image_ids))
    order = np.concatenate([order, order[:n_duplicates]])
    ids = pc.binary_join_element_wise(pa.array(np.repeat(image_ids[order], len(LABELS))),
                                      pa.array(np.tile(np.array(LABELS), len(order))), "_")
    pacsv.write_csv(pa.table({"ID": ids, "Label": values[order].ravel()}), path,
                    pacsv.WriteOptions(quoting_style="none"))


def _write_index(folder: DatasetFolder, header: pd.DataFrame, labels_csv: Path | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``make_index`` of ``header`` (with the labels of ``labels_csv``) written into ``folder``."""
    slices, series, _ = make_index(header, read_labels(labels_csv) if labels_csv else None)
    folder.slices.parent.mkdir(parents=True, exist_ok=True)
    meta = {"version": INDEX_VERSION, "files_id": "synthetic", "labels_id": None}  # readable by load_index
    write_parquet(series, folder.series, meta)
    write_parquet(slices, folder.slices, meta)
    return slices, series


def save_table(path: Path, table: SeriesTable) -> None:
    """A SeriesTable's arrays as one ``.npz`` (identifiers pickled)."""
    np.savez(path, **{name: value for name, value in vars(table).items() if name != "dataset" and value is not None})


def load_table(path: Path, dataset: Path) -> SeriesTable:
    """The SeriesTable of :func:`save_table`."""
    with np.load(path, allow_pickle=True) as arrays:
        return SeriesTable(dataset=dataset, **{name: arrays[name] for name in arrays.files})


def write_embeddings(paths: list[Path], n_rows: int, rng: np.random.Generator) -> None:
    """Random (n_rows, FEATURES) float16 files in ``np.lib.format`` (as the embedding cache writes
    them), filled chunk by chunk so that memory stays flat."""
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for path in paths:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n_rows, FEATURES))
        for start in range(0, n_rows, _EMBED_CHUNK):
            stop = min(start + _EMBED_CHUNK, n_rows)
            array[start:stop] = rng.standard_normal((stop - start, FEATURES), dtype=np.float32)
        array.flush()
        del array


def make_inputs(inputs: Inputs, fraction: float) -> None:
    """Writes every input of ``fraction`` (see the module docstring)."""
    rng = np.random.default_rng([SEED, round(fraction * 1e6)])
    n_train, n_test = round(RSNA_TRAIN_IMAGES * fraction), round(RSNA_TEST_IMAGES * fraction)
    train, test = inputs.train, inputs.test
    for split in (train, test):
        split.root.mkdir(parents=True, exist_ok=True)
    header, image_ids, labels = synth_header(n_train, 0, "/data/rsna/stage_2_train", rng)
    header.to_parquet(train.header, index=False)
    write_long_csv(train.labels, image_ids, labels, rng, n_duplicates=max(1, n_train // 100_000))
    keyed(header).assign(**{c: labels[:, j].astype(np.float32) for j, c in enumerate(LABEL_COLUMNS)}).to_parquet(
        train.joined, index=False)
    slices, series = _write_index(train.dataset, header, train.labels)
    fold_of = make_folds(series, FOLDS, SEED)
    table = build_table(train.dataset.root, slices, split_series(fold_of, 0)[0])
    save_table(train.table, table)
    write_embeddings(train.views(), table.n_slices, rng)
    counts = {"signature": signature(), "fraction": fraction, "train_images": n_train,
              "train_series": len(series), "train_patients": int(series["patient_id"].nunique()),
              "label_rows": 6 * n_train + 6 * max(1, n_train // 100_000),
              "fold_train_series": len(table.series_uids), "fold_train_slices": table.n_slices,
              "embedding_bytes": sum(path.stat().st_size for path in train.views())}
    del header, labels, slices, series, table
    header, image_ids, labels = synth_header(n_test, 1 << 40, "/data/rsna/stage_2_test", rng)
    header.to_parquet(test.header, index=False)
    write_long_csv(test.labels, image_ids, labels, rng)
    write_long_csv(test.sample, image_ids, np.full(labels.shape, 0.5), rng)
    _, series = _write_index(test.dataset, header, None)
    counts |= {"test_images": n_test, "test_series": len(series)}
    inputs.info.write_text(json.dumps(counts, indent=1))
