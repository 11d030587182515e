"""Display windows on numpy arrays and torch tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ich3d.constants import BSB_WINDOWS, HU_MAX, HU_MIN, WINDOWS
from ich3d.data.windowing import bsb, scaled_window, window


@pytest.mark.parametrize(("hu", "expected"), [(-1000, 0.0), (0, 0.0), (20, 0.25), (40, 0.5), (80, 1.0), (500, 1.0)])
def test_window_values_brain(hu: float, expected: float) -> None:
    assert window(np.array([hu], dtype=np.int16), 40, 80)[0] == pytest.approx(expected)
    assert window(torch.tensor([hu], dtype=torch.int16), 40, 80)[0].item() == pytest.approx(expected)


def test_window_keeps_kind_and_uses_float32() -> None:
    hu = np.arange(-100, 100, dtype=np.int16).reshape(10, 20)
    out = window(hu, 80.0, 200.0)
    assert out.dtype == np.float32 and out.shape == (10, 20)
    tensor = window(torch.from_numpy(hu), 80.0, 200.0)
    assert tensor.dtype == torch.float32
    np.testing.assert_allclose(tensor.numpy(), out, atol=1e-6)


def test_window_broadcasts_per_item_windows() -> None:
    hu = torch.zeros(2, 1, 4, 4)
    center = torch.tensor([0.0, 40.0]).view(2, 1, 1, 1)
    width = torch.tensor([100.0, 80.0]).view(2, 1, 1, 1)
    out = window(hu, center, width)
    assert out[0].unique().item() == pytest.approx(0.5)
    assert out[1].unique().item() == pytest.approx(0.0)


def test_bsb_stacks_channels_before_height_width() -> None:
    hu = np.full((5, 8, 8), 40, dtype=np.int16)
    out = bsb(hu)
    assert out.shape == (5, 3, 8, 8) and out.dtype == np.float32
    for channel, name in enumerate(BSB_WINDOWS):
        center, width = WINDOWS[name]
        assert out[:, channel].max() == pytest.approx((40 - (center - width / 2)) / width)


def test_bsb_torch_matches_numpy_and_keeps_dtype() -> None:
    hu = np.random.default_rng(0).integers(-1024, 2000, size=(2, 3, 16, 16)).astype(np.int16)
    expected = bsb(hu)
    tensor = bsb(torch.from_numpy(hu).to(torch.float64))
    assert tensor.shape == (2, 3, 3, 16, 16) and tensor.dtype == torch.float64
    np.testing.assert_allclose(tensor.numpy(), expected, atol=1e-6)


def test_bsb_matches_seed_notebook_formula() -> None:
    """The seed's bsb_window: clip to [c - w//2, c + w//2], then (img - (c - w/2)) / w."""
    hu = np.linspace(-300, 400, 64, dtype=np.float32).reshape(8, 8)
    seed = [(np.clip(hu, c - w // 2, c + w // 2) - (c - w / 2)) / w for c, w in ((40, 80), (80, 200), (40, 380))]
    np.testing.assert_allclose(bsb(hu), np.stack(seed), atol=1e-6)


def test_scaled_window_lut_matches_float_path() -> None:
    hu = np.arange(HU_MIN - 50, HU_MAX + 50, dtype=np.int32).astype(np.int16)
    lut = scaled_window(hu, 40, 80)
    direct = scaled_window(hu.astype(np.float32), 40, 80)
    assert lut.dtype == np.uint8
    np.testing.assert_array_equal(lut, direct)
    assert lut[hu <= 0].max() == 0 and lut[hu >= 80].min() == 255
