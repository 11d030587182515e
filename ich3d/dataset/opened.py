"""An opened dataset folder: its index tables, fingerprint and crop read once, HU per series on demand.

:class:`~ich3d.layout.DatasetFolder` names the files; :class:`Dataset` is what a caller holds after
opening one (``Dataset.open(path)``) and passes down, instead of a path every step re-reads: training
checks and records the fingerprint and the crop and splits the series table, inference predicts its
chosen series, the report and the pictures look images up in its slice table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ich3d.constants import LABEL_COLUMNS, LABELS, Status
from ich3d.dataset.cache import load_series
from ich3d.dataset.index import dataset_crop, index_fingerprint, load_index
from ich3d.errors import InputError
from ich3d.layout import DatasetFolder


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset folder written by ``ich3d build-series``, opened.

    Attributes:
        folder: its file names.
        slices: ``index/slices.parquet`` with the pixel pass's failures and crops merged (docs/design.md §2).
        series: ``index/series.parquet`` (roles, choice, ``predict``, ``build_cache``).
        fingerprint: a short identity of its input files and labels (what a run was trained on).
        crop: the ``--crop`` its cache was built with (None before its pixel pass).
    """

    folder: DatasetFolder
    slices: pd.DataFrame
    series: pd.DataFrame
    fingerprint: str
    crop: str | None

    @classmethod
    def open(cls, path: Path | str) -> Dataset:
        """Reads the index of a dataset folder once.

        Raises:
            InputError: not a dataset folder, or an index of another layout version.
        """
        root = Path(path)
        slices, series = load_index(root)
        return cls(DatasetFolder(root), slices, series, index_fingerprint(root), dataset_crop(root))

    @classmethod
    def of(cls, dataset: Dataset | Path | str) -> Dataset:
        """``dataset`` itself when already opened, else :meth:`open` of it."""
        return dataset if isinstance(dataset, Dataset) else cls.open(dataset)

    @property
    def root(self) -> Path:
        return self.folder.root

    @property
    def predicted(self) -> pd.DataFrame:
        """The rows of ``series`` chosen for prediction."""
        return self.series[self.series["predict"]]

    def hu(self, series_uid: str, mmap: bool = True) -> np.ndarray:
        """(N, S, S) int16 Hounsfield units of one series' cache, in slice order (see
        :func:`ich3d.dataset.cache.load_series`)."""
        return load_series(self.root, series_uid, mmap=mmap)

    def find_image(self, image: str, need_pixels: bool = True) -> tuple[dict[str, Any], dict[str, float]]:
        """The index row of an image ID or the path of one of the dataset's files, and its labels by name
        (NaN: unlabeled).

        Raises:
            InputError: an unknown image ID, a missing file or one the index does not list; with ``need_pixels``, an image whose pixels
                could not be read.
        """
        slices, path = self.slices, Path(image)
        if path.suffix.lower() == ".dcm" or path.is_file():
            if not path.is_file():
                raise InputError(f"{image}: no such file")
            match = slices[slices["path"].isin([str(path), str(path.resolve())])]
            if match.empty:
                raise InputError(f"{image}: not a file of the dataset {self.root} (its index lists {len(slices)} "
                                 f"images); give a file or image ID of this dataset, or build one holding the file "
                                 f"with `ich3d build-series`")
            row = match.iloc[0].to_dict()
        else:
            match = slices[slices["image_id"] == image]
            if match.empty:
                example = slices["image_id"].iloc[0] if len(slices) else "ID_0a1b2c3d4"
                raise InputError(f"unknown image {image!r}: not in the index of {self.root} ({len(slices)} images); "
                                 f"give an image ID such as {example} or the path of a .dcm file")
            row = match.iloc[0].to_dict()
        if need_pixels and row["status"] != Status.OK:
            raise InputError(f"{image}: cannot draw it, its file is {row['status']}: {row['error']}")
        labels = {name: float(row.get(column, np.nan)) for name, column in zip(LABELS, LABEL_COLUMNS)}
        return row, labels
