"""Flat per-slice arrays of a set of series (labels, readability, identifiers), built from the index.

A :class:`SeriesTable` is what every stage and the predictor index into: slices of series ``i`` are
rows ``offsets[i]:offsets[i + 1]``. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ich3d.constants import LABEL_COLUMNS, Status


@dataclass(frozen=True)
class Slabs:
    """How the rows of a slab table come from the rows of its source table.

    Attributes:
        first: (n_slabs,) int64 first source slice of each slab, counted within its series.
        count: (n_slabs,) int64 number of source slices in each slab.
        source_readable: (n_source_slices,) bool of the source table.
        source_offsets: (n_series + 1,) int64 of the source table.
    """

    first: np.ndarray
    count: np.ndarray
    source_readable: np.ndarray
    source_offsets: np.ndarray


@dataclass(frozen=True)
class SeriesTable:
    """Flat per-slice arrays for a set of series, in series order then slice order.

    Attributes:
        dataset: the dataset folder (for the cache files).
        series_uids: (n_series,) the series' keys (``series_id`` of the index: a stack of a
            SeriesInstanceUID, docs/design.md §2).
        offsets: (n_series + 1,) int64, slices of series i are ``offsets[i]:offsets[i + 1]``.
        labels: (n_slices, 6) float32, NaN where unlabeled.
        readable: (n_slices,) bool, False where the pixels could not be read.
        image_ids: (n_slices,) object, the images' keys.
        patient_ids: (n_series,) object.
        index_rows: (n_slices,) int64, the row of each slice in the index (``slices.parquet`` order),
            so per-image outputs are built by position, never by a join on a key.
        positions: (n_slices,) float64, mm along the series normal.
        slabs: for a table of thin series resampled into slabs (:mod:`ich3d.data.resample`), how its
            rows come from the cached slices; None for a table of cached slices.
    """

    dataset: Path
    series_uids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    readable: np.ndarray
    image_ids: np.ndarray
    patient_ids: np.ndarray
    index_rows: np.ndarray
    positions: np.ndarray
    slabs: Slabs | None = None

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

    def rows_of(self, series_ids: np.ndarray) -> np.ndarray:
        """(n,) int64 flat slice rows of the series at positions ``series_ids``, in that order."""
        return _rows_of(self.offsets, series_ids)

    def subset(self, series_ids: np.ndarray) -> SeriesTable:
        """The table of the series at positions ``series_ids`` (in that order)."""
        series_ids = np.asarray(series_ids, dtype=np.int64)
        rows = self.rows_of(series_ids)
        slabs = None
        if self.slabs is not None:
            source = _rows_of(self.slabs.source_offsets, series_ids)
            slabs = Slabs(self.slabs.first[rows], self.slabs.count[rows], self.slabs.source_readable[source],
                          offsets_of(np.diff(self.slabs.source_offsets)[series_ids]))
        return SeriesTable(self.dataset, self.series_uids[series_ids], offsets_of(self.lengths[series_ids]),
                           self.labels[rows], self.readable[rows], self.image_ids[rows], self.patient_ids[series_ids],
                           self.index_rows[rows], self.positions[rows], slabs)


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """(n + 1,) int64 offsets of consecutive runs of ``lengths``."""
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _rows_of(offsets: np.ndarray, series_ids: np.ndarray) -> np.ndarray:
    """(n,) int64 rows of the runs ``series_ids`` of ``offsets``, in that order."""
    series_ids = np.asarray(series_ids, dtype=np.int64)
    lengths = np.diff(offsets)[series_ids]
    starts = np.repeat(offsets[series_ids] - np.cumsum(lengths) + lengths, lengths)
    return starts + np.arange(int(lengths.sum()))


def build_table(dataset: Path, slices: pd.DataFrame, series_uids: list[str]) -> SeriesTable:
    """Gathers the index rows of the series keyed ``series_uids`` (``series_id`` values, in that order)
    into a :class:`SeriesTable`."""
    rows = slices[slices["series_id"].isin(series_uids)]
    order = pd.Categorical(rows["series_id"], categories=series_uids, ordered=True)
    rows = rows.assign(_order=order).sort_values(["_order", "slice_index"], kind="stable")
    offsets = offsets_of(rows.groupby("_order", observed=False).size().to_numpy())
    patient = rows.groupby("_order", observed=False)["patient_id"].first().to_numpy()
    return SeriesTable(
        dataset=Path(dataset),
        series_uids=np.asarray(series_uids, dtype=object),
        offsets=offsets,
        labels=np.array(rows[list(LABEL_COLUMNS)], dtype=np.float32),  # writable copies (pandas CoW)
        readable=np.array(rows["status"] == Status.OK, dtype=bool),
        image_ids=rows["image_id"].to_numpy(object),
        patient_ids=patient,
        index_rows=slices.index.get_indexer(rows.index).astype(np.int64),
        positions=rows["position"].to_numpy(np.float64),
    )
