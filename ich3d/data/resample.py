"""Thin series as thick slabs: consecutive slices averaged into slabs of the training thickness.

The sequence head learned the step of the series it was trained on (RSNA: ~5 mm). A 0.625–1.25 mm
series of the same exam has four to eight times as many slices, each noisier, and a hemorrhage
spans four to eight times as many of them: read as it is, the head sees another kind of sequence.
Resampling makes it the kind it knows, as a scanner's thick reconstruction does: the slices of each
slab of ``thickness`` mm along the slice normal are averaged in HU (readable slices only), the slabs
are encoded and read by the head, and every original slice gets the probabilities of its slab
(docs/design.md §11). Only series less than half as thick as the training thickness are resampled
(1.25 mm for a 5 mm model; RSNA's 2.5–6 mm series are read as they are, as in training).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ich3d.constants import MISSING_HU
from ich3d.data.tables import SeriesTable, Slabs, offsets_of

#: Series whose median spacing is below this share of the training thickness are resampled.
MIN_RATIO = 0.5


def slab_ids(positions: np.ndarray, offsets: np.ndarray, thickness: float, min_ratio: float = MIN_RATIO) -> np.ndarray:
    """(n_slices,) int64 slab of each slice, numbered within its series, consecutive from 0.

    A slice lies in slab ``floor((position - first position) / thickness)``; series whose median
    spacing is at least ``min_ratio * thickness`` (or unknown) keep one slab per slice.
    """
    lengths = np.diff(offsets)
    series = np.repeat(np.arange(len(lengths)), lengths)
    local = np.arange(len(positions)) - offsets[series]
    start = positions[offsets[:-1][series]] if len(positions) else positions
    same = np.diff(series) == 0
    steps = pd.Series(np.abs(np.diff(positions))[same]).groupby(series[1:][same]).median()
    median = steps.reindex(np.arange(len(lengths))).to_numpy()
    thin = np.isfinite(median) & (median < min_ratio * thickness)
    raw = np.floor(np.abs(positions - start) / thickness + 1e-6).astype(np.int64)
    slab = np.where(thin[series], raw, local)
    first_of_run = np.r_[True, (slab[1:] != slab[:-1]) | ~same]  # renumber 0, 1, 2... per series
    run = np.cumsum(first_of_run) - 1
    return run - run[offsets[:-1][series]] if len(run) else run


def resample_table(table: SeriesTable, thickness: float, min_ratio: float = MIN_RATIO) -> tuple[SeriesTable, np.ndarray]:
    """The slab table of ``table`` and the slab row of every source row.

    Returns:
        (slabs, slab_of): a :class:`SeriesTable` with one row per slab (labels the maximum over its
        slices, readable when any slice is, position the mean, key and index row of its first slice)
        and ``slabs.slabs`` set; ``slab_of`` (n_source_slices,) int64 row of each source slice in it.
    """
    ids = slab_ids(table.positions, table.offsets, thickness, min_ratio)
    series = table.series_of_slice()
    starts = np.flatnonzero(np.r_[True, (ids[1:] != ids[:-1]) | (series[1:] != series[:-1])]) if len(ids) else ids
    count = np.diff(np.r_[starts, len(ids)])
    slab_of = np.repeat(np.arange(len(starts)), count)
    lengths = np.bincount(series[starts], minlength=len(table.series_uids))
    with np.errstate(invalid="ignore"):
        labels = np.fmax.reduceat(table.labels, starts, axis=0) if len(starts) else table.labels
    resampled = dataclasses.replace(
        table, offsets=offsets_of(lengths), labels=labels,
        readable=np.logical_or.reduceat(table.readable, starts) if len(starts) else table.readable,
        image_ids=table.image_ids[starts], index_rows=table.index_rows[starts],
        positions=np.add.reduceat(table.positions, starts) / count if len(starts) else table.positions,
        slabs=Slabs(first=starts - table.offsets[series[starts]], count=count, source_readable=table.readable,
                    source_offsets=table.offsets))
    return resampled, slab_of


def slab_means(hu: np.ndarray, readable: np.ndarray, first: np.ndarray) -> np.ndarray:
    """HU of each slab: the mean of its readable slices (``MISSING_HU`` where none is).

    Args:
        hu: (N, S, S) int16 HU of one series' slices.
        readable: (N,) bool.
        first: (n_slabs,) increasing first slice of each slab (a slab ends where the next begins).

    Returns:
        (n_slabs, S, S) int16 HU, rounded.
    """
    weights = readable.astype(np.float32)
    summed = np.add.reduceat(hu.astype(np.float32) * weights[:, None, None], first, axis=0)
    n = np.add.reduceat(weights, first)
    out = np.full(summed.shape, MISSING_HU, dtype=np.int16)
    filled = n > 0
    out[filled] = np.rint(summed[filled] / n[filled, None, None]).astype(np.int16)
    return out
