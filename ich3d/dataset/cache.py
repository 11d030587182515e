"""The int16 Hounsfield-unit cache: resizing, the pixel pass (one file per series), reading it back.

Resizing is separable: ``R @ img @ C^T`` with interpolation matrices ``R`` (S, H) and ``C`` (S, W)
from :func:`resize_matrix` (area weights when shrinking, so it is antialiased; linear interpolation
when enlarging). The matrices are banded, so they are applied tap by tap: each tap is a strided view
when its indices step regularly (any integer shrink factor, e.g. 512 → 256), a gather otherwise.
That is about ten times faster than the dense float32 products on this project's 2-core machine
(0.2 ms against 2.7 ms per 512² slice) and gives the same numbers, to float rounding. Non-square images are first
padded to a square around their centre with air (``HU_MIN``), so anatomy keeps its aspect ratio.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ich3d.atomic import atomic_write
from ich3d.constants import HU_MAX, HU_MIN, MISSING_HU, Status
from ich3d.dataset.crop import CacheBox, crop_square, head_box, head_mask, padding_box
from ich3d.dataset.pixels import fix_rsna_12bit, read_pixels
from ich3d.errors import InputError
from ich3d.layout import DatasetFolder

log = logging.getLogger(__name__)


@lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """1-D resampling weights from ``n_in`` to ``n_out`` samples (pixel centres aligned).

    Shrinking: each output pixel averages the input pixels it covers, weighted by overlap (area
    interpolation). Enlarging: linear interpolation between the two nearest input pixels, clamped at
    the edges. Equal sizes: identity.

    Returns:
        (n_out, n_in) float32, every row summing to 1 (read-only, shared between calls).
    """
    if n_out <= n_in:
        edges = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
        left, right = edges[:-1, None], edges[1:, None]
        pixel = np.arange(n_in)[None, :]
        weights = np.clip(np.minimum(right, pixel + 1) - np.maximum(left, pixel), 0, None) * (n_out / n_in)
    else:
        source = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        lower = np.floor(source).astype(np.int64)
        upper = np.minimum(lower + 1, n_in - 1)
        weights = np.zeros((n_out, n_in))
        np.add.at(weights, (np.arange(n_out), lower), 1 - (source - lower))
        np.add.at(weights, (np.arange(n_out), upper), source - lower)
    matrix = weights.astype(np.float32)
    matrix.flags.writeable = False
    return matrix


@dataclass(frozen=True)
class _Taps:
    """A banded :func:`resize_matrix` as taps: output ``i`` = sum_k weights[k][i] * x[indices[k][i]].

    ``indices[k]`` is a slice when regular; ``weights`` is None when every weight equals ``scale``.
    """

    indices: tuple[slice | np.ndarray, ...]
    weights: tuple[np.ndarray, ...] | None
    scale: float


@lru_cache(maxsize=64)
def _taps(n_in: int, n_out: int) -> _Taps:
    matrix = resize_matrix(n_in, n_out)
    nonzero = matrix > 0
    first, width = nonzero.argmax(axis=1), nonzero.sum(axis=1)
    rows = np.arange(n_out)
    indices, weights = [], []
    for k in range(int(width.max())):
        index = np.minimum(first + k, n_in - 1)
        weights.append(np.where(k < width, matrix[rows, index], 0).astype(np.float32))
        step = int(index[1] - index[0]) if n_out > 1 else 1
        regular = step >= 1 and np.array_equal(index, index[0] + step * rows)
        indices.append(slice(int(index[0]), int(index[-1]) + 1, step) if regular else index)
    uniform = all(np.all(w == weights[0][0]) for w in weights)
    return _Taps(tuple(indices), None if uniform else tuple(weights), float(weights[0][0]))


def _resample(x: np.ndarray, taps: _Taps, axis: int) -> np.ndarray:
    """Applies ``taps`` along ``axis`` (-1 or -2) of ``x``; float32 result, not yet multiplied by
    ``taps.scale`` when the weights are all equal (the caller scales once, at the smallest size)."""
    parts = [x[..., index, :] if axis == -2 else x[..., index] for index in taps.indices]
    if taps.weights is None:
        out = np.add(parts[0], parts[1], dtype=np.float32) if len(parts) > 1 else parts[0].astype(np.float32)
        for part in parts[2:]:
            np.add(out, part, out=out, casting="unsafe")
        return out
    shape = (-1, 1) if axis == -2 else (-1,)
    out = np.multiply(parts[0], taps.weights[0].reshape(shape), dtype=np.float32)
    for part, weight in zip(parts[1:], taps.weights[1:]):
        out += np.multiply(part, weight.reshape(shape), dtype=np.float32)
    return out


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes square images with :func:`resize_matrix` weights, rows then columns.

    Args:
        image: (..., H, H) integer or float array (make non-square images square with
            :func:`ich3d.dataset.crop.crop_square`).
        size: output side S.

    Returns:
        (..., S, S) float32.
    """
    height, width = image.shape[-2:]
    row_taps, column_taps = _taps(height, size), _taps(width, size)
    out = _resample(_resample(image, row_taps, axis=-2), column_taps, axis=-1)
    scale = np.prod([taps.scale for taps in (row_taps, column_taps) if taps.weights is None])
    if scale != 1.0:
        out *= np.float32(scale)
    return out


def to_cache_dtype(hu: np.ndarray) -> np.ndarray:
    """Float HU → the cache's int16: rounded to the nearest integer, clipped to [HU_MIN, HU_MAX]."""
    out = np.clip(hu, HU_MIN, HU_MAX)
    return np.rint(out, out=out).astype(np.int16)


def write_atomic(path: Path, array: np.ndarray) -> None:
    """Saves ``array`` as ``.npy`` through a temporary file in the same folder and ``os.replace``,
    so a reader (or a resumed build) never sees a half-written file."""
    with atomic_write(path) as file:
        np.save(file, array)


def load_series(dataset: Path, series_id: str, mmap: bool = True) -> np.ndarray:
    """The cached volume of one series.

    Args:
        dataset: the dataset folder written by ``ich3d build-series``.
        series_id: the series' key in ``index/series.parquet`` (not its SeriesInstanceUID).
        mmap: memory-map the file (read-only) instead of reading it.

    Returns:
        (N, S, S) int16 Hounsfield units, slices in ``slice_index`` order; slices whose pixels could
        not be read hold ``MISSING_HU`` (their index status is not ok).

    Raises:
        InputError: no cache file for this series, or a damaged one.
    """
    try:
        path = DatasetFolder(Path(dataset)).cache_file(series_id)
    except ValueError as exc:
        raise InputError(f"{dataset}: {exc}") from None
    if not path.is_file():
        raise InputError(f"{path}: no cache file for series {series_id}; run `ich3d build-series` "
                         f"(with the same --num-parts/--part-id jobs) to complete the dataset")
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: damaged cache file ({exc}); rerun `ich3d build-series` with the same "
                         f"arguments to rebuild it") from None


def cache_file_ok(path: Path, n_slices: int, size: int) -> bool:
    """True when ``path`` is a complete cache file of ``n_slices`` (S, S) int16 slices.

    Reads the ``.npy`` header only (shape, dtype, data offset) and checks the file's length, so a
    file cut short by a full disk or a crash outside ``os.replace`` is recognised.
    """
    try:
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(file)
            data_start = file.tell()
        length = Path(path).stat().st_size
    except (OSError, ValueError):
        return False
    expected = (n_slices, size, size)
    return (shape == expected and dtype == np.dtype(np.int16) and not fortran
            and length == data_start + int(np.prod(expected)) * 2)


class CacheSlice(NamedTuple):
    """What the pixel pass needs to know about one slice (a subset of an index row)."""

    image_id: str
    path: str
    frame: int  # 1-based frame of a multi-frame file or slice of a NIfTI volume; 0 for a single-frame file
    status: str
    pixel_offset: int
    rows: int
    cols: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    transfer_syntax: str
    rescale_slope: float
    rescale_intercept: float


def read_stored(slice_: CacheSlice, scratch: bytearray | None = None) -> tuple[np.ndarray, float]:
    """The slice's stored values after the RSNA 12-bit fix, and its intercept (``scratch``: see
    :func:`read_pixels`; the values are a view into it)."""
    pixels, intercept = fix_rsna_12bit(read_pixels(slice_, scratch), slice_.rescale_intercept, slice_.bits_stored,
                                       slice_.pixel_representation)
    return pixels, float(intercept.item())


def stored_to_cache(pixels: np.ndarray, slope: float, intercept: float, size: int,
                    box: CacheBox | None = None) -> np.ndarray:
    """Stored values (H, W) → (S, S) int16 HU of the square ``box`` (None: the padded image).

    The rescale is linear and every row of the resize weights sums to 1, so the square is resized
    first, on its stored integers, and rescaled at the small size: 4x fewer float operations at
    256² than converting the 512² slice first (same values up to float rounding). Only the RSNA
    12-bit fix, which is not linear, runs before (:func:`read_stored`).
    """
    box = box or padding_box(*pixels.shape)
    if box != padding_box(*pixels.shape) or pixels.shape[0] != pixels.shape[1]:
        fill = (HU_MIN - intercept) / slope if slope else 0.0
        pixels = crop_square(pixels.astype(np.float32), box, fill)
    small = resize(pixels, size)
    if slope != 1:
        small *= np.float32(slope)
    small += np.float32(intercept)
    return to_cache_dtype(small)


def slice_to_cache(slice_: CacheSlice, size: int, scratch: bytearray | None = None,
                   box: CacheBox | None = None) -> np.ndarray:
    """Reads one slice and returns it as (S, S) int16 HU of ``box`` (None: the padded image)."""
    pixels, intercept = read_stored(slice_, scratch)
    return stored_to_cache(pixels, slice_.rescale_slope, intercept, size, box)


class SeriesCache(NamedTuple):
    """What building a series' cache file reports: its slices' failures and the square it shows.

    Attributes:
        failures: (image_id, path, status, error) of each slice that failed.
        box: the :class:`CacheBox` the series was cropped to (as a list), None when padded.
    """

    failures: list[tuple[str, str, str, str]]
    box: list[float] | None


def _failure(slice_: CacheSlice, exc: Exception) -> tuple[str, str, str, str]:
    status = Status.READ_ERROR if isinstance(exc, OSError) else Status.CORRUPT
    message = " ".join(f"{type(exc).__name__}: {exc}".split())  # a decoder's lines on one line
    return slice_.image_id, slice_.path, str(status), message[:300]


def write_series_cache(slices: Sequence[CacheSlice], path: Path, size: int, crop: str = "none") -> SeriesCache:
    """Builds and atomically writes the cache file of one series; never raises on a bad slice.

    Slices whose header status is not ok, and slices that fail now, hold ``MISSING_HU``. With
    ``crop="head"`` every slice shows the series' square around the head (:mod:`ich3d.dataset.crop`):
    the readable slices are read first (the square needs all of them), then cropped and resized.

    Args:
        slices: the series' slices in slice_index order.
        path: the cache file to write.
        size: output side S.
        crop: ``head`` or ``none`` (the padded image).
    """
    volume = np.full((len(slices), size, size), MISSING_HU, dtype=np.int16)
    failures, scratch = [], bytearray()
    readable = [i for i, slice_ in enumerate(slices) if slice_.status == Status.OK]
    same_size = len({(slices[i].rows, slices[i].cols) for i in readable}) == 1
    if crop == "head" and same_size:
        stored: dict[int, tuple[np.ndarray, float]] = {}
        for i in readable:
            try:
                pixels, intercept = read_stored(slices[i], scratch)
                stored[i] = (pixels.copy(), intercept)
            except Exception as exc:  # noqa: BLE001 - a broken slice must not stop its series
                failures.append(_failure(slices[i], exc))
        masks = [head_mask(pixels, slices[i].rescale_slope, intercept) for i, (pixels, intercept) in stored.items()]
        box = head_box(masks, slices[readable[0]].rows, slices[readable[0]].cols) if stored else None
        for i, (pixels, intercept) in stored.items():
            volume[i] = stored_to_cache(pixels, slices[i].rescale_slope, intercept, size, box)
    else:
        box = None
        for i in readable:
            try:
                volume[i] = slice_to_cache(slices[i], size, scratch)
            except Exception as exc:  # noqa: BLE001 - a broken slice must not stop its series
                failures.append(_failure(slices[i], exc))
    write_atomic(path, volume)
    return SeriesCache(failures, None if box is None else [box.top, box.left, box.side])
