"""Grad-CAM through the sequence model: maps on the original pixel grid for the registry's encoders, the
batched gradients equal per-label backpropagation, the command, the pointing-game helpers."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ich3d.app.cli import main
from ich3d.config import DataConfig
from ich3d.constants import LABELS
from ich3d.dataset.cache import resize
from ich3d.dataset.crop import CacheBox, cache_box, crop_square, padding_box
from ich3d.dataset.index import load_index
from ich3d.errors import InputError
from ich3d.app.explain import dilate, pointing_game
from ich3d.inference.explainer import Explainer
from ich3d.inference.gradcam import CamSettings, _logit_gradients, series_gradcam, to_original
from ich3d.models.model import build_model


def _model(encoder: str, in_channels: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = {"encoder": {"name": encoder}, "head": {"name": "gru", "hidden": 8, "num_layers": 1, "dropout": 0.0}}
    return build_model(spec, in_channels).eval()


@pytest.mark.parametrize("encoder, data", [("small", DataConfig(image_size=64)),
                                           ("small", DataConfig(image_size=64, input="bsb25d", context=1)),
                                           ("resnet18", DataConfig(image_size=64))])
def test_maps_cover_the_original_grid_for_registry_encoders(encoder: str, data: DataConfig) -> None:
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 100, size=(5, 64, 64)).astype(np.int16)
    readable = np.array([True, True, False, True, True])
    model = _model(encoder, data.in_channels)
    probs, maps = series_gradcam(model, hu, readable, data, [0, 3])
    assert probs.shape == (2, len(LABELS)) and ((probs > 0) & (probs < 1)).all()
    assert maps.shape[:2] == (2, len(LABELS)) and min(maps.shape[2:]) >= 2
    assert np.isfinite(maps).all() and (maps >= 0).all() and maps.sum() > 0
    original = to_original(maps[0, 0], cache_box({"rows": 48, "cols": 64}), 48, 64)  # a 48 x 64 slice, padded
    assert original.shape == (48, 64) and np.isfinite(original).all()
    with pytest.raises(InputError, match="could not be read"):
        series_gradcam(model, hu, readable, data, [2])


@pytest.mark.parametrize("encoder, kwargs, side", [("timm/test_resnet", {}, 16), ("timm/test_convnext", {}, 16),
                                                   ("timm/test_efficientnet", {}, 16), ("timm/test_vit", {"img_size": 64}, 4)])
def test_timm_backbones_explain_through_their_stages(encoder: str, kwargs: dict, side: int) -> None:
    """CNN stages (NCHW) and ViT tokens (the input of the last block: the class token reads only that
    block's attention) become maps the logits depend on."""
    pytest.importorskip("timm")
    torch.manual_seed(0)
    spec = {"encoder": {"name": encoder, "kwargs": kwargs},
            "head": {"name": "gru", "hidden": 8, "num_layers": 1, "dropout": 0.0}}
    model = build_model(spec, 9).eval()
    hu = np.random.default_rng(0).integers(-1000, 100, size=(4, 64, 64)).astype(np.int16)
    data = DataConfig(image_size=64, input="bsb25d", context=1)
    probs, maps = series_gradcam(model, hu, np.ones(4, dtype=bool), data, [1, 2])
    assert maps.shape[:2] == (2, len(LABELS)) and maps.shape[2:] == (side, side)
    assert np.isfinite(maps).all() and (maps >= 0).all() and (maps.sum(axis=(2, 3)) > 0).any(axis=1).all()


@pytest.mark.parametrize("steps, labels", [(0, (0, 1, 2, 3, 4, 5)), (4, (0, 1, 2, 3, 4, 5)), (3, (5, 0))])
def test_batched_gradients_equal_one_backward_per_label(steps: int, labels: tuple[int, ...]) -> None:
    model = _model("small")
    torch.manual_seed(1)
    context, embedding = torch.randn(1, 7, model.out_features), torch.randn(1, model.out_features)
    keep = torch.ones(1, 7, dtype=torch.bool)
    logits, grads = _logit_gradients(model, context, embedding, 3, keep, steps, labels)
    start = model.head.missing_embedding.detach()[None]
    points = [embedding] if steps == 0 else [start + (k + 0.5) / steps * (embedding - start) for k in range(steps)]
    expected = torch.zeros_like(grads)
    for point in points:
        leaf = point.clone().requires_grad_(True)
        out = model.head(torch.cat([context[:, :3], leaf[:, None], context[:, 4:]], dim=1), keep, keep)[0, 3]
        for k, j in enumerate(labels):
            expected[k] += torch.autograd.grad(out[j], leaf, retain_graph=True)[0][0] / len(points)
    reference = model.head(torch.cat([context[:, :3], embedding[:, None], context[:, 4:]], dim=1), keep, keep)[0, 3]
    torch.testing.assert_close(grads, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logits, reference.detach())


def test_to_original_undoes_the_cache_resize_and_padding() -> None:
    rows, cols = np.mgrid[:48, :64]
    original = (rows * 2.0 + cols).astype(np.float32)  # smooth, so resampling keeps it
    cached = resize(crop_square(original, padding_box(48, 64), -1024.0), 32)
    box = cache_box({"rows": 48, "cols": 64})
    assert box == CacheBox(-8.0, 0.0, 64.0)
    back = to_original(cached, box, 48, 64, fill=np.nan)
    assert np.abs(back - original)[2:-2, 2:-2].max() < 0.5
    assert np.isnan(to_original(cached, CacheBox(10.0, 0.0, 30.0), 48, 64, fill=np.nan)[:10]).all()


def test_explain_command_and_explainer_on_a_trained_run(trained_run: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    slices, _ = load_index(tiny_dataset)
    ok = slices[slices["status"] == "ok"]
    odd = ok[ok["rows"] != 64].iloc[0]
    result = CliRunner().invoke(main, ["explain", odd["image_id"], "--run", str(trained_run), "--dataset",
                                       str(tiny_dataset), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 0, result.output
    picture = matplotlib.image.imread(tmp_path / "x.png")
    assert picture.shape[1] > 1000 and picture.std() > 0.05
    explainer = Explainer.from_runs([trained_run], tiny_dataset, settings=CamSettings(steps=2))
    explanation = explainer.explain([odd["image_id"]], labels=("any", "subdural"))[0]
    assert explanation.heatmaps.shape == (2, odd["rows"], odd["cols"]) == (2, *explanation.hu.shape)
    assert explanation.probs.shape == (len(LABELS),)
    assert np.isfinite(explanation.heatmaps).all()
    assert explanation.overlay("subdural").shape == (*explanation.hu.shape, 3)
    broken = slices[slices["status"] != "ok"].iloc[0]
    result = CliRunner().invoke(main, ["explain", broken["image_id"], "--run", str(trained_run), "--dataset",
                                       str(tiny_dataset), "--out", str(tmp_path / "y.png")])
    assert result.exit_code == 1 and "cannot draw it" in result.output and not (tmp_path / "y.png").exists()


def test_pointing_game_and_dilation() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:8, 5:8] = True
    heat = np.zeros((20, 20))
    heat[6, 10] = 1.0  # 3 pixels right of the mask
    assert pointing_game(heat, mask, 3) and not pointing_game(heat, mask, 2)
    assert not pointing_game(heat, np.zeros_like(mask), 100)
    assert dilate(mask, 1).sum() == 9 + 4 * 3 and not dilate(np.zeros_like(mask), 5).any()
