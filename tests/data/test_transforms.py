"""Batch transforms: BSB channels equal the windowing module's, augmentation is per series and seeded."""

from __future__ import annotations

import numpy as np
import torch

from ich3d.config import AugmentConfig
from ich3d.data.transforms import sample_augment, series_neighbours, to_input
from ich3d.data.windowing import bsb


def test_plain_input_is_bsb_of_each_slice() -> None:
    hu = torch.randint(-1000, 1500, (4, 3, 16, 16), dtype=torch.int16)
    x = to_input(hu, 16)
    assert x.shape == (4, 9, 16, 16)
    expected = bsb(hu.numpy().astype(np.float32)).reshape(4, 9, 16, 16)
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)
    none = AugmentConfig(flip=False, rotate_deg=0, scale=0, translate=0, window_jitter=0)
    params = sample_augment(4, none, torch.Generator().manual_seed(0))
    torch.testing.assert_close(to_input(hu, 16, params, augment=True), x, atol=1e-5, rtol=0)


def test_resize_and_augment_are_deterministic_per_seed() -> None:
    hu = torch.randint(-100, 200, (6, 1, 32, 32), dtype=torch.int16)
    cfg = AugmentConfig()
    a = to_input(hu, 16, sample_augment(6, cfg, torch.Generator().manual_seed(1)), augment=True)
    b = to_input(hu, 16, sample_augment(6, cfg, torch.Generator().manual_seed(1)), augment=True)
    c = to_input(hu, 16, sample_augment(6, cfg, torch.Generator().manual_seed(2)), augment=True)
    assert a.shape == (6, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    assert 0 <= a.min() and a.max() <= 1


def test_series_share_their_augmentation() -> None:
    params = sample_augment(2, AugmentConfig(flip=True), torch.Generator().manual_seed(0))
    per_slice = params.take(torch.tensor([0, 0, 0, 1, 1]))
    assert torch.equal(per_slice.theta[0], per_slice.theta[2])
    assert torch.equal(per_slice.windows[3], per_slice.windows[4])


def test_neighbours_clamp_at_ends_and_skip_unreadable() -> None:
    hu = torch.arange(5, dtype=torch.int16)[None, :, None, None].expand(1, 5, 2, 2).clone()
    readable = torch.tensor([[True, True, False, True, True]])
    stacked = series_neighbours(hu, readable, context=1)[0, :, :, 0, 0]
    assert stacked.tolist() == [[0, 0, 1], [0, 1, 1], [1, 2, 3], [3, 3, 4], [3, 4, 4]]


def test_elastic_warp_is_one_smooth_field_per_series_of_the_configured_size_and_off_at_inference() -> None:
    size, elastic = 64, 0.03
    still = dict(flip=False, rotate_deg=0, scale=0, translate=0, window_jitter=0)
    plain = sample_augment(3, AugmentConfig(**still), torch.Generator().manual_seed(5))
    warped = sample_augment(3, AugmentConfig(**still, elastic=elastic), torch.Generator().manual_seed(5))
    assert plain.warp is None and warped.warp is not None
    assert torch.equal(plain.theta, warped.theta) and torch.equal(plain.windows, warped.windows)  # same draws
    ramp = (8 + torch.arange(size)).expand(size, size)  # HU rising 1 a pixel left to right, in the brain window
    hu = ramp.to(torch.int16)[None, None].expand(3, 1, size, size).clone()
    before = to_input(hu, size, plain, augment=True)[:, 0]
    after = to_input(hu, size, warped, augment=True)[:, 0]
    assert torch.equal(to_input(hu, size, warped), to_input(hu, size, plain))  # no warp without augment=True
    assert 0 <= after.min() and after.max() <= 1
    inner = slice(8, -8)
    shift_px = ((after - before) * 80)[:, inner, inner]  # x displacement in pixels (the window is 80 HU wide)
    assert 0.4 * elastic * size < shift_px.std() < 1.2 * elastic * size
    assert shift_px.diff(dim=-1).abs().max() < 0.5  # smooth: neighbouring pixels move alike
    assert not torch.allclose(shift_px[0], shift_px[1], atol=0.5)  # each series its own field
    per_slice = warped.take(torch.tensor([0, 0, 2]))
    assert torch.equal(per_slice.warp[0], per_slice.warp[1]) and not torch.equal(per_slice.warp[0], per_slice.warp[2])
