"""``ich3d build-series``: DICOM folders (+ labels) → dataset folder (index, HU cache, build.json).

Two passes over a process pool. The header pass reads every file's header (never its pixels) in
chunks and returns small typed DataFrames; series are then grouped, sorted and flagged for the whole
index at once (:mod:`ich3d.dataset.series`), labels joined (:mod:`ich3d.dataset.labels`), and the index written. The
pixel pass gives each worker whole series: it reads the pixels, converts and resizes them and writes
``cache/<series_uid>.npy`` itself, returning only failure records (sending arrays back to the parent
capped throughput at ~250 files/s on 2 cores).

Resuming: the index is reused when the input files (paths, sizes, mtimes) and the labels file are
unchanged. Each finished series is appended to a journal (``index/pixel_failures/part-<I>.jsonl``)
with its failures, after its cache file was written atomically, so a killed build resumes where it
stopped and no failure record is lost. ``--num-parts K --part-id I`` share one index; part I builds
the series whose row i in series.parquet satisfies ``i % K == I``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ich3d import __version__
from ich3d.dataset.cache import CacheJournal, cache_path, cache_series
from ich3d.constants import BUILD_FILE, CACHE_DIR, LABEL_COLUMNS, PIXEL_FAILURES_DIR, SERIES_FILE, SLICES_FILE, Status
from ich3d.dataset.dicom import HEADER_COLUMNS, read_header
from ich3d.atomic import atomic_write
from ich3d.progress import progress_bar
from ich3d.errors import Ich3dError, InputError
from ich3d.dataset.labels import LabelTable, join_labels, read_labels
from ich3d.dataset.series import order_slices, series_table

log = logging.getLogger(__name__)

#: Version of the index layout; load_index refuses other versions.
INDEX_VERSION = 1
_META_KEY = b"ich3d"
_CHUNK_FILES = 256  # files per header-pass task
#: Columns of index/pixel_failures/part-<I>.parquet.
FAILURE_COLUMNS = ("image_id", "path", "status", "error")
#: Suffixes that are never DICOM slices (everything else is tried, and reported if unreadable).
IGNORED_SUFFIXES = frozenset({".csv", ".json", ".jsonl", ".txt", ".md", ".parquet", ".npy", ".npz", ".xml",
                              ".html", ".png", ".jpg", ".jpeg", ".gif", ".zip", ".gz", ".tar", ".py",
                              ".log", ".yaml", ".yml", ".pdf", ".tsv", ".nii", ".tmp", ".pt"})
_STR, _INT = "str", "Int64"
_HEADER_DTYPES = {name: "float64" for name in HEADER_COLUMNS} | {
    name: _STR for name in ("image_id", "path", "sop_uid", "patient_id", "study_uid", "series_uid",
                            "transfer_syntax", "status", "error")} | {
    name: _INT for name in ("instance_number", "rows", "cols", "bits_allocated", "bits_stored",
                            "pixel_representation", "pixel_offset", "pixel_length")}


@dataclass(frozen=True)
class InputFiles:
    """Candidate files: ``paths`` (absolute, sorted per folder), ``sources`` (the --dicom-dir each came
    from, as given), ``n_ignored`` (files skipped by name) and ``files_id`` (fingerprint of paths,
    sizes and modification times)."""

    paths: list[str]
    sources: list[str]
    n_ignored: int
    files_id: str


def _walk(folder: Path, exclude: Path) -> Iterator[os.DirEntry]:
    """Files under ``folder`` (recursively, following links once), skipping hidden entries and ``exclude``."""
    stack, seen = [folder], {exclude}
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        with os.scandir(current) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=True):
                    stack.append(Path(entry.path).resolve())
                elif entry.is_file(follow_symlinks=True):
                    yield entry


def collect_files(dicom_dirs: Sequence[Path], exclude: Path) -> InputFiles:
    """Finds the candidate DICOM files under each folder.

    Every file is a candidate except hidden files, ``DICOMDIR``, names with a suffix in
    :data:`IGNORED_SUFFIXES` (``.csv``, ``.json``...) and files already found through another
    folder: extension-less files and ``.dcm`` files are tried, and anything unreadable is reported
    in the index rather than silently skipped.

    Raises:
        InputError: a folder that does not exist or holds no candidate file.
    """
    paths, sources, n_ignored, seen = [], [], 0, set()
    digest = hashlib.sha256()
    for folder in dicom_dirs:
        if not Path(folder).is_dir():
            raise InputError(f"--dicom-dir {folder}: not a folder")
        found = []
        for entry in _walk(Path(folder).resolve(), exclude.resolve()):
            ignored = entry.name == "DICOMDIR" or os.path.splitext(entry.name)[1].lower() in IGNORED_SUFFIXES
            if ignored or entry.path in seen:  # a folder given twice, or inside another one
                n_ignored += 1
                continue
            seen.add(entry.path)
            stat = entry.stat()
            found.append((entry.path, stat.st_size, stat.st_mtime_ns))
        if not found:
            raise InputError(f"--dicom-dir {folder}: no DICOM files found (searched recursively; "
                             f"{n_ignored} files ignored by their suffix or already found)")
        found.sort()
        for path, size, mtime in found:
            digest.update(f"{path}\0{size}\0{mtime}\n".encode())
        paths += [path for path, _, _ in found]
        sources += [str(folder)] * len(found)
    return InputFiles(paths, sources, n_ignored, digest.hexdigest())


def _labels_id(labels_csv: Path | None) -> str | None:
    if labels_csv is None:
        return None
    stat = Path(labels_csv).stat()
    return f"{Path(labels_csv).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _init_worker() -> None:
    """Pool initializer: one BLAS thread, and glibc malloc kept from returning big buffers to the OS
    (page faults cost a 3x slowdown on this project's VMs; ARCHITECTURE.md section 7)."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        for option, value in ((-1, 256 << 20), (-2, 64 << 20), (-3, 32 << 20)):  # M_TRIM/TOP_PAD/MMAP
            libc.mallopt(option, value)


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[Executor | None]:
    """A process pool (fork on Linux: instant start, nothing re-imported), or None for one worker."""
    if workers <= 1:
        yield None
        return
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else None)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as executor:
        executor.submit(int).result()  # start the workers now, before any progress-bar thread exists
        yield executor


def read_header_chunk(paths: Sequence[str]) -> pd.DataFrame:
    """Header rows of ``paths`` as a typed DataFrame (columns :data:`ich3d.dataset.dicom.HEADER_COLUMNS`)."""
    rows = [tuple(read_header(path).values()) for path in paths]
    return pd.DataFrame.from_records(rows, columns=list(HEADER_COLUMNS)).astype(_HEADER_DTYPES)


def _header_pass(files: InputFiles, pool: Executor | None, progress: bool) -> pd.DataFrame:
    chunks = [files.paths[i:i + _CHUNK_FILES] for i in range(0, len(files.paths), _CHUNK_FILES)]
    results = pool.map(read_header_chunk, chunks) if pool else map(read_header_chunk, chunks)
    frames = []
    with progress_bar(progress, "headers", len(files.paths)) as advance:
        for frame in results:
            frames.append(frame)
            advance(len(frame))
    header = pd.concat(frames, ignore_index=True)
    header.insert(header.columns.get_loc("path") + 1, "source", pd.Series(files.sources, dtype=_STR))
    return header


def _make_index(header: pd.DataFrame, labels: LabelTable | None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Labels joined, series ordered and flagged; rows outside any series get series_uid None."""
    slices, label_report = join_labels(header, labels)
    slices = order_slices(slices)
    slices["series_uid"] = slices["series_uid"].where(slices["slice_index"].notna())
    label_columns = list(LABEL_COLUMNS)
    slices = slices[[c for c in slices.columns if c not in label_columns] + label_columns]
    return slices, series_table(slices), label_report


def _write_parquet(frame: pd.DataFrame, path: Path, meta: dict) -> None:
    """Atomic parquet write with ``meta`` (JSON) in the schema metadata."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()})
    with atomic_write(path) as file:
        pq.write_table(table, file)


def _read_meta(path: Path) -> dict | None:
    """The ich3d metadata of a parquet file; None when absent or unreadable."""
    try:
        raw = (pq.read_schema(path).metadata or {}).get(_META_KEY)
        return json.loads(raw) if raw else None
    except (OSError, pa.ArrowException, ValueError):
        return None


def _index(out: Path, files: InputFiles, labels_csv: Path | None, pool: Executor | None,
           progress: bool) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The index of ``files``: reused when it matches the inputs, else built and written."""
    labels_id = _labels_id(labels_csv)
    meta = _read_meta(out / SLICES_FILE) or {}
    same_files = meta.get("version") == INDEX_VERSION and meta.get("files_id") == files.files_id
    if same_files and meta.get("labels_id") == labels_id and (out / SERIES_FILE).is_file():
        log.info("%s: index matches the inputs, reused", out / SLICES_FILE)
        return pd.read_parquet(out / SLICES_FILE), pd.read_parquet(out / SERIES_FILE), meta | {"reused": True}
    labels = read_labels(Path(labels_csv)) if labels_csv is not None else None  # fail fast, before the long pass
    began = time.perf_counter()
    if same_files:  # only the labels changed: the headers already read are still right
        log.info("%s: same files, new labels: headers reused", out / SLICES_FILE)
        header = pd.read_parquet(out / SLICES_FILE).drop(columns=["position", "slice_index", *LABEL_COLUMNS])
    else:
        header = _header_pass(files, pool, progress)
    header_s = time.perf_counter() - began
    log.info("headers: %d files in %.1f s (%.0f files/s)", len(header), header_s, len(header) / max(header_s, 1e-9))
    slices, series, label_report = _make_index(header, labels)
    meta = {"version": INDEX_VERSION, "files_id": files.files_id, "labels_id": labels_id,
            "labels": label_report, "header_s": round(header_s, 3)}
    (out / SERIES_FILE).parent.mkdir(parents=True, exist_ok=True)
    _write_parquet(series, out / SERIES_FILE, meta)
    _write_parquet(slices, out / SLICES_FILE, meta)  # written last: its metadata marks a complete index
    return slices, series, meta | {"reused": False}


def part_series(series: pd.DataFrame, num_parts: int, part_id: int) -> list[str]:
    """Series UIDs of part ``part_id`` of ``num_parts``: rows i of series.parquet with i % K == I, in order."""
    if not 0 <= part_id < num_parts:
        raise InputError(f"--part-id {part_id} must be in 0..{num_parts - 1} (--num-parts {num_parts})")
    return series["series_uid"].iloc[part_id::num_parts].tolist()


def _pixel_pass(out: Path, slices: pd.DataFrame, series: pd.DataFrame, size: int, parts: tuple[int, int],
                overwrite: bool, files_id: str, pool: Executor | None, workers: int, progress: bool) -> dict:
    """Builds this part's missing cache files; writes its failures parquet; returns counts."""
    num_parts, part_id = parts
    mine = part_series(series, num_parts, part_id)
    journal = CacheJournal(out, part_id, files_id, size)
    done = {} if overwrite else journal.finished()
    length = dict(zip(series["series_uid"], series["n_slices"].astype(int)))
    todo = [uid for uid in mine if uid not in done or not cache_path(out, uid).is_file()]
    todo.sort(key=lambda uid: -length[uid])  # longest first: no long series left for the end
    (out / CACHE_DIR).mkdir(parents=True, exist_ok=True)
    try:
        with progress_bar(progress, "pixels", sum(length[u] for u in todo)) as advance:
            done |= cache_series(out, slices, todo, size, journal, pool, 4 * workers, advance)
    except BrokenProcessPool as exc:
        raise Ich3dError(f"{out}: a worker process died (out of memory?); rerun the same command to resume "
                         f"(finished series are kept)") from exc
    except OSError as exc:
        raise Ich3dError(f"{out / CACHE_DIR}: writing the cache failed ({exc}); fix it and rerun the same command "
                         f"to resume") from exc
    records = [tuple(f) for uid in mine for f in done.get(uid, [])]
    failures = pd.DataFrame(records, columns=list(FAILURE_COLUMNS), dtype=_STR)
    meta = {"files_id": files_id, "size": size}
    _write_parquet(failures, out / PIXEL_FAILURES_DIR / f"part-{part_id}.parquet", meta)
    return {"series_in_part": len(mine), "series_built": len(todo), "series_already_done": len(mine) - len(todo),
            "slices_built": sum(length[u] for u in todo),
            "pixel_failures": failures["status"].value_counts().to_dict()}


def _check_arguments(image_size: int, workers: int, num_parts: int, part_id: int) -> None:
    if image_size < 1:
        raise InputError(f"--image-size {image_size}: must be a positive number of pixels")
    if workers < 1:
        raise InputError(f"--workers {workers}: must be at least 1")
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise InputError(f"--part-id {part_id} must be in 0..{num_parts - 1} (--num-parts {num_parts})")


def build_series(
    dicom_dirs: Sequence[Path],
    out: Path,
    labels_csv: Path | None = None,
    image_size: int = 256,
    workers: int | None = None,
    overwrite: bool = False,
    num_parts: int = 1,
    part_id: int = 0,
    index_only: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Indexes DICOM folders into series, joins labels and caches Hounsfield units.

    Args:
        dicom_dirs: folders searched recursively (see :func:`collect_files`).
        out: the dataset folder (created).
        labels_csv: RSNA long-format labels (``ID,Label``), or None.
        image_size: side S of the cached slices (pixels).
        workers: processes (default: all cores); 1 runs in this process.
        overwrite: rebuild this part's cache files even if they are finished.
        num_parts, part_id: this job's share of the pixel pass (the index is shared).
        index_only: stop after writing the index.
        progress: show rich progress bars.

    Returns:
        The summary written to ``build.json`` (``build-part-<I>.json`` when num_parts > 1): counts by
        status (after this part's pixel pass), ``n_skipped`` (files not usable), series and label
        reports, timings and versions.

    Raises:
        InputError: missing/empty folders, a bad labels CSV, bad arguments.
    """
    began = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    _check_arguments(image_size, workers, num_parts, part_id)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = collect_files(dicom_dirs, exclude=out)
    log.info("%d candidate files in %d folders (%d ignored)", len(files.paths), len(dicom_dirs), files.n_ignored)
    timings = {"collect_s": time.perf_counter() - began}
    with _pool(workers) as pool:
        slices, series, meta = _index(out, files, labels_csv, pool, progress)
        timings["index_s"] = time.perf_counter() - began - timings["collect_s"]  # header pass included
        pixels = {} if index_only else _pixel_pass(out, slices, series, image_size, (num_parts, part_id),
                                                   overwrite, files.files_id, pool, workers, progress)
    timings["total_s"] = time.perf_counter() - began
    timings["pixel_s"] = timings["total_s"] - timings["index_s"] - timings["collect_s"]
    timings["header_s"] = 0.0 if meta["reused"] else meta["header_s"]
    summary = _summary(dicom_dirs, labels_csv, files, slices, series, meta, pixels, timings)
    summary["settings"] = {"image_size": image_size, "workers": workers, "overwrite": overwrite,
                           "num_parts": num_parts, "part_id": part_id, "index_only": index_only}
    name = BUILD_FILE if num_parts == 1 else f"build-part-{part_id}.json"
    (out / name).write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _summary(dicom_dirs: Sequence[Path], labels_csv: Path | None, files: InputFiles, slices: pd.DataFrame,
             series: pd.DataFrame, meta: dict, pixels: dict, timings: dict) -> dict[str, Any]:
    counts = slices["status"].value_counts().to_dict()
    for status, n in pixels.get("pixel_failures", {}).items():
        counts[status] = counts.get(status, 0) + n
        counts[str(Status.OK)] -= n
    flags = ["has_duplicate_positions", "has_gaps", "mixed_orientation", "mixed_size", "gantry_tilt"]
    n_files = len(slices)
    return {
        "inputs": [str(d) for d in dicom_dirs], "labels_csv": str(labels_csv) if labels_csv else None,
        "n_files": n_files, "n_ignored_files": files.n_ignored, "counts": dict(sorted(counts.items())),
        "n_skipped": n_files - counts.get(str(Status.OK), 0), "n_series": len(series),
        "series_flags": {flag: int(series[flag].sum()) for flag in flags},
        "n_labeled": int(slices[LABEL_COLUMNS[0]].notna().sum()), "labels": meta.get("labels"),
        "index_reused": meta["reused"], "pixel_pass": pixels,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "files_per_s": round(n_files / max(timings["total_s"], 1e-9), 1),
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    import pydicom

    return {"ich3d": __version__, "pydicom": pydicom.__version__, "numpy": np.__version__,
            "pandas": pd.__version__, "python": platform.python_version()}


def load_index(dataset: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The index of a dataset folder, with pixel-pass failures merged into ``status``/``error``.

    Args:
        dataset: a folder written by :func:`build_series`.

    Returns:
        (slices, series): the tables of ``index/slices.parquet`` and ``index/series.parquet``
        (schemas in the team contracts).

    Raises:
        InputError: not a dataset folder, or an index of another layout version.
    """
    dataset = Path(dataset)
    slices_file, series_file = dataset / SLICES_FILE, dataset / SERIES_FILE
    if not slices_file.is_file() or not series_file.is_file():
        raise InputError(f"{dataset}: not a dataset folder (no {SLICES_FILE} / {SERIES_FILE}); "
                         f"create one with `ich3d build-series --out {dataset}`")
    meta = _read_meta(slices_file)
    if meta is None or meta.get("version") != INDEX_VERSION:
        found = None if meta is None else meta.get("version")
        raise InputError(f"{slices_file}: index layout version {found}, this ich3d reads version {INDEX_VERSION}; "
                         f"rerun `ich3d build-series` to rebuild the index")
    slices, series = pd.read_parquet(slices_file), pd.read_parquet(series_file)
    missing = {"image_id", "path", "series_uid", "slice_index", "status", *LABEL_COLUMNS} - set(slices.columns)
    if missing or "series_uid" not in series.columns:
        raise InputError(f"{dataset}: index without the columns {sorted(missing)}; rerun `ich3d build-series`")
    merged = _merge_failures(dataset, slices, meta["files_id"])
    if merged is not slices:  # some pixels failed: n_ok counts them out
        ok = merged.loc[merged["status"] == str(Status.OK), "series_uid"].value_counts()
        series["n_ok"] = series["series_uid"].map(ok).fillna(0).astype(series["n_ok"].dtype)
    return merged, series


def _merge_failures(dataset: Path, slices: pd.DataFrame, files_id: str) -> pd.DataFrame:
    """Sets status/error of slices that failed in the pixel pass (failure files of this index only);
    ``slices`` itself when none did."""
    parts = [pd.read_parquet(path) for path in sorted((dataset / PIXEL_FAILURES_DIR).glob("part-*.parquet"))
             if (_read_meta(path) or {}).get("files_id") == files_id]
    failures = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if failures.empty:
        return slices
    failures = failures.drop_duplicates("path", keep="last")
    rows = pd.Index(slices["path"]).get_indexer(failures["path"])
    failures = failures[rows >= 0]
    rows = rows[rows >= 0]
    status, error = slices["status"].to_numpy(object), slices["error"].to_numpy(object)
    status[rows], error[rows] = failures["status"].to_numpy(object), failures["error"].to_numpy(object)
    return slices.assign(status=pd.Series(status, dtype=_STR), error=pd.Series(error, dtype=_STR))
