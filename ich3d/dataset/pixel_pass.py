"""The pixel pass's bookkeeping: which series to build, on which worker, and the journal of finished ones.

Workers get whole series (:func:`ich3d.dataset.cache.write_series_cache`) and write the cache files
themselves, returning only failure records and the crop square; at most a few series per worker are
in flight, so memory stays flat. Each finished series is appended to a journal after its file was
written atomically, so a killed build resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, wait

import numpy as np
import pandas as pd

from ich3d.dataset.cache import CacheSlice, SeriesCache, write_series_cache
from ich3d.layout import DatasetFolder


class CacheJournal:
    """Finished series of the pixel pass, with their failures: ``index/pixel_failures/part-<I>.jsonl``.

    One JSON line per series, appended (and flushed) after its cache file was written atomically,
    so after a kill every journaled series has a complete file, its failure records and its crop. An
    entry counts only for the same input files (``files_id``), image size and crop. The journals of
    all parts are read, so finished work survives a change of --num-parts.
    """

    def __init__(self, dataset: DatasetFolder, part_id: int, files_id: str, size: int, crop: str) -> None:
        self.folder = dataset.pixel_failures
        self.path = dataset.journal(part_id)
        self.key = {"files_id": files_id, "size": size, "crop": crop}

    def finished(self) -> dict[str, SeriesCache]:
        """series_uid → its :class:`SeriesCache` (the latest entry wins)."""
        done: dict[str, SeriesCache] = {}
        for path in sorted(self.folder.glob("part-*.jsonl")):
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError):  # a line cut by a kill
                    entry = json.loads(line)
                    if {k: entry.get(k) for k in self.key} == self.key:
                        done[entry["series_uid"]] = SeriesCache(entry["failures"], entry["box"])
        return done

    @contextlib.contextmanager
    def writer(self) -> Iterator[Callable[[str, SeriesCache], None]]:
        """Yields ``append(series_uid, result)``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as file:
            if file.tell() and (file.seek(-1, os.SEEK_END), file.read(1))[1] != b"\n":
                file.write(b"\n")  # end a line cut by a kill, so the next entry starts clean

            def append(series_uid: str, result: SeriesCache) -> None:
                entry = self.key | {"series_uid": series_uid, "failures": [list(f) for f in result.failures],
                                    "box": result.box}
                file.write(json.dumps(entry).encode() + b"\n")
                file.flush()

            yield append


def _series_blocks(slices: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """series_uid → (start, stop) rows of its slices: the index is sorted by series, then slice_index."""
    n = int(slices["slice_index"].notna().sum())
    uids = slices["series_uid"].iloc[:n].to_numpy(object)
    starts = np.flatnonzero(np.r_[True, uids[1:] != uids[:-1]]) if n else np.zeros(0, dtype=np.int64)
    return {uids[a]: (int(a), int(b)) for a, b in zip(starts, np.r_[starts[1:], n])}


_TASK_FILL = {name: -1 for name in ("pixel_offset", "rows", "cols", "bits_allocated", "bits_stored",
                                    "pixel_representation")} | {"frame": 0, "transfer_syntax": "", "status": ""}


def _task_table(slices: pd.DataFrame) -> pd.DataFrame:
    """The :class:`CacheSlice` columns of the index, missing values filled (-1, "")."""
    return slices[list(CacheSlice._fields)].fillna(_TASK_FILL)


def _run_series(pool: Executor | None, uids: Sequence[str], task: Callable[[str], list[CacheSlice]],
                out: DatasetFolder, size: int, crop: str, limit: int) -> Iterator[tuple[str, SeriesCache]]:
    """Yields (series_uid, result) as series finish, with at most ``limit`` series in flight."""
    if pool is None:
        for uid in uids:
            yield uid, write_series_cache(task(uid), out.cache_file(uid), size, crop)
        return
    queue, pending = iter(uids), {}
    while True:
        for uid in queue:
            pending[pool.submit(write_series_cache, task(uid), out.cache_file(uid), size, crop)] = uid
            if len(pending) >= limit:
                break
        if not pending:
            return
        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            yield pending.pop(future), SeriesCache(*future.result())


def cache_series(dataset: DatasetFolder, slices: pd.DataFrame, series_uids: Sequence[str], journal: CacheJournal,
                 pool: Executor | None = None, in_flight: int = 8,
                 advance: Callable[[int], None] = lambda n: None) -> dict[str, SeriesCache]:
    """Builds the cache files of ``series_uids`` (in this order), journaling each finished series.

    Workers get whole series and write the files themselves, returning only failure records; the
    :class:`CacheSlice` lists of at most ``in_flight`` series exist at a time, so memory stays flat.

    Args:
        dataset: the dataset folder (files go to its ``cache/``).
        slices: the index, sorted by series then slice_index (as written by ``build_series``).
        series_uids: the series to build.
        journal: where finished series are recorded; its key holds the output side S and the crop.
        pool: process pool, or None to work in this process.
        in_flight: series submitted to the pool at a time (a few per worker keeps every worker busy).
        advance: called with each finished series' number of slices (progress).

    Returns:
        series_uid → its :class:`SeriesCache` (failure records and crop square).
    """
    table, blocks = _task_table(slices), _series_blocks(slices)

    def task(uid: str) -> list[CacheSlice]:
        start, stop = blocks[uid]
        return [CacheSlice(*row) for row in table.iloc[start:stop].itertuples(index=False, name=None)]

    done = {}
    with journal.writer() as append:
        for uid, result in _run_series(pool, series_uids, task, dataset, journal.key["size"], journal.key["crop"],
                                       in_flight):
            append(uid, result)
            done[uid] = result
            advance(blocks[uid][1] - blocks[uid][0])
    return done
