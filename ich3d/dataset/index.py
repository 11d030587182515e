"""The dataset index: the header pass, series and labels joined into ``index/*.parquet``, and reading it back.

The index (docs/design.md §2) is decided once, here: every later step reads series membership,
order and labels from it and never re-parses a header or a label CSV. The parquet files carry
ich3d metadata (layout version, fingerprints of the input files and the labels file) in their
schema, so a build reuses an index that matches its inputs and a reader refuses another layout.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import operator
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ich3d.atomic import atomic_write
from ich3d.constants import LABEL_COLUMNS, Status
from ich3d.dataset.crop import CROP_COLUMNS
from ich3d.dataset.dicom import HEADER_COLUMNS
from ich3d.dataset.files import InputFiles, file_id
from ich3d.dataset.identity import assign_image_ids
from ich3d.dataset.labels import LabelTable, join_labels, read_label_file
from ich3d.dataset.nifti import relative_ids
from ich3d.dataset.options import BuildOptions
from ich3d.dataset.roles import AXIAL_LIKE, SeriesRules, assign_roles, choose_series
from ich3d.dataset.rows import read_rows
from ich3d.dataset.series import order_slices, series_table
from ich3d.errors import InputError
from ich3d.layout import DatasetFolder
from ich3d.progress import progress_bar
from ich3d.shard import Shard

log = logging.getLogger(__name__)

#: Version of the index layout; load_index refuses other versions.
INDEX_VERSION = 2
#: Version of the header rows: stored headers of another version are read again (3: a row per frame of a
#: multi-frame file and per slice of a NIfTI volume, docs/design.md §12).
HEADER_VERSION = 3
_META_KEY = b"ich3d"
_CHUNK_FILES = 256  # files per header-pass task
#: Columns of index/pixel_failures/part-<I>.parquet.
FAILURE_COLUMNS = ("image_id", "path", "status", "error")
STR, INT = "str", "Int64"
_HEADER_DTYPES = {name: "float64" for name in HEADER_COLUMNS} | {
    name: STR for name in ("path", "sop_uid", "patient_id", "study_uid", "series_uid", "sop_class_uid", "modality",
                           "image_type", "series_description", "convolution_kernel", "contrast_agent", "body_part",
                           "transfer_syntax", "status", "error")} | {
    name: INT for name in ("frame", "instance_number", "series_number", "rows", "cols", "bits_allocated",
                           "bits_stored", "pixel_representation", "pixel_offset", "pixel_length")}


_ROW_VALUES = operator.itemgetter(*HEADER_COLUMNS)


def read_header_chunk(paths: Sequence[str], assume_intercept: float | None = None) -> pd.DataFrame:
    """Header rows of ``paths`` as a typed DataFrame (columns :data:`ich3d.dataset.dicom.HEADER_COLUMNS`):
    one row per image, so a multi-frame file or a NIfTI volume gives several (:func:`read_rows`)."""
    rows = [_ROW_VALUES(row) for path in paths for row in read_rows(path, assume_intercept)]
    return pd.DataFrame.from_records(rows, columns=list(HEADER_COLUMNS)).astype(_HEADER_DTYPES)


def header_pass(files: InputFiles, pool: Executor | None, progress: bool,
                assume_intercept: float | None = None) -> pd.DataFrame:
    """Every candidate file's header row, read in chunks on ``pool`` (in this process when None)."""
    chunks = [files.paths[i:i + _CHUNK_FILES] for i in range(0, len(files.paths), _CHUNK_FILES)]
    read = functools.partial(read_header_chunk, assume_intercept=assume_intercept)
    results = pool.map(read, chunks) if pool else map(read, chunks)
    frames = []
    with progress_bar(progress, "headers", len(files.paths)) as advance:
        for frame in results:
            frames.append(frame)
            advance(len(frame))
    header = pd.concat(frames, ignore_index=True)
    position = pd.Index(files.paths).get_indexer(header["path"])  # a file may give several rows (frames)
    header.insert(header.columns.get_loc("path") + 1, "relative_path",
                  pd.Series(np.asarray(files.relative_paths(), dtype=object)[position], dtype=STR))
    header.insert(header.columns.get_loc("path") + 2, "source",
                  pd.Series(np.asarray(files.sources, dtype=object)[position], dtype=STR))
    relative_ids(header)
    return header


def make_index(header: pd.DataFrame, labels: LabelTable | None,
               rules: SeriesRules = SeriesRules()) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The index from the header rows: unique image keys, labels joined, series ordered, flagged, given
    their roles and chosen; rows outside any series get series_uid None.

    Returns:
        (slices, series, label report).
    """
    slices, label_report = join_labels(assign_image_ids(header), labels)
    slices = order_slices(slices)
    slices["series_uid"] = slices["series_uid"].where(slices["slice_index"].notna())
    label_columns = list(LABEL_COLUMNS)
    slices = slices[[c for c in slices.columns if c not in label_columns] + label_columns]
    series = choose_series(assign_roles(series_table(slices)), rules)
    axial_ct = series["role"].isin([str(role) for role in AXIAL_LIKE])
    series["build_cache"] = series["predict"] | (axial_ct & (series["n_labeled"] > 0))
    if len(slices) != len(header):
        raise AssertionError(f"the index has {len(slices)} rows for {len(header)} header rows")
    return slices, series, label_report


def write_parquet(frame: pd.DataFrame, path: Path, meta: dict) -> None:
    """Atomic parquet write with ``meta`` (JSON) in the schema metadata."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()})
    with atomic_write(path) as file:
        pq.write_table(table, file)


def read_meta(path: Path) -> dict | None:
    """The ich3d metadata of a parquet file; None when absent or unreadable."""
    try:
        raw = (pq.read_schema(path).metadata or {}).get(_META_KEY)
        return json.loads(raw) if raw else None
    except (OSError, pa.ArrowException, ValueError):
        return None


def index_for(folder: DatasetFolder, files: InputFiles, labels_csv: Path | None, pool: Executor | None,
              options: BuildOptions) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The index of ``files``: reused when it matches the inputs, labels and rules; rebuilt from the stored
    header rows when only the labels or the series rules changed; else built from a header pass.

    Returns:
        (slices, series, meta): meta holds the layout version, fingerprints, the label report, the
        rules, ``header_s`` and ``reused``.
    """
    assume_intercept, rules, labels_format = options.assume_intercept, options.series_rules, options.labels_format
    files_meta = {"version": INDEX_VERSION, "files_id": files.files_id, "header_options":
                  {"assume_intercept": assume_intercept, "header_version": HEADER_VERSION}}
    meta = files_meta | {"labels_id": file_id(labels_csv), "labels_format": labels_format,
                         "series_rules": rules.to_dict()}
    stored = read_meta(folder.slices) or {}
    if {key: stored.get(key) for key in meta} == meta and folder.series.is_file():
        log.info("%s: index matches the inputs, reused", folder.slices)
        return pd.read_parquet(folder.slices), pd.read_parquet(folder.series), stored | {"reused": True}
    labels = read_label_file(Path(labels_csv), labels_format) if labels_csv is not None else None  # fail fast
    began = time.perf_counter()
    stored_headers = read_meta(folder.headers) or {}
    if {key: stored_headers.get(key) for key in files_meta} == files_meta:
        log.info("%s: same files, new labels or series rules: headers reused", folder.slices)
        header = pd.read_parquet(folder.headers)
    else:
        header = header_pass(files, pool, options.progress, assume_intercept)
        folder.headers.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(header, folder.headers, files_meta)
    header_s = time.perf_counter() - began
    log.info("headers: %d files in %.1f s (%.0f files/s)", len(header), header_s, len(header) / max(header_s, 1e-9))
    slices, series, label_report = make_index(header, labels, rules)
    meta |= {"labels": label_report, "header_s": round(header_s, 3)}
    write_parquet(series, folder.series, meta)
    write_parquet(slices, folder.slices, meta)  # written last: its metadata marks a complete index
    return slices, series, meta | {"reused": False}


def part_series(series: pd.DataFrame, shard: Shard) -> list[str]:
    """Series UIDs of a shard: rows i of series.parquet with i % num_parts == part_id, in order."""
    return series["series_uid"].iloc[shard.part_id::shard.num_parts].tolist()


def _checked_meta(folder: DatasetFolder) -> dict:
    """The metadata of a complete index of this layout version.

    Raises:
        InputError: not a dataset folder, or an index of another layout version.
    """
    if not folder.slices.is_file() or not folder.series.is_file():
        raise InputError(f"{folder.root}: not a dataset folder (no {folder.slices.name} / {folder.series.name} in "
                         f"{folder.slices.parent}); create one with `ich3d build-series --out {folder.root}`")
    meta = read_meta(folder.slices)
    if meta is None or meta.get("version") != INDEX_VERSION:
        found = None if meta is None else meta.get("version")
        raise InputError(f"{folder.slices}: index layout version {found}, this ich3d reads version {INDEX_VERSION}; "
                         f"rerun `ich3d build-series` to rebuild the index")
    return meta


def index_fingerprint(dataset: Path) -> str:
    """A short identity of a dataset's index (its input files and labels): what a run was trained on.

    Raises:
        InputError: not a dataset folder.
    """
    meta = _checked_meta(DatasetFolder(Path(dataset)))
    return hashlib.sha256(f"{meta['files_id']}\0{meta.get('labels_id')}".encode()).hexdigest()[:16]


def load_index(dataset: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The index of a dataset folder, with pixel-pass failures merged into ``status``/``error``.

    Args:
        dataset: a folder written by :func:`ich3d.dataset.build.build_series`.

    Returns:
        (slices, series): the tables of ``index/slices.parquet`` and ``index/series.parquet``
        (schemas in docs/design.md §2).

    Raises:
        InputError: not a dataset folder, or an index of another layout version.
    """
    folder = DatasetFolder(Path(dataset))
    meta = _checked_meta(folder)
    try:
        slices, series = pd.read_parquet(folder.slices), pd.read_parquet(folder.series)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{folder.root}: the index cannot be read ({exc}); rerun `ich3d build-series`") from None
    missing = {"image_id", "path", "series_uid", "slice_index", "status", *LABEL_COLUMNS} - set(slices.columns)
    if missing or "series_uid" not in series.columns:
        raise InputError(f"{folder.root}: index without the columns {sorted(missing)}; rerun `ich3d build-series`")
    merged = _merge_failures(folder, slices, meta["files_id"])
    if merged is not slices:  # some pixels failed: n_ok counts them out
        ok = merged.loc[merged["status"] == str(Status.OK), "series_uid"].value_counts()
        series["n_ok"] = series["series_uid"].map(ok).fillna(0).astype(series["n_ok"].dtype)
    return _merge_crops(folder, merged, meta["files_id"]), series


def _part_tables(folder: Path, files_id: str) -> list[pd.DataFrame]:
    """The per-part parquet tables of the pixel pass in ``folder`` that belong to this index."""
    return [pd.read_parquet(path) for path in sorted(folder.glob("part-*.parquet"))
            if (read_meta(path) or {}).get("files_id") == files_id]


def _merge_crops(folder: DatasetFolder, slices: pd.DataFrame, files_id: str) -> pd.DataFrame:
    """Adds ``crop_top``, ``crop_left``, ``crop_side`` (NaN: not cropped) from the pixel pass's crop files."""
    parts = _part_tables(folder.crops, files_id)
    crops = pd.concat(parts, ignore_index=True).drop_duplicates("series_uid", keep="last") if parts else None
    out = slices.copy()
    for column in CROP_COLUMNS:
        values = crops.set_index("series_uid")[column] if crops is not None and len(crops) else pd.Series(dtype=float)
        out[column] = out["series_uid"].map(values).astype("float64")
    return out


def dataset_crop(dataset: Path) -> str | None:
    """The ``--crop`` the dataset's cache was built with (None before its pixel pass)."""
    folder = DatasetFolder(Path(dataset))
    crops = {(read_meta(path) or {}).get("crop") for path in folder.crops.glob("part-*.parquet")} - {None}
    return crops.pop() if len(crops) == 1 else None


def _merge_failures(folder: DatasetFolder, slices: pd.DataFrame, files_id: str) -> pd.DataFrame:
    """Sets status/error of slices that failed in the pixel pass (failure files of this index only);
    ``slices`` itself when none did."""
    parts = _part_tables(folder.pixel_failures, files_id)
    failures = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if failures.empty:
        return slices
    failures = failures.drop_duplicates("image_id", keep="last")  # a file may hold several images (frames)
    rows = pd.Index(slices["image_id"]).get_indexer(failures["image_id"])
    failures = failures[rows >= 0]
    rows = rows[rows >= 0]
    status, error = slices["status"].to_numpy(object), slices["error"].to_numpy(object)
    status[rows], error[rows] = failures["status"].to_numpy(object), failures["error"].to_numpy(object)
    return slices.assign(status=pd.Series(status, dtype=STR), error=pd.Series(error, dtype=STR))
