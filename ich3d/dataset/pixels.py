"""Pixels of an indexed slice: raw reads at a known offset (or pydicom's decoders), then Hounsfield units.

:func:`read_pixels` gives the stored values of one slice as pydicom's ``pixel_array`` would; for
uncompressed files it reads the bytes the header pass located with one ``readinto`` into a reusable
buffer. :func:`to_hu` applies the RSNA 12-bit fix and the linear rescale, to one slice or a stack.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pydicom

from ich3d.dataset.dicom import NATIVE_SYNTAXES


def raw_dtype(bits_allocated: int, pixel_representation: int, transfer_syntax: str) -> np.dtype:
    """numpy dtype of stored pixel values, e.g. ``<i2`` for 16-bit signed little endian."""
    order = NATIVE_SYNTAXES.get(transfer_syntax, "<")
    return np.dtype(f"{order}{'i' if pixel_representation else 'u'}{bits_allocated // 8}")


def read_pixels(slice_: Any, scratch: bytearray | None = None) -> np.ndarray:
    """Stored pixel values of one slice, as pydicom's ``pixel_array`` would give them.

    Args:
        slice_: an index row (any object with the attributes ``path``, ``pixel_offset``, ``rows``,
            ``cols``, ``bits_allocated``, ``bits_stored``, ``pixel_representation``,
            ``transfer_syntax``).
        scratch: optional reusable buffer for uncompressed data (grown as needed). The result is then
            a view into it, valid until the next call with the same buffer; reusing one buffer per
            series spares a fresh allocation, and its page faults, per slice.

    Returns:
        (rows, cols) integer array in native byte order; unused high bits corrected as pydicom 3 does.

    Raises:
        OSError, ValueError or a pydicom error when the file cannot be read or decoded.
    """
    if slice_.pixel_offset < 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = pydicom.dcmread(slice_.path).pixel_array
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
