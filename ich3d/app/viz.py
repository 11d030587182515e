"""Figures of the seed notebook: one image's panels (raw, header window, scaled, BSB) and series montages.

Matplotlib is used through its object API on an Agg canvas (no pyplot, no global backend switch), so
the figures can be drawn from any process, with or without a display.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from ich3d.atomic import atomic_write
from ich3d.constants import LABEL_COLUMNS, LABELS, SHORT_NAMES, WINDOWS, Status
from ich3d.data.windowing import bsb, scaled_window
from ich3d.dataset.opened import Dataset
from ich3d.dataset.pixels import read_pixels, to_hu
from ich3d.errors import InputError

log = logging.getLogger(__name__)

_POSITIVE, _NEGATIVE, _UNLABELED = "#d62728", "#2b2b2b", "#7f7f7f"
_DPI = 100


def show_image(dataset: Dataset | Path, image: str, out: Path) -> Path:
    """Draw the seed notebook's panels of one image and write them as a PNG.

    Panels: the raw stored values; the header window (WindowCenter/Width, first value when
    multi-valued, the brain window when absent) in HU; that window scaled to 0-255; the BSB image
    (brain, subdural and soft-tissue windows as RGB). The title gives the image's series and slice,
    the side text its six labels from the index.

    Args:
        dataset: a dataset folder written by ``ich3d build-series``, or it opened.
        image: an image ID (``ID_0a1b2c3d4``) of the index, or the path of a DICOM file.
        out: the PNG to write (folders are created).

    Returns:
        `out`.

    Raises:
        InputError: not a dataset, an image the index does not know, or a file that cannot be read.
    """
    row, labels = Dataset.of(dataset).find_image(image)
    try:
        raw = read_pixels(SimpleNamespace(**row))
    except OSError as exc:
        raise InputError(f"{row['path']}: the image's DICOM file cannot be read any more ({exc.strerror or exc}; "
                         f"moved since `ich3d build-series`?): the panel figure needs the stored values; rebuild the "
                         f"dataset from the files' new place") from None
    hu = to_hu(raw, row["rescale_slope"], row["rescale_intercept"], row["bits_stored"], row["pixel_representation"])
    center, width, window_note = _header_window(row)
    fig = _figure(18.5, 5.2)
    axes = fig.subplots(1, 4, gridspec_kw={"left": 0.01, "right": 0.86, "wspace": 0.04, "top": 0.84, "bottom": 0.02})
    _panel(axes[0], raw, "Raw stored values", _storage_note(row), cmap="gray")
    low, high = center - width / 2, center + width / 2
    _panel(axes[1], np.clip(hu, low, high), "Header window (HU)", window_note, cmap="bone")
    _panel(axes[2], scaled_window(hu, center, width), "Scaled window (0-255)", "uint8", cmap="bone", vmin=0, vmax=255)
    _panel(axes[3], np.moveaxis(bsb(hu), 0, -1), "Brain / subdural / soft tissue", "BSB windows as RGB")
    where = f"series {row.get('series_uid') or '?'}, slice {_text(row.get('slice_index'))}"
    fig.suptitle(f"{row['image_id']}\n{where}", fontsize=13, x=0.01, ha="left")  # long UIDs: two left-aligned lines
    _label_table(fig, labels)
    return _save(fig, out)


def show_series(dataset: Dataset | Path, series_uid: str, out: Path, max_slices: int = 36,
                channels: str = "brain") -> Path:
    """Draw a montage of one series from the HU cache, slices in sorted order, and write it as a PNG.

    Each tile is titled with its slice_index and positive labels (red when ``any`` is positive, grey
    when unlabeled); slices whose pixels could not be read show their status.

    Args:
        dataset: a dataset folder written by ``ich3d build-series``.
        series_uid: a series of ``index/series.parquet``.
        out: the PNG to write (folders are created).
        max_slices: at most this many tiles; longer series are sampled evenly (first and last kept).
        channels: "brain" (brain window, grey) or "bsb" (brain/subdural/soft-tissue windows as RGB).

    Returns:
        `out`.

    Raises:
        InputError: not a dataset, an unknown series, no cache file, or bad arguments.
    """
    if channels not in ("brain", "bsb") or max_slices < 1:
        raise InputError(f"show_series: channels must be 'brain' or 'bsb' and max_slices >= 1 "
                         f"(got {channels!r}, {max_slices})")  # fmt: skip
    dataset = Dataset.of(dataset)
    slices = dataset.slices
    rows = slices[slices["series_uid"] == series_uid].sort_values("slice_index")
    if rows.empty:
        known = slices["series_uid"].dropna().unique()
        raise InputError(f"unknown series {series_uid!r}: not in {dataset.folder.series} ({len(known)} series, "
                         f"e.g. {', '.join(map(str, known[:3]))})")  # fmt: skip
    volume = dataset.hu(series_uid)
    shown = np.unique(np.linspace(0, len(rows) - 1, min(len(rows), max_slices)).round().astype(int))
    ncols = math.ceil(math.sqrt(len(shown)))
    nrows = math.ceil(len(shown) / ncols)
    fig = _figure(max(2.0 * ncols, 6.0), 2.15 * nrows + 0.9)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, gridspec_kw={"wspace": 0.03, "hspace": 0.18, "left": 0.005,
                                                                  "right": 0.995, "bottom": 0.005,
                                                                  "top": 1 - 0.9 / (2.15 * nrows + 0.9)}))  # fmt: skip
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, i in zip(axes.flat, shown):
        _tile(ax, volume[i], rows.iloc[i], channels)
    fig.suptitle(montage_title(series_uid, rows, len(shown), channels), fontsize=12, x=0.01, ha="left")
    return _save(fig, out)


def montage_title(series_uid: str, rows: pd.DataFrame, n_shown: int, channels: str) -> str:
    """The montage's title: the series, its slices, and what its labels say (``unlabeled`` when none
    is labeled, the count of labeled slices when only some are)."""
    labelled = rows["label_any"].notna()
    n_any = int((rows["label_any"] == 1).sum())
    if not labelled.any():
        labels = "unlabeled"
    elif labelled.all():
        labels = f"{n_any} with hemorrhage"
    else:
        labels = f"{n_any} with hemorrhage of {int(labelled.sum())} labeled"
    sampled = f", {n_shown} shown" if n_shown < len(rows) else ""
    return (f"series {series_uid}\n{len(rows)} slices{sampled}, {labels} "
            f"({'brain window' if channels == 'brain' else 'BSB'})")


def show_series_of_image(dataset: Dataset | Path, image: str, out: Path, max_slices: int = 36) -> Path:
    """:func:`show_series` of the series holding `image` (an image ID or DICOM path of the index)."""
    dataset = Dataset.of(dataset)
    row, _ = dataset.find_image(image, need_pixels=False)
    if not row.get("series_uid"):
        raise InputError(f"{image}: not part of a series in {dataset.root}, nothing to draw")
    return show_series(dataset, row["series_uid"], out, max_slices=max_slices)


def _header_window(row: dict[str, Any]) -> tuple[float, float, str]:
    """(center, width, note): the header's window, or the brain window when the header has none."""
    center, width = row.get("window_center"), row.get("window_width")
    if center is None or width is None or not np.isfinite([center, width]).all() or width <= 0:
        center, width = WINDOWS["brain"]
        return center, width, f"no window in header: brain {center:g}/{width:g}"
    return float(center), float(width), f"WindowCenter {center:g}, WindowWidth {width:g}"


def _storage_note(row: dict[str, Any]) -> str:
    """How the stored values map to HU (and whether the RSNA 12-bit fix applies)."""
    bits, signed, intercept = int(row["bits_stored"]), int(row["pixel_representation"]), row["rescale_intercept"]
    note = f"{bits}-bit {'signed' if signed else 'unsigned'}, intercept {intercept:g}"
    if bits == 12 and not signed and intercept > -100:
        note += " (RSNA 12-bit fix)"
    return note


def _panel(ax: Any, image: np.ndarray, title: str, note: str, **style: Any) -> None:
    ax.imshow(image, interpolation="nearest", **style)
    ax.set_title(f"{title}\n{note}", fontsize=10)
    ax.set_axis_off()


def _label_table(fig: Any, labels: dict[str, float]) -> None:
    """The six labels as a column of text right of the panels; positives in red."""
    fig.text(0.875, 0.72, "labels", fontsize=12, weight="bold")
    for k, name in enumerate(LABELS):
        value = labels[name]
        text = "unlabeled" if np.isnan(value) else str(int(value))
        color = _UNLABELED if np.isnan(value) else _POSITIVE if value else _NEGATIVE
        fig.text(0.875, 0.62 - 0.085 * k, f"{name:<17}{text}", fontsize=11, family="monospace", color=color,
                 weight="bold" if value == 1 else "normal")  # fmt: skip


def _tile(ax: Any, hu: np.ndarray, row: pd.Series, channels: str) -> None:
    """One montage tile: the slice in its window, titled with slice_index and positive labels."""
    positives = [SHORT_NAMES[name] for name, column in zip(LABELS[1:], LABEL_COLUMNS[1:]) if row[column] == 1]
    title, color = f"{row['slice_index']}", _NEGATIVE
    if row["status"] != Status.OK:
        ax.text(0.5, 0.5, str(row["status"]), ha="center", va="center", transform=ax.transAxes, color=_POSITIVE)
    elif channels == "bsb":
        ax.imshow(np.moveaxis(bsb(hu), 0, -1), interpolation="nearest")
    else:
        ax.imshow(scaled_window(np.asarray(hu), *WINDOWS["brain"]), cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")  # fmt: skip
    if pd.isna(row["label_any"]):
        title, color = f"{title}  unlabeled", _UNLABELED
    elif positives:
        title, color = f"{title}  {' '.join(positives)}", _POSITIVE
    ax.set_title(title, fontsize=9, color=color, pad=2)
    ax.set_axis_off()


def _text(value: Any) -> str:
    return "?" if value is None or pd.isna(value) else str(value)


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure on its own Agg canvas (inches)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as file:
        # "tight": the canvas is grown or cut to every title and label, so nothing is clipped at an edge
        fig.savefig(file, format="png", dpi=_DPI, facecolor="white", bbox_inches="tight", pad_inches=0.15)
    log.info("wrote %s", out)
    return out
