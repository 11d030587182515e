"""Batched prediction over a :class:`~ich3d.data.tables.SeriesTable`: slice embeddings, then the head.

Inference runs in two passes: the encoder embeds every readable slice once (optionally also its
left-right flip), then the sequence head runs over each series' embedding sequence (optionally also
reversed). Test-time augmentation therefore costs one extra encoder pass at most. Unreadable slices
get no encoder pass; the model's missing-slice embedding stands in for them, so they are predicted
from their series context.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from ich3d.config import DataConfig, InferConfig
from ich3d.constants import LABELS
from ich3d.data.datasets import SeriesDataset, pad_series
from ich3d.data.tables import SeriesTable
from ich3d.data.transforms import AugmentParams, series_neighbours, to_input
from ich3d.models.model import IchModel
from ich3d.runtime import Runtime, eval_mode

_TORCH_DTYPES = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}


def series_loader(table: SeriesTable, series_ids: np.ndarray, batch_size: int, num_workers: int,
                  runtime: Runtime, crop_len: int = 0, crop_starts: np.ndarray | None = None) -> DataLoader:
    """A loader of padded series batches (see :func:`ich3d.data.datasets.pad_series`)."""
    dataset = SeriesDataset(table, series_ids, crop_len=crop_len, crop_starts=crop_starts)
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


def encode_table(model: IchModel, table: SeriesTable, data: DataConfig, runtime: Runtime,
                 series_ids: np.ndarray, flips: tuple[bool, ...] = (False,), batch_series: int = 4,
                 num_workers: int = 0, advance: Callable[[int], None] | None = None,
                 out: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Embeds the readable slices of ``series_ids``, once per view, in one pass over the data.

    Args:
        flips: one view per entry: the slices as they are (False) or flipped left-right (True).
        advance: called with the number of series done after each batch (progress bars).
        out: one (n_slices, F) array per view to write into (any float dtype, e.g. an fp16 memory
            map); None allocates float32 arrays.

    Returns:
        One (n_slices, F) array per view, for the whole table; rows of other series and of unreadable
        slices are left as they were (zero when allocated here).
    """
    views = out
    with eval_mode(model):
        for batch in series_loader(table, series_ids, batch_series, num_workers, runtime):
            x, keep = series_input(batch, data, runtime)
            rows = flat_positions(table, batch)[keep.cpu()].numpy()
            for view, flip in enumerate(flips):
                with runtime.autocast():
                    emb = model.encode(x.flip(-1) if flip else x).float().cpu()
                if views is None:
                    views = [np.zeros((table.n_slices, emb.shape[1]), dtype=np.float32) for _ in flips]
                views[view][rows] = emb.to(_TORCH_DTYPES[views[view].dtype]).numpy()
            if advance is not None:
                advance(len(batch["index"]))
    if views is None:
        raise ValueError("encode_table: no series to encode")
    return views


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


def head_logits(model: IchModel, table: SeriesTable, embeddings: np.ndarray, series_ids: np.ndarray,
                runtime: Runtime, reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs the head over whole series of cached embeddings.

    Args:
        embeddings: (n_slices, F) float16 or float32 array (e.g. memory-mapped) of the table's slices;
            only the batch's rows are read.

    Returns:
        logits: (B, N, 6) float32 on the CPU, in the order of ``index``.
        index, mask: as :func:`sequence_index`.
    """
    index, mask = sequence_index(table, series_ids, reverse)
    readable = torch.from_numpy(table.readable)[index] & mask
    emb = torch.from_numpy(np.asarray(embeddings[index.numpy()], dtype=np.float32)).to(runtime.device)
    with runtime.autocast():
        logits = model.head(emb, mask.to(runtime.device), readable.to(runtime.device))
    return logits.float().cpu(), index, mask


def predict_table(model: IchModel, table: SeriesTable, data: DataConfig, runtime: Runtime,
                  series_ids: np.ndarray, tta: InferConfig = InferConfig(tta_flip=False, tta_reverse=False),
                  batch_series: int = 4, num_workers: int = 0,
                  advance: Callable[[int], None] | None = None) -> np.ndarray:
    """Per-slice probabilities of ``series_ids``, averaged over the test-time augmentations.

    Works through the series in chunks of ``64 * batch_series`` (a multiple of every batch size
    used, so the batches and results are those of a single pass): only a chunk's embeddings are held.

    Returns:
        (n_slices, 6) float32 probabilities; NaN on rows of other series.
    """
    flips = (False, True) if tta.tta_flip else (False,)
    probs = np.full((table.n_slices, len(LABELS)), np.nan, dtype=np.float32)
    chunk = 64 * batch_series
    for start in range(0, len(series_ids), chunk):
        part = table.subset(series_ids[start:start + chunk])
        everything = np.arange(len(part.series_uids))
        views = encode_table(model, part, data, runtime, everything, flips, batch_series, num_workers, advance)
        probs[table.rows_of(series_ids[start:start + chunk])] = predict_from_embeddings(
            model, part, views, runtime, everything, tta.tta_reverse)
    return probs


def predict_from_embeddings(model: IchModel, table: SeriesTable, views: list[np.ndarray], runtime: Runtime,
                            series_ids: np.ndarray, tta_reverse: bool = False, batch_series: int = 64) -> np.ndarray:
    """Head probabilities of ``series_ids`` from cached embedding views (e.g. plain and flipped), averaged.

    Returns:
        (n_slices, 6) float32 probabilities; NaN on rows of other series.
    """
    total = torch.zeros((table.n_slices, len(LABELS)))
    count = 0
    with eval_mode(model):
        for emb in views:
            for reverse in [False, True] if tta_reverse else [False]:
                for start in range(0, len(series_ids), batch_series):
                    chunk = series_ids[start:start + batch_series]
                    logits, index, mask = head_logits(model, table, emb, chunk, runtime, reverse)
                    total[index[mask]] += torch.sigmoid(logits[mask])
                count += 1
    probs = (total / count).numpy()
    covered = np.zeros(table.n_slices, dtype=bool)
    covered[table.rows_of(series_ids)] = True
    probs[~covered] = np.nan
    return probs
