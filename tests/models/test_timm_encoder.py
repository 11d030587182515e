"""timm backbones as encoders: shapes for CNNs and transformers, pretrained weights from a local file
(state dict or safetensors, 2.5D first convolution adapted), the normalisation they expect, the one-line
errors of missing weights (also from a fresh process with HF_HUB_OFFLINE=1), training and predicting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_TRAINING

from ich3d.errors import ConfigError
from ich3d.models.encoder import build_encoder, check_encoder_weights
from ich3d.models.timm_encoder import TimmEncoder

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

#: timm's tiny test models (a few hundred thousand parameters): a CNN of each family and a ViT.
TINY = {"timm/test_resnet": {}, "timm/test_efficientnet": {}, "timm/test_convnext": {}, "timm/test_vit": {"img_size": 32}}


@pytest.mark.parametrize("in_channels", [3, 9])
@pytest.mark.parametrize("name", list(TINY))
def test_timm_backbones_shape_backward_no_nan(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    encoder = build_encoder(name, in_channels, **TINY[name])
    features = encoder(torch.rand(2, in_channels, 32, 32))
    assert isinstance(encoder, TimmEncoder) and features.shape == (2, encoder.out_features)
    assert encoder.out_features == encoder.backbone.num_features and torch.isfinite(features).all()
    features.square().mean().backward()
    first_conv = next(p for p in encoder.parameters() if p.ndim == 4)
    assert first_conv.shape[1] == in_channels and first_conv.grad.abs().sum() > 0


def _imagenet_like(path: Path, name: str = "test_efficientnet") -> torch.nn.Module:
    """A 3-channel timm model with its 1000-class classifier, saved as a plain state dict or safetensors."""
    torch.manual_seed(1)
    model = timm.create_model(name, pretrained=False).eval()
    if path.suffix == ".safetensors":
        safetensors_torch.save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    return model


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_load_and_normalise_as_the_weights_expect(tmp_path: Path, suffix: str) -> None:
    source = _imagenet_like(tmp_path / f"weights{suffix}")
    encoder = build_encoder("timm/test_efficientnet", 3, tmp_path / f"weights{suffix}").eval()
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(encoder.input_mean, mean) and torch.allclose(encoder.input_std, std)
    assert {"input_mean", "input_std"} <= set(encoder.state_dict())  # recorded in every checkpoint
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = source.forward_head(source.forward_features((x - mean[:, None, None]) / std[:, None, None]),
                                       pre_logits=True)
        assert torch.allclose(encoder(x), expected, atol=1e-5)


def test_2_5d_input_gets_the_pretrained_first_convolution_adapted(tmp_path: Path) -> None:
    source = _imagenet_like(tmp_path / "w.pth")
    encoder = build_encoder("timm/test_efficientnet", 9, tmp_path / "w.pth")
    rgb = source.conv_stem.weight.detach()  # (O, 3, k, k)
    adapted = encoder.backbone.conv_stem.weight.detach()
    assert adapted.shape == (rgb.shape[0], 9, *rgb.shape[2:])
    # channel i of a 2.5D stack holds window i mod 3: it gets colour i mod 3's filter, scaled by 3 / 9
    assert torch.allclose(adapted, rgb.repeat(1, 3, 1, 1) / 3)
    assert torch.allclose(encoder.input_mean, torch.tensor([0.485, 0.456, 0.406]).repeat(3))
    assert torch.equal(encoder.backbone.bn1.weight, source.bn1.weight)  # the rest as it was
    # equal neighbours: the 9-channel network sees what the 3-channel one saw
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(encoder.eval()(x.repeat(1, 3, 1, 1)),
                              build_encoder("timm/test_efficientnet", 3, tmp_path / "w.pth").eval()(x), atol=1e-5)


def test_weights_of_another_model_and_missing_files_are_one_line_errors(tmp_path: Path) -> None:
    _imagenet_like(tmp_path / "resnet.pth", "test_resnet")
    with pytest.raises(ConfigError, match="do not fit timm model test_efficientnet") as error:
        build_encoder("timm/test_efficientnet", 3, tmp_path / "resnet.pth")
    assert "\n" not in str(error.value)
    missing = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(ConfigError, match=r"download model.safetensors from https://huggingface.co/timm/"
                                          r"test_efficientnet.r160_in1k and save it as .*nowhere/model.safetensors"):
        check_encoder_weights({"name": "timm/test_efficientnet", "weights": str(missing)})
    with pytest.raises(ConfigError, match="unknown timm model 'no_such_net'"):
        build_encoder("timm/no_such_net", 3)
    with pytest.raises(ConfigError, match="for timm/<model> encoders"):
        build_encoder("small", 3, pretrained_source="hub")


def test_hf_cache_is_used_when_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file in the Hugging Face cache layout (as `hf download` leaves it) is found with `pretrained: cache`."""
    from huggingface_hub import constants

    snapshot = tmp_path / "models--timm--test_resnet.r160_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    _imagenet_like(snapshot / "model.safetensors", "test_resnet")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert check_encoder_weights({"name": "timm/test_resnet", "pretrained": "cache"}) == snapshot / "model.safetensors"


def test_offline_cache_miss_in_a_fresh_process_is_one_line(tiny_dataset: Path, tmp_path: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(Path(__file__).parents[2]))
    command = [sys.executable, "-m", "ich3d.app.cli", "train", "--dataset", str(tiny_dataset), "--out",
               str(tmp_path / "run"), "--config", "cpu_small", "--set", "model.encoder.name=timm/test_resnet",
               "--set", "model.encoder.pretrained=hub"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "not in the Hugging Face cache" in lines[0] and "HF_HUB_OFFLINE is set" in lines[0]
    assert "https://huggingface.co/timm/test_resnet.r160_in1k" in lines[0] and "model.encoder.weights" in lines[0]
    assert not (tmp_path / "run").exists()  # nothing written before the check


@pytest.mark.slow
def test_a_timm_model_from_a_local_file_trains_a_fold_and_predicts(tiny_dataset: Path, tmp_path: Path) -> None:
    from ich3d.checkpoint import load_checkpoint
    from ich3d.inference.run import predict
    from ich3d.layout import InferFolder, RunFolder
    from ich3d.training.fit import fit

    _imagenet_like(tmp_path / "imagenet.safetensors")
    run = tmp_path / "run"
    fit(tiny_dataset, run, "cpu_small", TINY_TRAINING + [
        "model.encoder.name=timm/test_efficientnet", f"model.encoder.weights={tmp_path / 'imagenet.safetensors'}",
        "data.input=bsb25d"])
    checkpoint = load_checkpoint(RunFolder(run).fold(0).model)
    assert checkpoint["model"]["encoder"]["name"] == "timm/test_efficientnet"
    assert torch.allclose(checkpoint["state_dict"]["encoder.input_std"], torch.tensor([0.229, 0.224, 0.225]).repeat(3))
    (tmp_path / "imagenet.safetensors").unlink()  # inference needs the run folder only
    predict([run], tmp_path / "out", dataset=tiny_dataset, progress=False)
    predictions = pd.read_parquet(InferFolder(tmp_path / "out").predictions)
    model_rows = predictions[predictions["predicted_by"] == "model"]
    assert len(model_rows) > 0 and np.isfinite(model_rows["p_any"]).all()
