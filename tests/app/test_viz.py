"""The seed notebook's figures: image panels and series montages are valid PNGs; bad requests fail clearly."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from ich3d.dataset.index import load_index
from ich3d.errors import InputError
from ich3d.app.viz import montage_title, show_image, show_series, show_series_of_image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path, min_width: int) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[1] >= min_width and pixels.std() > 0.05


def test_show_image_by_id_and_by_path(tiny_dataset: Path, tmp_path: Path) -> None:
    slices, _ = load_index(tiny_dataset)
    ok = slices[slices["status"] == "ok"]
    positive = ok[ok["label_any"] == 1].iloc[0]
    by_id = show_image(tiny_dataset, positive["image_id"], tmp_path / "figs" / "by_id.png")
    assert by_id == tmp_path / "figs" / "by_id.png"
    _assert_png(by_id, 1000)
    wrapped = ok[(ok["bits_stored"] == 12) & (ok["rescale_intercept"] > -100)].iloc[0]
    _assert_png(show_image(tiny_dataset, wrapped["path"], tmp_path / "by_path.png"), 1000)


def test_show_series_montages(tiny_dataset: Path, tmp_path: Path) -> None:
    slices, series = load_index(tiny_dataset)
    uid = series["series_uid"].iloc[0]
    _assert_png(show_series(tiny_dataset, uid, tmp_path / "brain.png", max_slices=9), 500)
    _assert_png(show_series(tiny_dataset, uid, tmp_path / "bsb.png", max_slices=4, channels="bsb"), 300)
    image = slices[slices["series_uid"] == uid]["image_id"].iloc[0]
    _assert_png(show_series_of_image(tiny_dataset, image, tmp_path / "of_image.png", max_slices=4), 300)
    with pytest.raises(InputError, match="channels must be"):
        show_series(tiny_dataset, uid, tmp_path / "x.png", channels="bone")


def test_bad_requests_raise_input_errors(tiny_dataset: Path, tmp_path: Path) -> None:
    slices, _ = load_index(tiny_dataset)
    with pytest.raises(InputError, match="unknown image 'ID_000000000'.*give an image ID such as"):
        show_image(tiny_dataset, "ID_000000000", tmp_path / "x.png")
    broken = slices[slices["status"] != "ok"].iloc[0]
    with pytest.raises(InputError, match=f"{broken['image_id']}: cannot draw it, its file is {broken['status']}"):
        show_image(tiny_dataset, broken["image_id"], tmp_path / "x.png")
    with pytest.raises(InputError, match="no such file"):
        show_image(tiny_dataset, str(tmp_path / "missing.dcm"), tmp_path / "x.png")
    with pytest.raises(InputError, match="unknown series 'ID_nope'"):
        show_series(tiny_dataset, "ID_nope", tmp_path / "x.png")
    with pytest.raises(InputError, match="not a dataset folder"):
        show_image(tmp_path, "ID_000000000", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_titles_are_inside_the_figure(tiny_dataset: Path, tmp_path: Path) -> None:
    """Nothing is cut at the edges: the outermost pixel columns of the panel figure are background."""
    slices, _ = load_index(tiny_dataset)
    image = slices[slices["status"] == "ok"]["image_id"].iloc[0]
    pixels = matplotlib.image.imread(show_image(tiny_dataset, image, tmp_path / "panel.png"))[..., :3]
    for edge in (pixels[:, :5], pixels[:, -5:], pixels[:5], pixels[-5:]):
        assert edge.min() > 0.95  # white margins all round: titles and the label column end inside


def test_montage_title_says_what_the_labels_say() -> None:
    rows = pd.DataFrame({"label_any": [np.nan] * 4})
    assert "unlabeled" in montage_title("1.2.3", rows, 4, "brain") and "hemorrhage" not in montage_title(
        "1.2.3", rows, 4, "brain")
    assert "1 with hemorrhage (brain" in montage_title("1.2.3", rows.assign(label_any=[0, 1, 0, 0]), 4, "brain")
    assert "1 with hemorrhage of 2 labeled" in montage_title("1.2.3", rows.assign(label_any=[0, 1, np.nan, np.nan]),
                                                              2, "bsb")
