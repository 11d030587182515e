"""Pixels of an indexed slice: raw reads at a known offset (or pydicom's decoders), then Hounsfield units.

:func:`read_pixels` gives the stored values of one slice as pydicom's ``pixel_array`` would; for
uncompressed files it reads the bytes the header pass located with one ``readinto`` into a reusable
buffer; compressed data are decoded one frame at a time by the plugin :mod:`ich3d.dataset.codecs`
chooses; a NIfTI slice comes from its volume, read once per process (docs/design.md §12).
:func:`to_hu` applies the RSNA 12-bit fix and the linear rescale, to one slice or a stack.
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from typing import Any

import numpy as np
import pydicom
from pydicom.pixels import pixel_array

from ich3d.dataset import nifti
from ich3d.dataset.codecs import plugin_for
from ich3d.dataset.dicom import NATIVE_SYNTAXES


def raw_dtype(bits_allocated: int, pixel_representation: int, transfer_syntax: str) -> np.dtype:
    """numpy dtype of stored pixel values, e.g. ``<i2`` for 16-bit signed little endian."""
    order = NATIVE_SYNTAXES.get(transfer_syntax, "<")
    return np.dtype(f"{order}{'i' if pixel_representation else 'u'}{bits_allocated // 8}")


def read_pixels(slice_: Any, scratch: bytearray | None = None) -> np.ndarray:
    """Stored pixel values of one slice, as pydicom's ``pixel_array`` would give them.

    Args:
        slice_: an index row (any object with the attributes ``path``, ``frame`` (1-based frame of a
            multi-frame file or slice of a NIfTI volume; None or 0 for a single-frame file),
            ``pixel_offset``, ``rows``, ``cols``, ``bits_allocated``, ``bits_stored``,
            ``pixel_representation``, ``transfer_syntax``).
        scratch: optional reusable buffer for uncompressed data (grown as needed). The result is then
            a view into it, valid until the next call with the same buffer; reusing one buffer per
            series spares a fresh allocation, and its page faults, per slice.

    Returns:
        (rows, cols) integer array in native byte order; unused high bits corrected as pydicom 3 does.

    Raises:
        OSError, ValueError or a decoder's error when the file cannot be read or decoded.
    """
    if slice_.pixel_offset < 0:
        pixels = _decode(slice_.path, slice_.transfer_syntax, _frame_number(getattr(slice_, "frame", None)))
        if pixels.shape != (slice_.rows, slice_.cols):
            raise ValueError(f"decoded pixels have shape {pixels.shape}, header says {(slice_.rows, slice_.cols)}")
        return pixels
    dtype = raw_dtype(slice_.bits_allocated, slice_.pixel_representation, slice_.transfer_syntax)
    size = slice_.rows * slice_.cols * dtype.itemsize
    if scratch is None:
        scratch = bytearray(size)
    elif len(scratch) < size:
        scratch.extend(bytes(size - len(scratch)))
    with open(slice_.path, "rb") as file:
        file.seek(slice_.pixel_offset)
        got = file.readinto(memoryview(scratch)[:size])
    if got != size:
        raise ValueError(f"file truncated: read {got} of {size} pixel bytes")
    pixels = np.frombuffer(scratch, dtype=dtype, count=slice_.rows * slice_.cols).reshape(slice_.rows, slice_.cols)
    pixels = pixels.astype(dtype.newbyteorder("="), copy=False)
    shift = slice_.bits_allocated - slice_.bits_stored
    if 0 < shift < slice_.bits_allocated:
        pixels = (pixels << shift) >> shift
    return pixels


def _frame_number(value: Any) -> int:
    """A row's ``frame`` as an int; 0 when absent (None, NA, NaN: a single-frame file)."""
    try:
        return int(value) if value is not None else 0
    except (TypeError, ValueError):
        return 0


def _decode(path: str, syntax: str, frame: int) -> np.ndarray:
    """Frame ``frame`` (1-based; 0: the only one) of a NIfTI volume or of compressed (or deflated) DICOM.

    A multi-frame file's data set is kept for the next frame (:func:`_multiframe`), so a series
    stored as one file is parsed once per worker, not once per frame.
    """
    if syntax == nifti.NIFTI_SYNTAX:
        return nifti.read_slice(path, frame)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if frame == 0:
            return pixel_array(path, decoding_plugin=plugin_for(syntax))
        stat = os.stat(path)
        return pixel_array(_multiframe(path, stat.st_mtime_ns, stat.st_size), index=frame - 1,
                           decoding_plugin=plugin_for(syntax))


@lru_cache(maxsize=1)
def _multiframe(path: str, mtime_ns: int, size: int) -> pydicom.Dataset:
    """The data set of the multi-frame file read last in this process (a changed file is a new entry)."""
    return pydicom.dcmread(path)


def _per_slice(value: float | np.ndarray) -> np.ndarray:
    """A scalar, or an (N,) array of per-slice values, shaped to broadcast against (N, H, W)."""
    return np.asarray(value).reshape(np.shape(value) + (1, 1))


def fix_rsna_12bit(
    pixels: np.ndarray,
    intercept: float | np.ndarray,
    bits_stored: int | np.ndarray,
    pixel_representation: int | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The RSNA 12-bit fix (docs/design.md §3), the only non-linear step before HU.

    Where BitsStored == 12, PixelRepresentation == 0 and RescaleIntercept > -100 (images whose
    stored values wrapped around), the values are shifted by 1000 modulo 4096 and the intercept
    becomes -1000, as the RSNA 2019 solutions did (``x + 1000``, minus 4096 where >= 4096: the same
    for values masked to 12 bits, as :func:`read_pixels` and pydicom return them).

    Args:
        pixels: (H, W) or (N, H, W) stored values (any integer dtype).
        intercept, bits_stored, pixel_representation: scalars, or (N,) arrays (one per slice).

    Returns:
        (pixels, intercept): ``pixels`` unchanged when no slice needs the fix, else a corrected copy;
        the intercept broadcastable against ``pixels`` ((1, 1) or (N, 1, 1)).
    """
    intercept = _per_slice(intercept)
    fix = (_per_slice(bits_stored) == 12) & (_per_slice(pixel_representation) == 0) & (intercept > -100)
    if not fix.any():
        return pixels, intercept
    work = pixels if pixels.dtype == np.uint16 else pixels.astype(np.int32)
    wrapped = (work + 1000) & 4095  # uint16 stays uint16: 4095 + 1000 fits
    if not fix.all():
        wrapped = np.where(fix, wrapped, work)
    return wrapped, np.where(fix, -1000.0, intercept)


def to_hu(
    pixels: np.ndarray,
    slope: float | np.ndarray,
    intercept: float | np.ndarray,
    bits_stored: int | np.ndarray,
    pixel_representation: int | np.ndarray,
) -> np.ndarray:
    """Stored values → Hounsfield units: :func:`fix_rsna_12bit`, then value * slope + intercept.

    Args:
        pixels: (H, W) or (N, H, W) stored values (any integer dtype).
        slope, intercept, bits_stored, pixel_representation: scalars, or (N,) arrays (one per slice).

    Returns:
        Same shape as ``pixels``, float32 Hounsfield units.
    """
    pixels, intercept = fix_rsna_12bit(pixels, intercept, bits_stored, pixel_representation)
    hu = pixels.astype(np.float32)
    hu *= _per_slice(slope).astype(np.float32)
    hu += intercept.astype(np.float32)
    return hu
