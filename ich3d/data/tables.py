"""Torch datasets over the HU cache: single slices (slice stage) and whole series (sequence stages).

Items are int16 Hounsfield units straight from the memory-mapped cache; windowing, resizing and
augmentation happen on whole batches on the training device (:mod:`ich3d.data.transforms`), so loader
workers only copy small integer arrays and the GPU never waits for float work on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ich3d.dataset.cache import load_series
from ich3d.constants import LABEL_COLUMNS, Status


@dataclass(frozen=True)
class SeriesTable:
    """Flat per-slice arrays for a set of series, in series order then slice order.

    Attributes:
        dataset: the dataset folder (for the cache files).
        series_uids: (n_series,) series identifiers.
        offsets: (n_series + 1,) int64, slices of series i are ``offsets[i]:offsets[i + 1]``.
        labels: (n_slices, 6) float32, NaN where unlabeled.
        readable: (n_slices,) bool, False where the pixels could not be read.
        image_ids: (n_slices,) object, submission image IDs.
        patient_ids: (n_series,) object.
    """

    dataset: Path
    series_uids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    readable: np.ndarray
    image_ids: np.ndarray
    patient_ids: np.ndarray

    @property
    def n_slices(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        """(n_series,) number of slices per series."""
        return np.diff(self.offsets)

    def series_of_slice(self) -> np.ndarray:
        """(n_slices,) int64 index of the series each slice belongs to."""
        return np.repeat(np.arange(len(self.series_uids)), self.lengths)

    def labeled_readable(self) -> np.ndarray:
        """(n_slices,) bool: slices usable as training/validation targets."""
        return self.readable & ~np.isnan(self.labels).any(axis=1)


def build_table(dataset: Path, slices: pd.DataFrame, series_uids: list[str]) -> SeriesTable:
    """Gathers the index rows of ``series_uids`` (in that order) into a :class:`SeriesTable`."""
    rows = slices[slices["series_uid"].isin(series_uids)]
    order = pd.Categorical(rows["series_uid"], categories=series_uids, ordered=True)
    rows = rows.assign(_order=order).sort_values(["_order", "slice_index"], kind="stable")
    lengths = rows.groupby("_order", observed=False).size().to_numpy()
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    patient = rows.groupby("_order", observed=False)["patient_id"].first().to_numpy()
    return SeriesTable(
        dataset=Path(dataset),
        series_uids=np.asarray(series_uids, dtype=object),
        offsets=offsets,
        labels=np.array(rows[list(LABEL_COLUMNS)], dtype=np.float32),  # writable copies (pandas CoW)
        readable=np.array(rows["status"] == Status.OK, dtype=bool),
        image_ids=rows["image_id"].to_numpy(object),
        patient_ids=patient,
    )


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
    """

    def __init__(self, table: SeriesTable, slice_ids: np.ndarray, context: int) -> None:
        self.table = table
        self.slice_ids = np.asarray(slice_ids, dtype=np.int64)
        self.context = context
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
        hu = self._reader(self.table.series_uids[s])[window]
        return torch.from_numpy(np.array(hu)), torch.from_numpy(self.table.labels[flat])


class SeriesDataset(Dataset):
    """Whole series (or random crops of them) for the sequence/finetune stages and inference.

    Item: dict with ``hu`` (N, S, S) int16, ``labels`` (N, 6) float32, ``readable`` (N,) bool,
    ``index`` () int64 series position, ``start`` () int64 first slice of the crop.
    """

    def __init__(self, table: SeriesTable, series_ids: np.ndarray | None = None,
                 crop_len: int = 0, crop_starts: np.ndarray | None = None) -> None:
        self.table = table
        self.series_ids = np.arange(len(table.series_uids)) if series_ids is None else np.asarray(series_ids)
        self.crop_len = crop_len
        self.crop_starts = crop_starts
        self._reader = _CacheReader(table.dataset)

    def __len__(self) -> int:
        return len(self.series_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = int(self.series_ids[i])
        start, stop = int(self.table.offsets[s]), int(self.table.offsets[s + 1])
        first = int(self.crop_starts[i]) if self.crop_starts is not None else 0
        last = min(stop - start, first + self.crop_len) if self.crop_len else stop - start
        hu = self._reader(self.table.series_uids[s])[first:last]
        return {
            "hu": torch.from_numpy(np.array(hu)),
            "labels": torch.from_numpy(self.table.labels[start + first:start + last]),
            "readable": torch.from_numpy(self.table.readable[start + first:start + last]),
            "index": torch.tensor(s),
            "start": torch.tensor(first),
        }


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


def sample_slices(table: SeriesTable, count: int, positive_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Draws an epoch of training slices, ``positive_fraction`` of them with ``any`` = 1.

    Only readable, labeled slices are drawn. ``count`` = 0 means every such slice once, with the
    positives oversampled to reach the fraction.

    Returns:
        (count,) int64 flat slice indices, shuffled.
    """
    usable = np.flatnonzero(table.labeled_readable())
    positive = usable[table.labels[usable, 0] == 1]
    negative = usable[table.labels[usable, 0] == 0]
    count = count or len(usable)
    n_pos = int(round(count * positive_fraction)) if len(positive) else 0
    picks = [rng.choice(negative, count - n_pos, replace=count - n_pos > len(negative))]
    if n_pos:
        picks.append(rng.choice(positive, n_pos, replace=n_pos > len(positive)))
    return rng.permutation(np.concatenate(picks))


def batches(items: np.ndarray, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[np.ndarray]:
    """Splits an epoch's item list into this rank's batches (every rank gets the same count)."""
    per_rank = len(items) // world_size
    mine = items[rank * per_rank:(rank + 1) * per_rank] if world_size > 1 else items
    for start in range(0, len(mine), batch_size):
        yield mine[start:start + batch_size]
