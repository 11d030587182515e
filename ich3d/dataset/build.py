"""``ich3d build-series``: DICOM folders, NIfTI volumes (+ labels) → dataset folder (index, HU cache, build.json).

Two passes over a process pool. The header pass reads every file's header (never its pixels) in
chunks and returns small typed DataFrames; series are then grouped, sorted and flagged for the whole
index at once (:mod:`ich3d.dataset.series`), labels joined (:mod:`ich3d.dataset.labels`) and the
index written (:mod:`ich3d.dataset.index`). The pixel pass gives each worker whole series: it reads
the pixels, converts and resizes them and writes ``cache/<series_id>.npy`` itself, returning only
failure records (sending arrays back to the parent capped throughput at ~250 files/s on 2 cores).

Resuming: the index is reused when the input files (paths, sizes, mtimes) and the labels file are
unchanged. Each finished series is appended to a journal (``index/pixel_failures/part-<I>.jsonl``)
with its failures, after its cache file was written atomically, so a killed build resumes where it
stopped and no failure record is lost; a cache file that is damaged (its ``.npy`` header does not
match the series) is rebuilt. ``--num-parts K --part-id I`` share one index; part I builds the series
whose row i in series.parquet satisfies ``i % K == I``.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ich3d import __version__
from ich3d.atomic import write_json_atomic
from ich3d.constants import LABEL_COLUMNS, Status
from ich3d.dataset.cache import cache_file_ok
from ich3d.dataset.crop import CROP_COLUMNS
from ich3d.dataset.pixel_pass import CacheJournal, cache_series
from ich3d.dataset.files import InputFiles, collect_files
from ich3d.dataset.index import (
    FAILURE_COLUMNS,
    STR,
    index_for,
    part_series,
    write_parquet,
)
from ich3d.dataset.nifti import NIFTI_SYNTAX
from ich3d.dataset.options import BuildOptions
from ich3d.dataset.roles import choice_table
from ich3d.errors import Ich3dError, InputError
from ich3d.folders import FolderLock, prepare_output
from ich3d.layout import DatasetFolder
from ich3d.progress import progress_bar
from ich3d.workers import process_pool

log = logging.getLogger(__name__)


class _Pool(NamedTuple):
    """The build's process pool (None: this process) and its number of workers."""

    executor: Executor | None
    workers: int


def _pixel_pass(folder: DatasetFolder, slices: pd.DataFrame, series: pd.DataFrame, files_id: str, pool: _Pool,
                options: BuildOptions) -> dict:
    """Builds this part's missing or damaged cache files; writes its failures and crops parquets; returns counts."""
    size, crop, part_id = options.image_size, options.crop, options.shard.part_id
    mine = part_series(series[series["build_cache"]], options.shard)
    journal = CacheJournal(folder, part_id, files_id, size, crop)
    done = {} if options.overwrite else journal.finished()
    length = dict(zip(series["series_id"], series["n_slices"].astype(int)))
    damaged = [uid for uid in mine if uid in done and folder.cache_file(uid).exists()
               and not cache_file_ok(folder.cache_file(uid), length[uid], size)]
    todo = [uid for uid in mine if uid not in done or uid in damaged or not folder.cache_file(uid).is_file()]
    if damaged:
        log.warning("%d damaged cache files are rebuilt, e.g. %s", len(damaged), folder.cache_file(damaged[0]))
    todo.sort(key=lambda uid: -length[uid])  # longest first: no long series left for the end
    folder.cache.mkdir(parents=True, exist_ok=True)
    _log_pixel_scope(slices, series, mine, todo)
    try:
        with progress_bar(options.progress, "pixels", sum(length[u] for u in todo)) as advance:
            done |= cache_series(folder, slices, todo, journal, pool.executor, 4 * pool.workers, advance)
    except BrokenProcessPool as exc:
        raise Ich3dError(f"{folder.root}: a worker process died (out of memory?); rerun the same command to resume "
                         f"(finished series are kept)") from exc
    except OSError as exc:
        raise Ich3dError(f"{folder.cache}: writing the cache failed ({exc}); fix it and rerun the same command "
                         f"to resume") from exc
    records = [tuple(f) for uid in mine for f in done[uid].failures]
    failures = pd.DataFrame(records, columns=list(FAILURE_COLUMNS), dtype=STR)
    meta = {"files_id": files_id, "size": size, "crop": crop}
    write_parquet(failures, folder.failures(part_id), meta)
    boxes = [(uid, *done[uid].box) for uid in mine if done[uid].box is not None]
    folder.crops.mkdir(parents=True, exist_ok=True)
    write_parquet(pd.DataFrame(boxes, columns=["series_id", *CROP_COLUMNS]).astype({"series_id": STR}),
                  folder.crop_file(part_id), meta)
    return {"crop": crop, "series_cropped": len(boxes),"series_in_part": len(mine), "series_built": len(todo), "series_already_done": len(mine) - len(todo),
            "damaged_cache_files_rebuilt": len(damaged), "slices_built": sum(length[u] for u in todo),
            "pixel_failures": failures["status"].value_counts().to_dict()}


def _log_pixel_scope(slices: pd.DataFrame, series: pd.DataFrame, mine: list[str], todo: list[str]) -> None:
    """One line saying which of the files the pixel pass reads and where the others went, so that its
    count (images of the series to cache) adds up to the number of files."""
    cached = slices["series_id"].isin(series.loc[series["build_cache"], "series_id"])
    in_part = slices["series_id"].isin(mine)
    others = {"already cached": int(slices["series_id"].isin(set(mine) - set(todo)).sum()),
              "in other parts": int((cached & ~in_part).sum()),
              "in series not read (other role or not chosen)": int((~cached & (slices["status"] == Status.OK)).sum()),
              **slices.loc[~cached & (slices["status"] != Status.OK), "status"].astype(str).value_counts().to_dict()}
    n_todo = int(slices["series_id"].isin(todo).sum())
    rest = ", ".join(f"{n} {what}" for what, n in others.items() if n)
    log.info("pixels: %d of %d images to cache (%d series)%s", n_todo, len(slices), len(todo),
             f"; the other {len(slices) - n_todo}: {rest}" if rest else "")


def build_series(dicom_dirs: Sequence[Path], out: Path, labels_csv: Path | None = None,
                 options: BuildOptions = BuildOptions(), *,
                 before_pixels: Callable[[pd.DataFrame, pd.DataFrame], None] | None = None) -> dict[str, Any]:
    """Indexes DICOM folders (and NIfTI volumes) into series, joins labels and caches Hounsfield units.

    Args:
        dicom_dirs: folders searched recursively, or NIfTI files (see
            :func:`ich3d.dataset.files.collect_files`).
        out: the dataset folder (created).
        labels_csv: labels in ``options.labels_format``, or None.
        options: size, crop, workers, shard, series rules... (:class:`BuildOptions`).
        before_pixels: called with the index (slices, series) once it is written, before the pixel
            pass (``infer`` refuses requested images without a file there, before any pixel is read).

    Returns:
        The summary written to ``build.json`` (``build-part-<I>.json`` when num_parts > 1): counts by
        status (after this part's pixel pass), ``n_skipped`` (files not usable), series and label
        reports, timings and versions.

    Raises:
        InputError: missing/empty folders, a bad labels CSV, bad arguments, an output folder that
            cannot be written or is in use by another job.
    """
    began = time.perf_counter()
    workers = options.workers or os.cpu_count() or 1
    num_parts, part_id = options.shard.num_parts, options.shard.part_id
    folder = DatasetFolder(prepare_output(Path(out), "--out"))
    part = f"part {part_id} of dataset folder {folder.root}" if num_parts > 1 else f"dataset folder {folder.root}"
    with process_pool(workers) as pool, FolderLock(folder.part_lock(part_id), part):  # a second build is refused
        with FolderLock(folder.lock, f"dataset folder {folder.root}", wait=True):  # parts take turns on the index
            files = collect_files(dicom_dirs, exclude=folder.root, follow_links=options.follow_links)
            log.info("%d candidate files in %d folders (%d ignored)", len(files.paths), len(dicom_dirs),
                     files.n_ignored)
            for path, error in files.unreadable:
                log.warning("cannot read %s (%s): its files are left out", path, error)
            if files.outside_links:
                log.warning("%d links lead out of the input, e.g. %s -> %s: not followed (--follow-links follows "
                            "them)", len(files.outside_links), *files.outside_links[0])
            timings = {"collect_s": time.perf_counter() - began}
            slices, series, meta = index_for(folder, files, labels_csv, pool, options)
            timings["index_s"] = time.perf_counter() - began - timings["collect_s"]  # header pass included
        if before_pixels is not None:
            before_pixels(slices, series)
        pixels = {} if options.index_only else _pixel_pass(folder, slices, series, files.files_id,
                                                           _Pool(pool, workers), options)
        timings["total_s"] = time.perf_counter() - began
        timings["pixel_s"] = timings["total_s"] - timings["index_s"] - timings["collect_s"]
        timings["header_s"] = 0.0 if meta["reused"] else meta["header_s"]
        summary = _summary(dicom_dirs, labels_csv, files, slices, series, meta, pixels, timings)
        summary["settings"] = options.settings(workers)
        write_json_atomic(folder.build_summary(num_parts, part_id), summary)
    return summary


def require_usable(summary: dict[str, Any], out: Path) -> None:
    """Refuses a build in which no file is a usable CT image (a folder of junk, reports or scouts only).

    Args:
        summary: :func:`build_series`'s summary.
        out: the dataset folder (its ``build.json`` says why each file is not used).

    Raises:
        InputError: no usable file.
    """
    if summary["n_files"] == summary["n_skipped"]:
        report = DatasetFolder(Path(out)).build_summary(summary["settings"]["num_parts"], summary["settings"]["part_id"])
        raise InputError(f"none of the {summary['n_files']} files under {', '.join(summary['inputs'])} is a usable CT "
                         f"image ({summary['counts']}); see {report} for each file's reason")


def _summary(dicom_dirs: Sequence[Path], labels_csv: Path | None, files: InputFiles, slices: pd.DataFrame,
             series: pd.DataFrame, meta: dict, pixels: dict, timings: dict) -> dict[str, Any]:
    counts = slices["status"].value_counts().to_dict()
    for status, n in pixels.get("pixel_failures", {}).items():
        counts[status] = counts.get(status, 0) + n
        counts[str(Status.OK)] -= n
    flags = ["has_duplicate_positions", "all_one_position", "has_gaps", "mixed_orientation", "gantry_tilt"]
    n_files = len(slices)  # images: a multi-frame file or a NIfTI volume holds several
    nifti = slices[(slices["transfer_syntax"] == NIFTI_SYNTAX) & (slices["error"] != "")]
    return {
        "inputs": [str(d) for d in dicom_dirs], "labels_csv": str(labels_csv) if labels_csv else None,
        "n_files": n_files, "n_input_files": len(files.paths), "n_ignored_files": files.n_ignored,
        "counts": dict(sorted(counts.items())),
        "transfer_syntaxes": slices["transfer_syntax"].fillna("none").value_counts().to_dict(),
        "nifti_notes": nifti.drop_duplicates("path")[["path", "error"]].to_dict("records"),
        "unreadable_paths": [{"path": path, "error": error} for path, error in files.unreadable],
        "outside_links": [{"path": path, "target": target} for path, target in files.outside_links],
        "directory_files": meta.get("directory_files", []),
        "n_skipped": n_files - counts.get(str(Status.OK), 0), "n_series": len(series),
        "n_series_uids_split": len(series.loc[series["n_stacks"] > 1, ["patient_id", "study_uid", "series_uid"]]
                                   .drop_duplicates()),
        "series_flags": {flag: int(series[flag].sum()) for flag in flags},
        "series_roles": series["role"].value_counts().to_dict(), "n_series_predicted": int(series["predict"].sum()),
        "series_choice": choice_table(series),
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


