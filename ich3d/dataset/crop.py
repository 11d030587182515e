"""The square of the original pixel grid a cached slice shows: the padded image, or the head with a margin.

A CT image is mostly air, table and headrest around the head; resized whole to 128 px, the brain
gets a fraction of the pixels. With ``--crop head`` (the default) the pixel pass crops every slice of
a series to one square around the head before resizing, so the network input carries more brain at
the same size. The square is found per series, at cache time (the full-resolution pixels are at
hand there, and a crop of the small cache would lose the resolution it is meant to win): on a
subsampled copy of each readable slice the pixels above :data:`HEAD_HU` are labelled, the largest
connected region (the head, not the table) gives a bounding box, the boxes of all slices are joined,
and the union is squared around its centre with :data:`MARGIN` on each side. One square per series
keeps the scale constant along it, as the sequence head expects. The square is recorded in the
index (``crop_top``, ``crop_left``, ``crop_side``), so figures and heatmaps map back to the original
pixels (:func:`cache_box`; docs/design.md §3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

CROP_MODES = ("head", "none")
#: HU above which a pixel is part of the patient (air is -1000, fat -100, the skin around 0).
HEAD_HU = -300.0
#: Margin added on each side of the head's extent, as a share of that extent.
MARGIN = 0.08
#: The head is looked for on slices subsampled to about this many pixels a side.
_SEARCH_SIDE = 128
#: Index columns recording a slice's :class:`CacheBox` when its series was cropped to the head.
CROP_COLUMNS = ("crop_top", "crop_left", "crop_side")


class CacheBox(NamedTuple):
    """Where a cached (S, S) slice lies in its original pixel grid: the square of ``side`` pixels whose
    top-left corner is at (``top``, ``left``) in original (row, column) coordinates. Parts of the
    square outside the image (the padding of a non-square image, or of a crop near an edge) are air."""

    top: float
    left: float
    side: float


def padding_box(rows: int, cols: int) -> CacheBox:
    """The square of a non-square image padded around its centre (the whole image when square)."""
    side = max(rows, cols)
    return CacheBox(float(-((side - rows) // 2)), float(-((side - cols) // 2)), float(side))


def cache_box(row: Mapping[str, Any]) -> CacheBox:
    """The :class:`CacheBox` of an index row: its crop columns when present and finite, else the
    padding square (``rows`` x ``cols`` image)."""
    crop = [row.get(name) for name in CROP_COLUMNS]
    if all(value is not None and np.isfinite(value) for value in crop):
        return CacheBox(*(float(value) for value in crop))
    return padding_box(int(row["rows"]), int(row["cols"]))


def crop_square(image: np.ndarray, box: CacheBox, fill: float) -> np.ndarray:
    """(H, W) → (side, side): the square ``box`` of ``image``, ``fill`` where it lies outside the image.

    With :func:`padding_box` this is the centred padding of a non-square image (a square image is
    returned unchanged).
    """
    top, left, side = int(box.top), int(box.left), int(box.side)
    rows, cols = image.shape
    if (top, left, side) == (0, 0, rows) and rows == cols:
        return image
    out = np.full((side, side), fill, dtype=image.dtype)
    r0, r1 = max(top, 0), min(top + side, rows)
    c0, c1 = max(left, 0), min(left + side, cols)
    if r0 < r1 and c0 < c1:
        out[r0 - top:r1 - top, c0 - left:c1 - left] = image[r0:r1, c0:c1]
    return out


def _largest_region_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(row0, row1, col0, col1) half-open bounding box of the largest connected region of ``mask``."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    largest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    rows, cols = np.nonzero(labels == largest)
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


def head_mask(stored: np.ndarray, slope: float, intercept: float) -> tuple[np.ndarray, int]:
    """(mask, step): the pixels of ``stored`` (H, W) values whose HU are above :data:`HEAD_HU`, on
    every ``step``-th row and column."""
    step = max(1, max(stored.shape) // _SEARCH_SIDE)
    return stored[::step, ::step] * slope + intercept > HEAD_HU, step


def head_box(masks: Sequence[tuple[np.ndarray, int]], rows: int, cols: int) -> CacheBox | None:
    """The series' square around the head, from :func:`head_mask` of its readable slices.

    Returns:
        The square (original pixels), or None when no slice shows a head (then the slices are
        padded, not cropped).
    """
    boxes = [(b, step) for mask, step in masks if (b := _largest_region_box(mask)) is not None]
    if not boxes:
        return None
    r0 = min(b[0] * s for b, s in boxes)
    r1 = max(b[1] * s for b, s in boxes)
    c0 = min(b[2] * s for b, s in boxes)
    c1 = max(b[3] * s for b, s in boxes)
    extent = max(r1 - r0, c1 - c0)
    side = int(round(min(extent * (1 + 2 * MARGIN), max(rows, cols))))
    centre_r, centre_c = (r0 + r1) / 2, (c0 + c1) / 2
    return CacheBox(float(round(centre_r - side / 2)), float(round(centre_c - side / 2)), float(side))
