"""The head crop: the square around the head of a series, recorded, and equal to padding when off."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ich3d.dataset.build import BuildOptions, build_series
from ich3d.dataset.cache import load_series, resize
from ich3d.dataset.crop import CacheBox, cache_box, crop_square, head_box, head_mask, padding_box
from ich3d.dataset.index import dataset_crop, load_index


def test_padding_square_centres_the_image() -> None:
    image = np.ones((2, 3), dtype=np.float32)
    padded = crop_square(image, padding_box(2, 3), -1024)
    np.testing.assert_array_equal(padded, [[1, 1, 1], [1, 1, 1], [-1024] * 3])  # an odd pixel goes last
    assert (crop_square(np.ones((2, 6)), padding_box(2, 6), 0)[[0, 5]] == 0).all()
    square = np.ones((4, 4))
    assert crop_square(square, padding_box(4, 4), 0) is square


def test_crop_square_fills_what_lies_outside() -> None:
    image = np.arange(16.0).reshape(4, 4)
    out = crop_square(image, CacheBox(-1.0, 2.0, 3.0), -9.0)
    np.testing.assert_array_equal(out, [[-9, -9, -9], [2, 3, -9], [6, 7, -9]])


def test_the_head_box_spans_every_slice_and_ignores_the_table() -> None:
    air = np.full((256, 256), -1000.0)
    slices = []
    for radius in (40, 70, 55):  # the head grows and shrinks along the series
        hu = air.copy()
        yy, xx = np.ogrid[:256, :256]
        hu[(yy - 110) ** 2 + (xx - 128) ** 2 < radius**2] = 40.0
        hu[230:240, 20:236] = 200.0  # the table: a separate, smaller region below the head
        slices.append(head_mask(hu, 1.0, 0.0))
    box = head_box(slices, 256, 256)
    assert box is not None and 140 * 1.1 < box.side < 140 * 1.25  # the widest slice plus the margins
    assert abs(box.top + box.side / 2 - 110) <= 2 and abs(box.left + box.side / 2 - 128) <= 2
    assert box.top + box.side < 230  # the table is left out
    assert head_box([head_mask(air, 1.0, 0.0)], 256, 256) is None


def test_a_cropped_dataset_records_its_squares(synthetic_rsna: Path, tmp_path: Path) -> None:
    padded, cropped = tmp_path / "none", tmp_path / "head"
    for out, crop in ((padded, "none"), (cropped, "head")):
        build_series([synthetic_rsna / "stage_2_test"], out,
                     options=BuildOptions(image_size=32, workers=1, crop=crop, progress=False))
    assert (dataset_crop(padded), dataset_crop(cropped)) == ("none", "head")
    slices, series = load_index(cropped)
    row = slices[slices["status"] == "ok"].iloc[0].to_dict()
    box = cache_box(row)
    assert box.side < max(row["rows"], row["cols"])  # the head fills less than the field of view
    assert slices.groupby("series_uid")["crop_side"].nunique().max() == 1  # one square per series
    assert np.isnan(load_index(padded)[0]["crop_side"]).all()
    plain = np.asarray(load_series(padded, row["series_uid"]), dtype=np.float32)
    zoomed = np.asarray(load_series(cropped, row["series_uid"]), dtype=np.float32)
    assert (zoomed > -500).mean() > (plain > -500).mean()  # more of each cached slice is head
    assert resize(crop_square(np.zeros((64, 64)), box, 0.0), 32).shape == (32, 32)
