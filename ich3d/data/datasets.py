"""Torch datasets over the HU cache: single slices (slice stage) and whole series (sequence stages).

Items are int16 Hounsfield units straight from the memory-mapped cache; windowing, resizing and
augmentation happen on whole batches on the training device (:mod:`ich3d.data.transforms`), so loader
workers only copy small integer arrays and the GPU never waits for float work on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ich3d.data.acquisition import Acquisition
from ich3d.data.resample import slab_means
from ich3d.data.tables import SeriesTable
from ich3d.dataset.cache import load_series


class _CacheReader:
    """Opens each series' cache file once per process (memory-mapped) and keeps it open."""

    def __init__(self, dataset: Path) -> None:
        self.dataset = dataset
        self._open: dict[str, np.ndarray] = {}

    def __call__(self, series_uid: str) -> np.ndarray:
        array = self._open.get(series_uid)
        if array is None:
            array = self._open[series_uid] = load_series(self.dataset, series_uid, mmap=True)
        return array


class SliceDataset(Dataset):
    """Single slices (with 2.5D neighbours) for the slice stage.

    Item: ``(hu, target)`` with hu (K, S, S) int16 and target (6,) float32, K = 2 * context + 1.
    ``acquisition``: the epoch's acquisition augmentations (training), applied with the draw of the
    slice's series (None: the cache as it is).
    """

    def __init__(self, table: SeriesTable, slice_ids: np.ndarray, context: int,
                 acquisition: Acquisition | None = None) -> None:
        self.table = table
        self.slice_ids = np.asarray(slice_ids, dtype=np.int64)
        self.context = context
        self.acquisition = acquisition
        self._series_of = table.series_of_slice()
        self._reader = _CacheReader(table.dataset)

    def __len__(self) -> int:
        return len(self.slice_ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        flat = int(self.slice_ids[i])
        s = int(self._series_of[flat])
        start, stop = self.table.offsets[s], self.table.offsets[s + 1]
        local = flat - start
        readable = self.table.readable[start:stop]
        window = np.clip(np.arange(local - self.context, local + self.context + 1), 0, stop - start - 1)
        window = np.where(readable[window], window, local)
        uid = self.table.series_uids[s]
        if self.acquisition is None:
            hu = np.array(self._reader(uid)[window])
        else:
            first = int(window.min())
            hu = _acquire(self.acquisition, self._reader(uid), uid, (first, int(window.max()) + 1), readable,
                          start)[window - first]
        return torch.from_numpy(hu), torch.from_numpy(self.table.labels[flat])


class SeriesDataset(Dataset):
    """Whole series (or random crops of them) for the sequence/finetune stages and inference.

    Item: dict with ``hu`` (N, S, S) int16, ``labels`` (N, 6) float32, ``readable`` (N,) bool,
    ``index`` () int64 series position, ``start`` () int64 first slice of the crop.
    ``acquisition``: the epoch's acquisition augmentations (training; None: the cache as it is).
    """

    def __init__(self, table: SeriesTable, series_ids: np.ndarray | None = None, crop_len: int = 0,
                 crop_starts: np.ndarray | None = None, acquisition: Acquisition | None = None) -> None:
        self.table = table
        self.series_ids = np.arange(len(table.series_uids)) if series_ids is None else np.asarray(series_ids)
        self.crop_len = crop_len
        self.crop_starts = crop_starts
        self.acquisition = acquisition
        self._reader = _CacheReader(table.dataset)

    def __len__(self) -> int:
        return len(self.series_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = int(self.series_ids[i])
        start, stop = int(self.table.offsets[s]), int(self.table.offsets[s + 1])
        first = int(self.crop_starts[i]) if self.crop_starts is not None else 0
        last = min(stop - start, first + self.crop_len) if self.crop_len else stop - start
        if self.acquisition is None:
            hu = np.array(self._series_hu(s)[first:last])
        else:
            hu = _acquire(self.acquisition, self._series_hu(s), self.table.series_uids[s], (first, last),
                          self.table.readable[start:stop], start)
        return {
            "hu": torch.from_numpy(hu),
            "labels": torch.from_numpy(self.table.labels[start + first:start + last]),
            "readable": torch.from_numpy(self.table.readable[start + first:start + last]),
            "index": torch.tensor(s),
            "start": torch.tensor(first),
        }

    def _series_hu(self, s: int) -> np.ndarray:
        """(N, S, S) int16 HU of series ``s``: its cache, or for a slab table the slab means of it."""
        volume = self._reader(self.table.series_uids[s])
        slabs = self.table.slabs
        if slabs is None:
            return volume
        start, stop = self.table.offsets[s], self.table.offsets[s + 1]
        readable = slabs.source_readable[slabs.source_offsets[s]:slabs.source_offsets[s + 1]]
        return slab_means(np.asarray(volume), readable, slabs.first[start:stop])


def _acquire(acquisition: Acquisition, volume: np.ndarray, series_uid: str, span: tuple[int, int],
             readable: np.ndarray, offset: int) -> np.ndarray:
    """Slices ``span`` = [first, last) of a series with the epoch's draw of it applied, read with
    ``acquisition.margin`` more on each side (as far as the series goes) for thickness averaging.

    Args:
        volume: (n, S, S) int16 the series (memory map); readable: (n,) bool of its slices.
        offset: flat index of the series' first slice (keys each slice's noise).

    Returns:
        (last - first, S, S) int16 slices first..last-1.
    """
    lo, hi = max(0, span[0] - acquisition.margin), min(len(volume), span[1] + acquisition.margin)
    return acquisition.apply(np.asarray(volume[lo:hi]), series_uid, np.arange(lo, hi) + offset, readable[lo:hi],
                             (span[0] - lo, span[1] - lo))


def pad_series(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Collates series of different lengths, padding at the end.

    Returns:
        ``hu`` (B, N, S, S) int16, ``labels`` (B, N, 6) float32 (NaN on padding), ``readable`` and
        ``mask`` (B, N) bool (mask: real slice), ``index``, ``start`` (B,) int64.
    """
    n_max = max(len(item["hu"]) for item in items)
    size = items[0]["hu"].shape[-1]
    batch = len(items)
    hu = torch.zeros((batch, n_max, size, size), dtype=torch.int16)
    labels = torch.full((batch, n_max, items[0]["labels"].shape[-1]), float("nan"))
    readable = torch.zeros((batch, n_max), dtype=torch.bool)
    mask = torch.zeros((batch, n_max), dtype=torch.bool)
    for b, item in enumerate(items):
        n = len(item["hu"])
        hu[b, :n], labels[b, :n], readable[b, :n], mask[b, :n] = item["hu"], item["labels"], item["readable"], True
    index = torch.stack([item["index"] for item in items])
    start = torch.stack([item["start"] for item in items])
    return {"hu": hu, "labels": labels, "readable": readable, "mask": mask, "index": index, "start": start}
