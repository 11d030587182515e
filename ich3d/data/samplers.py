"""What an epoch draws: slices with positives oversampled (slice stage), batches per rank."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ich3d.data.tables import SeriesTable


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
