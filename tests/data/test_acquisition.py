"""Acquisition augmentations: HU stays in range, one draw per series and epoch, seeded, off at inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TRAINING

import ich3d
from ich3d.config import ACQUISITION, load_config
from ich3d.constants import HU_MAX, HU_MIN
from ich3d.data.acquisition import Acquisition, SeriesDraw, apply_draw, epoch_acquisition
from ich3d.data.datasets import SeriesDataset, SliceDataset
from ich3d.data.tables import SeriesTable, build_table
from ich3d.dataset.index import load_index
from ich3d.errors import ConfigError

ALL_ON = [f"augment.{name}.p=1" for name in ACQUISITION]


def _acquisition(overrides: list[str], seed: int = 0, epoch: int = 0) -> Acquisition:
    return Acquisition(load_config(None, overrides).augment, seed, epoch)


def _phantom(n: int = 5, size: int = 48) -> np.ndarray:
    """(n, size, size) int16: air, a skull ring at HU_MAX, brain at 40 HU, a HU_MIN hole, and in the middle
    slice a 75 HU bleed."""
    y, x = np.mgrid[:size, :size] - size / 2
    r = np.hypot(x, y)
    slice_ = np.full((size, size), HU_MIN, dtype=np.int16)
    slice_[r < 0.45 * size] = HU_MAX
    slice_[r < 0.4 * size] = 40
    slice_[:2, :2] = HU_MIN
    volume = np.repeat(slice_[None], n, axis=0)
    volume[n // 2][(abs(x - 5) < 4) & (abs(y) < 4)] = 75
    return volume


@pytest.mark.parametrize("name", ACQUISITION)
def test_each_augmentation_keeps_hu_in_range_and_changes_the_image(name: str) -> None:
    hu = _phantom()
    extreme = {"density": "contrast=0.6", "noise": "sd=200", "kernel": "sharpen=2", "calibration": "offset=100",
               "thickness": "factor=4", "resolution": "factor=0.25", "nonuniformity": "hu=100"}[name]
    acquisition = _acquisition([f"augment.{name}.p=1", f"augment.{name}.{extreme}"])
    changed = 0
    for uid in ("1.2.3", "1.2.4", "1.2.5", "1.2.6"):
        draw = acquisition.draw(uid)
        out = apply_draw(hu, draw, np.arange(len(hu)))
        assert out.dtype == np.int16 and out.shape == hu.shape
        assert HU_MIN <= out.min() and out.max() <= HU_MAX
        changed += not np.array_equal(out, hu)
    assert changed >= 3


def test_off_by_default_and_p_zero_leaves_the_cache_untouched() -> None:
    assert epoch_acquisition(load_config().augment, 0, 0) is None
    assert epoch_acquisition(load_config("cpu_small", [f"augment.{n}.p=0" for n in ACQUISITION]).augment, 0, 0) is None
    acquisition = _acquisition(["augment.noise.p=0.5"])
    hu = _phantom()
    draws = [acquisition.draw(f"1.2.{i}") for i in range(40)]
    untouched = [d for d in draws if d.noise_sd == 0]
    assert 5 < len(untouched) < 35  # p = 0.5 applies to about half the series
    assert np.array_equal(apply_draw(hu, untouched[0], np.arange(5)), hu)


def test_draw_depends_on_seed_epoch_and_series_only() -> None:
    a, b = _acquisition(ALL_ON, seed=3, epoch=1), _acquisition(ALL_ON, seed=3, epoch=1)
    assert a.draw("1.2.3") == b.draw("1.2.3")
    assert a.draw("1.2.3") != a.draw("1.2.4")
    assert a.draw("1.2.3") != _acquisition(ALL_ON, seed=3, epoch=2).draw("1.2.3")
    assert a.draw("1.2.3") != _acquisition(ALL_ON, seed=4, epoch=1).draw("1.2.3")
    hu = _phantom()
    np.testing.assert_array_equal(a.apply(hu, "1.2.3", np.arange(5)), b.apply(hu, "1.2.3", np.arange(5)))


def test_a_density_contrast_that_would_reach_bone_is_refused() -> None:
    with pytest.raises(ConfigError, match="augment.density.contrast.*must be in \\[0, 0.6\\]"):
        _acquisition(["augment.density.p=1", "augment.density.contrast=0.7"])


def test_switching_one_augmentation_off_keeps_the_others_draws() -> None:
    on, off = _acquisition(ALL_ON).draw("1.2.3"), _acquisition(ALL_ON + ["augment.noise.p=0"]).draw("1.2.3")
    assert off.noise_sd == 0 and on.noise_sd > 0
    assert (on.scale, on.offset, on.kernel, on.thickness, on.density) == (off.scale, off.offset, off.kernel,
                                                                          off.thickness, off.density)
    without = _acquisition(ALL_ON + ["augment.density.p=0"]).draw("1.2.3")
    assert without.density == 1 and on.density != 1
    assert without == SeriesDraw(**{**on.__dict__, "density": 1.0})


def test_physics_of_each_transform() -> None:
    flat = np.full((3, 32, 32), 40, dtype=np.int16)
    calibrated = apply_draw(flat, SeriesDraw(key=0, scale=1.02, offset=-10.0), np.arange(3))
    assert (calibrated == round(40 * 1.02 - 10)).all()
    noisy = apply_draw(flat, SeriesDraw(key=1, noise_sd=20.0, noise_sigma=1.0), np.arange(3))
    assert 17 < noisy.astype(float).std() < 23 and abs(noisy.mean() - 40) < 2
    fields = np.corrcoef(noisy[0].ravel()[:-1], noisy[0].ravel()[1:])[0, 1]
    assert fields > 0.5  # correlated between neighbouring pixels, not white
    assert not np.array_equal(noisy[0], noisy[1])  # each slice its own noise
    tissue = np.array([[[-1000, 20, 40, 70, 100, 120, 140, 1000]]], dtype=np.int16)
    fainter = apply_draw(tissue, SeriesDraw(key=0, density=0.5), np.arange(1))
    brighter = apply_draw(tissue, SeriesDraw(key=0, density=1.5), np.arange(1))
    assert fainter.tolist() == [[[-1000, 20, 40, 55, 70, 105, 140, 1000]]]  # blood only: grey matter, bone fixed
    assert brighter.tolist() == [[[-1000, 20, 40, 85, 130, 135, 140, 1000]]]  # and the map stays monotonic
    bright = np.zeros((5, 8, 8), dtype=np.int16)
    bright[2] = 300
    slab = apply_draw(bright, SeriesDraw(key=0, thickness=3.0), np.arange(5))
    assert slab[:, 0, 0].tolist() == [0, 100, 100, 100, 0]  # partial volume over three slices
    edge = np.zeros((1, 32, 32), dtype=np.int16)
    edge[:, :, 16:] = 100
    sharp = apply_draw(edge, SeriesDraw(key=0, kernel=-1.0), np.arange(1))
    smooth = apply_draw(edge, SeriesDraw(key=0, kernel=1.0), np.arange(1))
    low = apply_draw(edge, SeriesDraw(key=0, resolution=0.25), np.arange(1))
    assert sharp.max() > 100 and sharp.min() < 0  # overshoot at the edge
    assert 0 < smooth[0, 5, 15] < 100 and 0 < low[0, 5, 15] < 100  # a blurred edge


def test_a_span_is_the_same_pixels_as_the_whole_block() -> None:
    """The slice stage applies a draw to one slice and its thickness neighbours only."""
    hu = _phantom(n=7)
    draw = _acquisition(ALL_ON + ["augment.thickness.factor=3"]).draw("1.2.3")
    whole = apply_draw(hu, draw, np.arange(7))
    np.testing.assert_array_equal(apply_draw(hu, draw, np.arange(7), span=(2, 5)), whole[2:5])


def test_unreadable_slices_are_neither_averaged_in_nor_changed() -> None:
    hu = np.full((3, 8, 8), 100, dtype=np.int16)
    hu[1] = HU_MIN  # an unreadable slice in the cache
    draw = SeriesDraw(key=0, thickness=3.0, offset=5.0)
    out = apply_draw(hu, draw, np.arange(3), np.array([True, False, True]))
    assert (out[0] == 105).all() and (out[2] == 105).all() and (out[1] == HU_MIN).all()


def _table(dataset: Path) -> SeriesTable:
    slices, series = load_index(dataset)
    return build_table(dataset, slices, list(series["series_id"]))


def test_every_slice_of_a_series_gets_the_same_draw(tiny_dataset: Path) -> None:
    table = _table(tiny_dataset)
    acquisition = _acquisition(["augment.calibration.p=1", "augment.calibration.offset=50",
                                "augment.thickness.p=1", "augment.noise.p=1"], epoch=2)
    start, stop = int(table.offsets[0]), int(table.offsets[1])
    ids = np.arange(start + 1, stop - 1)
    items = SliceDataset(table, ids, context=1, acquisition=acquisition)
    plain = SliceDataset(table, ids, context=1)
    assert not np.array_equal(items[0][0].numpy(), plain[0][0].numpy())
    for i in range(len(ids) - 1):  # slice k read as the centre of item k and the left neighbour of item k + 1
        if table.readable[ids[i]] and table.readable[ids[i + 1]]:
            np.testing.assert_array_equal(items[i][0][1:].numpy(), items[i + 1][0][:2].numpy())
    whole = SeriesDataset(table, np.array([0]), acquisition=acquisition)[0]["hu"].numpy()
    for i, flat in enumerate(ids):  # the slice stage and the series stages see one and the same series
        if table.readable[flat]:
            np.testing.assert_array_equal(items[i][0][1].numpy(), whole[flat - start])


def test_training_applies_them_and_inference_never_does(tiny_dataset: Path, synthetic_rsna: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    apply = Acquisition.apply

    def counted(self: Acquisition, hu: np.ndarray, *args: object) -> np.ndarray:
        calls.append(len(hu))
        return apply(self, hu, *args)

    monkeypatch.setattr(Acquisition, "apply", counted)
    finetune = ["stages.finetune.epochs=1", "stages.finetune.batch_size=2", "stages.finetune.crop_len=8"]
    ich3d.fit(tiny_dataset, tmp_path / "run", "cpu_small", TINY_TRAINING + ALL_ON + finetune)
    assert len(calls) > 96 * 2  # every sampled slice of both slice epochs, and the finetune crops

    def refused(*args: object) -> None:
        raise AssertionError("an acquisition augmentation ran at inference")

    monkeypatch.setattr(Acquisition, "apply", refused)
    ich3d.predict([tmp_path / "run"], tmp_path / "pred", dicom_dirs=[synthetic_rsna / "stage_2_test"], progress=False)
    assert (tmp_path / "pred" / "submission.csv").is_file()
