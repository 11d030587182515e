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


def sampling_logit_offset(table: SeriesTable, positive_fraction: float) -> np.ndarray:
    """(6,) log-odds of each label in epochs of :func:`sample_slices` minus its natural log-odds.

    A sampled epoch holds ``positive_fraction`` slices with ``any`` = 1, so label j appears at the
    rate q_j = f · P(j | any) + (1 - f) · P(j | no any) instead of its prevalence p_j. A model trained
    on such epochs predicts logit(q_j); subtracting logit(q_j) - logit(p_j) gives the natural odds.
    Labels absent from the table (or always present) get 0.
    """
    labels = table.labels[table.labeled_readable()]
    positive = labels[:, 0] == 1
    if not positive.any() or positive.all():
        return np.zeros(labels.shape[1], dtype=np.float32)
    natural = labels.mean(axis=0)
    sampled = positive_fraction * labels[positive].mean(axis=0) + (1 - positive_fraction) * labels[~positive].mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.log(sampled / (1 - sampled)) - np.log(natural / (1 - natural))
    return np.where(np.isfinite(offset), offset, 0.0).astype(np.float32)


def batches(items: np.ndarray, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[np.ndarray]:
    """Splits an epoch's item list into this rank's batches (every rank gets the same count)."""
    per_rank = len(items) // world_size
    mine = items[rank * per_rank:(rank + 1) * per_rank] if world_size > 1 else items
    for start in range(0, len(mine), batch_size):
        yield mine[start:start + batch_size]
