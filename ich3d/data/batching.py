"""Padded series batches: the loader, the encoder input of a batch, and flat slice indices of series.

What training and inference both need to turn a :class:`~ich3d.data.tables.SeriesTable` into model
input: a loader of padded series (:func:`series_loader`), the windowed images of a batch's readable
slices (:func:`series_input`) and (B, N) flat slice indices of series or crops of them
(:func:`sequence_index`, :func:`flat_positions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from ich3d.config import AugmentConfig, DataConfig
from ich3d.data.acquisition import Acquisition, epoch_acquisition, series_key
from ich3d.data.datasets import SeriesDataset, pad_series
from ich3d.data.tables import SeriesTable
from ich3d.data.transforms import AugmentParams, sample_augment, series_neighbours, to_input
from ich3d.runtime import Runtime

#: Augmented views draw as epochs from here on: never a draw the slice stage trained on.
_VIEW_DRAWS = 1_000_000


@dataclass(frozen=True)
class AugmentedView:
    """The training augmentations drawn once per series: an augmented view of a table's embeddings.

    A series' draw (acquisition, flip, affine, window jitter) is a pure function of the seed, the
    view's number and the series UID, so a view is the same whatever the batching, rank or table order.

    Attributes:
        augment: the ``augment`` config.
        seed: the run's seed.
        number: the view's number (0, 1, ...).
    """

    augment: AugmentConfig
    seed: int
    number: int

    def acquisition(self) -> Acquisition | None:
        """The view's acquisition draws (None when every acquisition augmentation is off)."""
        return epoch_acquisition(self.augment, self.seed, _VIEW_DRAWS + self.number)

    def params(self, series_uids: Sequence[str]) -> AugmentParams:
        """(B) flip, affine and window parameters of a batch's series."""
        draws = [sample_augment(1, self.augment, torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, self.number, series_key(uid)]).generate_state(1)[0])))
            for uid in series_uids]
        return AugmentParams.cat(draws)


def series_loader(dataset: SeriesDataset, batch_size: int, num_workers: int, runtime: Runtime) -> DataLoader:
    """A loader of padded series batches of ``dataset`` in its order (see :func:`ich3d.data.datasets.pad_series`)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=pad_series, pin_memory=runtime.device.type == "cuda",
                      persistent_workers=False)


def series_input(batch: dict[str, torch.Tensor], data: DataConfig, runtime: Runtime,
                 params: AugmentParams | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder input of a padded series batch.

    Args:
        params: per-series (B) augmentation parameters, applied to all slices of a series; None: none.

    Returns:
        x: (M, C, S, S) float32 windowed images of the real, readable slices (row-major over B, N).
        keep: (B, N) bool, which slices x holds.
    """
    hu = batch["hu"].to(runtime.device, non_blocking=True)
    readable = batch["readable"].to(runtime.device)
    keep = readable & batch["mask"].to(runtime.device)
    context = data.context if data.input == "bsb25d" else 0
    stacked = series_neighbours(hu, readable, context)[keep]  # (M, K, S0, S0)
    if params is None:
        return to_input(stacked, data.image_size), keep
    series_of = torch.arange(len(hu))[:, None].expand(keep.shape)[keep.cpu()]
    return to_input(stacked, data.image_size, params.take(series_of), augment=True), keep


def flat_positions(table: SeriesTable, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, N) int64 flat slice index of each position of a padded batch (-1 on padding)."""
    n = batch["mask"].shape[1]
    first = torch.from_numpy(table.offsets[batch["index"].numpy()]) + batch["start"]
    flat = first[:, None] + torch.arange(n)[None, :]
    return torch.where(batch["mask"], flat, torch.full_like(flat, -1))


def sequence_index(table: SeriesTable, series_ids: np.ndarray, reverse: bool = False,
                   starts: np.ndarray | None = None, crop_len: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat slice indices of a batch of series (or crops of them) as a padded (B, N) matrix.

    Args:
        series_ids: (B,) series positions in ``table``.
        reverse: order each series from its last slice to its first.
        starts: (B,) first slice of each crop (None: 0); ``crop_len`` > 0 caps the crop length.

    Returns:
        index: (B, N) int64 flat slice index (0 on padding).
        mask: (B, N) bool, real slices.
    """
    lengths = torch.from_numpy(table.lengths[series_ids])
    if crop_len:
        lengths = lengths.clamp(max=crop_len)
    n = int(lengths.max())
    position = torch.arange(n)[None, :].expand(len(series_ids), n)
    mask = position < lengths[:, None]
    if reverse:
        position = lengths[:, None] - 1 - position
    first = torch.from_numpy(table.offsets[series_ids])
    if starts is not None:
        first = first + torch.from_numpy(np.asarray(starts, dtype=np.int64))
    index = first[:, None] + position
    return torch.where(mask, index, torch.zeros_like(index)), mask
