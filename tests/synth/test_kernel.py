"""The synthetic generator's reconstruction-kernel setting: smoother or sharper images and noise."""

from __future__ import annotations

import numpy as np
import pytest

from ich3d.errors import ConfigError
from ich3d.synth.plan import SynthConfig
from ich3d.synth.series import reconstruct


def test_kernel_smooths_or_sharpens_image_and_noise() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((64, 64), dtype=np.float32)
    image[:, 32:] = 40.0
    noisy = image + rng.normal(0, 5, image.shape).astype(np.float32)
    assert reconstruct(noisy, 0.0, 0.5) is noisy
    smooth, sharp = reconstruct(noisy, 1.0, 0.5), reconstruct(noisy, -1.0, 0.5)
    flat = np.s_[:, 4:24]  # noise only
    assert smooth[flat].std() < noisy[flat].std() < sharp[flat].std()
    assert sharp[:, 28:36].max() > noisy[:, 28:36].max()  # the edge overshoots
    assert smooth.dtype == sharp.dtype == np.float32


def test_kernel_range_is_checked() -> None:
    with pytest.raises(ConfigError, match="kernel"):
        SynthConfig(kernel=-5.0)
