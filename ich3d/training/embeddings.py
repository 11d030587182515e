"""The sequence stage's slice embeddings: fp16 ``.npy`` files per view, memory-mapped, gathered per batch.

Embedding every training slice once and training the head on the cached embeddings is what makes the
sequence stage cheap; at RSNA scale (~600,000 slices, F = 2,048) one view is ~2.5 GB in fp16. The
files are written in place (each rank fills its series' rows of a shared memory map) and read back
memory-mapped, so no whole-table copy is ever made: a batch gathers its (B, N, F) rows and converts
only those to float32. A ``meta.json`` written last marks a complete set and says what it was made
from (fold, table, encoder checkpoint, input settings); a set that does not match is rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ich3d.atomic import write_json_atomic
from ich3d.data.batching import AugmentedView
from ich3d.data.tables import SeriesTable
from ich3d.errors import ConfigError
from ich3d.inference.predictor import Predictor
from ich3d.layout import EmbeddingsFolder
from ich3d.runtime import barrier



@dataclass(frozen=True)
class Embeddings:
    """Cached embeddings of a table's slices, one read-only memory map per view.

    Attributes:
        views: (n_slices, F) float16 arrays; view 0 is the plain image, view 1 (when present) its
            left-right flip, the last ``augmented`` views the series under augmentation draws
            (training features only). Rows of unreadable slices are zero.
    """

    views: tuple[np.ndarray, ...]
    augmented: int = 0

    @property
    def tta(self) -> tuple[np.ndarray, ...]:
        """The views the head's test-time augmentation averages (plain and flipped; no augmented view)."""
        return self.views[:len(self.views) - self.augmented]

    def gather(self, view: np.ndarray, index: torch.Tensor) -> torch.Tensor:
        """The embeddings of a batch of series.

        Args:
            view: (B,) int, the view each series is taken from.
            index: (B, N) int64 flat slice rows (as :func:`ich3d.data.batching.sequence_index`).

        Returns:
            (B, N, F) float32 CPU tensor.
        """
        rows = index.numpy()
        out = np.empty(rows.shape + (self.views[0].shape[1],), dtype=np.float32)
        for v in np.unique(view):
            chosen = view == v
            out[chosen] = self.views[int(v)][rows[chosen]]
        return torch.from_numpy(out)


@dataclass(frozen=True)
class OutOfFold:
    """The embeddings of a training table stacked from other folds' validation embeddings.

    Every training series of fold k lies in the validation fold j of another fold, whose encoder did
    not see it: its rows are read from that fold's embeddings (docs/design.md §4).

    Attributes:
        parts: the other folds' validation :class:`Embeddings`.
        part_of: (n_slices,) int64, the part each row of the training table comes from.
        row_in_part: (n_slices,) int64, its row there.
    """

    parts: tuple[Embeddings, ...]
    part_of: np.ndarray
    row_in_part: np.ndarray

    @property
    def views(self) -> tuple[int, ...]:
        """The view numbers (every part has the same views)."""
        return tuple(range(len(self.parts[0].views)))

    def gather(self, view: np.ndarray, index: torch.Tensor) -> torch.Tensor:
        """As :meth:`Embeddings.gather`: (B,) views and (B, N) rows → (B, N, F) float32."""
        rows = index.numpy()
        part, local = self.part_of[rows], self.row_in_part[rows]
        views = np.broadcast_to(np.asarray(view)[:, None], rows.shape)
        out = np.empty(rows.shape + (self.parts[0].views[0].shape[1],), dtype=np.float32)
        for p, embeddings in enumerate(self.parts):
            for v, array in enumerate(embeddings.views):
                chosen = (part == p) & (views == v)
                out[chosen] = array[local[chosen]]
        return torch.from_numpy(out)


def out_of_fold(train: SeriesTable, valid_tables: dict[int, SeriesTable],
                folders: dict[int, EmbeddingsFolder]) -> OutOfFold:
    """The :class:`OutOfFold` embeddings of ``train`` from the validation embeddings in ``folders``.

    Args:
        train: a fold's training table.
        valid_tables: fold → its validation table, for every other fold.
        folders: fold → the folder of its validation embeddings (:func:`cached_embeddings`).

    Raises:
        ConfigError: a fold's embeddings are missing or were made from another table.
    """
    folds = sorted(valid_tables)
    where = {uid: (i, s) for i, fold in enumerate(folds) for s, uid in enumerate(valid_tables[fold].series_uids)}
    part = np.empty(train.n_slices, dtype=np.int64)
    row = np.empty(train.n_slices, dtype=np.int64)
    for s, uid in enumerate(train.series_uids):
        i, position = where[uid]
        source = valid_tables[folds[i]]
        start, stop = train.offsets[s], train.offsets[s + 1]
        part[start:stop] = i
        row[start:stop] = source.offsets[position] + np.arange(stop - start)
    return OutOfFold(tuple(open_embeddings(folders[f], valid_tables[f]) for f in folds), part, row)


def open_embeddings(folder: EmbeddingsFolder, table: SeriesTable) -> Embeddings:
    """A complete set of :func:`cached_embeddings` made for ``table``, memory-mapped.

    Raises:
        ConfigError: no complete set in ``folder``, or one made for another table.
    """
    meta = _read_meta(folder)
    if meta is None or meta.get("table") != _table_id(table):
        raise ConfigError(f"{folder.root}: no embeddings of this fold's series (rerun `ich3d train --resume`)")
    return Embeddings(tuple(np.load(folder.view(v), mmap_mode="r") for v in range(meta["views"])), len(meta["augmented"]))


def fingerprint(path: Path) -> str:
    """A cheap identity of a file (name, size, modification time): a checkpoint rewritten is another."""
    stat = Path(path).stat()
    return f"{Path(path).name}:{stat.st_size}:{stat.st_mtime_ns}"


def _table_id(table: SeriesTable) -> str:
    digest = hashlib.sha256()
    digest.update("\0".join(map(str, table.series_uids)).encode())
    digest.update(table.offsets.tobytes())
    return digest.hexdigest()[:16]


def cached_embeddings(predictor: Predictor, table: SeriesTable, folder: EmbeddingsFolder, key: dict[str, Any],
                      flips: tuple[bool, ...], augmented: tuple[AugmentedView, ...] = ()) -> Embeddings:
    """The embeddings of every slice of ``table``, computed once into ``folder`` and memory-mapped.

    Args:
        predictor: its first member's encoder embeds, with its input settings; each rank of its
            runtime embeds its share of the series into the shared files.
        table: the series to embed.
        folder: where the set lives (created); a set made from something else is replaced.
        key: what the set depends on besides the table (fold, encoder fingerprint, ...), stored in
            ``meta.json`` and compared on reuse.
        flips: the first views (False: plain, True: flipped).
        augmented: the views after them, each under its own augmentation draws (training features).

    Returns:
        The :class:`Embeddings`.
    """
    member = predictor.models[0]
    meta = {**key, "table": _table_id(table), "n_slices": table.n_slices, "features": member.module.out_features,
            "flips": list(flips), "augmented": [_describe(view) for view in augmented],
            "views": len(flips) + len(augmented), "data": vars(member.data).copy(), "dtype": "float16"}
    paths = [folder.view(v) for v in range(meta["views"])]
    if _read_meta(folder) != meta:
        _write(predictor, table, folder, meta, paths, flips, augmented)
    return Embeddings(tuple(np.load(path, mmap_mode="r") for path in paths), len(augmented))


def _describe(view: AugmentedView) -> dict[str, Any]:
    """What an augmented view is made from, as JSON (``meta.json``)."""
    return json.loads(json.dumps(dataclasses.asdict(view)))


def _read_meta(folder: EmbeddingsFolder) -> dict[str, Any] | None:
    try:
        return json.loads(folder.meta.read_text())
    except (OSError, ValueError):
        return None


def _write(predictor: Predictor, table: SeriesTable, folder: EmbeddingsFolder, meta: dict[str, Any], paths: list[Path],
           flips: tuple[bool, ...], augmented: tuple[AugmentedView, ...]) -> None:
    """Rank 0 creates zero-filled files; every rank fills its series' rows; rank 0 writes meta.json."""
    runtime = predictor.runtime
    if runtime.is_main:
        shutil.rmtree(folder.root, ignore_errors=True)
        folder.root.mkdir(parents=True)
        for path in paths:
            np.lib.format.open_memmap(path, mode="w+", dtype=np.float16,
                                      shape=(table.n_slices, meta["features"])).flush()
    barrier(runtime)
    maps = [np.lib.format.open_memmap(path, mode="r+") for path in paths]
    mine = np.arange(runtime.rank, len(table.series_uids), runtime.world_size)
    predictor.embed_table(0, table, mine, flips, out=maps[:len(flips)])
    for view, array in zip(augmented, maps[len(flips):]):
        predictor.embed_table(0, table, mine, out=[array], augmented=view)
    for array in maps:
        array.flush()
    del maps
    barrier(runtime)
    if runtime.is_main:
        write_json_atomic(folder.meta, meta)
    barrier(runtime)
