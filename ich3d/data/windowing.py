"""Display windows: Hounsfield units → [0, 1] channels, for numpy arrays and torch tensors alike.

The functions use only arithmetic operators and methods that numpy arrays and torch tensors share
(``-``, ``/``, ``.clip``, ``[..., None, :, :]``), so this module never imports torch. Integer numpy
input is promoted to float32 (numpy alone would promote to float64); integer torch tensors become
the default float dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ich3d.constants import BSB_WINDOWS, HU_MAX, HU_MIN, WINDOWS


def _float(hu: Any) -> Any:
    """``hu`` as float32 if it is an integer numpy array; anything else unchanged."""
    if isinstance(hu, np.ndarray) and not np.issubdtype(hu.dtype, np.floating):
        return hu.astype(np.float32)
    return hu


def _like(hu: Any, values: Sequence[float]) -> Any:
    """A float vector holding ``values``, of the same kind (numpy/torch) and device as ``hu``."""
    if hasattr(hu, "new_tensor"):  # a torch tensor: keep device, use a float dtype
        dtype = hu.dtype if hu.is_floating_point() else None
        return hu.new_tensor(values, dtype=dtype)
    return np.asarray(values, dtype=np.float32)


def window(hu: Any, center: Any, width: Any) -> Any:
    """Linear display window: ``(hu - (center - width / 2)) / width``, clipped to [0, 1].

    Args:
        hu: array or tensor of Hounsfield units, any shape.
        center, width: window centre and width in HU: scalars, or arrays/tensors broadcastable
            against ``hu`` (e.g. (..., 1, 1) per-item windows for window augmentation).

    Returns:
        Same kind and shape as ``hu`` (after broadcasting), float in [0, 1].
    """
    return ((_float(hu) - (center - width / 2)) / width).clip(0, 1)


def bsb(hu: Any, windows: Sequence[str] = BSB_WINDOWS) -> Any:
    """The brain/subdural/soft-tissue ("BSB") image: one window per channel.

    Args:
        hu: (..., H, W) array or tensor, Hounsfield units.
        windows: names of ``ich3d.constants.WINDOWS``, one per output channel.

    Returns:
        (..., C, H, W) float in [0, 1], C = len(windows), channels in ``windows`` order.
    """
    center = _like(hu, [WINDOWS[name][0] for name in windows])[:, None, None]
    width = _like(hu, [WINDOWS[name][1] for name in windows])[:, None, None]
    return window(_float(hu)[..., None, :, :], center, width)


def scaled_window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """A window as 8-bit grey levels, for display and figures (numpy only).

    Integer input (e.g. the int16 HU cache) goes through a 256-level lookup table applied with
    ``np.take``, about twice as fast as float arithmetic; float input is windowed directly.

    Args:
        hu: (...) Hounsfield units, integer or float numpy array.
        center, width: the window in HU.

    Returns:
        (...) uint8, 0 at or below ``center - width / 2``, 255 at or above ``center + width / 2``.
    """
    if np.issubdtype(hu.dtype, np.integer):
        lut = _lut(float(center), float(width))
        index = np.clip(hu, HU_MIN, HU_MAX) - np.int32(HU_MIN)
        return np.take(lut, index)
    return np.rint(window(hu, center, width) * 255).astype(np.uint8)


def _lut(center: float, width: float) -> np.ndarray:
    """(HU_MAX - HU_MIN + 1,) uint8 grey level of each integer HU value in [HU_MIN, HU_MAX]."""
    levels = np.arange(HU_MIN, HU_MAX + 1, dtype=np.float32)
    return np.rint(window(levels, center, width) * 255).astype(np.uint8)
