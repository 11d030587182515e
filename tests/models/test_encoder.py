"""Tests of ich3d.models.encoder: every registered encoder, the factory's errors, local weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ich3d.errors import ConfigError
from ich3d.models.encoder import ENCODERS, adapt_input_conv, build_encoder


@pytest.mark.parametrize("in_channels", [3, 9])
@pytest.mark.parametrize("name", list(ENCODERS))
def test_every_encoder_shape_backward_no_nan(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    encoder = build_encoder(name, in_channels)
    x = torch.rand(2, in_channels, 64, 64)
    features = encoder(x)
    assert features.shape == (2, encoder.out_features)
    assert torch.isfinite(features).all()
    features.square().mean().backward()
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    first_conv = next(p for p in encoder.parameters() if p.ndim == 4)
    assert first_conv.shape[1] == in_channels and first_conv.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_resnets_use_the_2d_stem(name: str) -> None:
    encoder = build_encoder(name, 3)
    assert encoder.conv1.stride == (2, 2) and encoder.conv1.kernel_size == (7, 7)
    assert not encoder.no_max_pool and encoder.fc is None
    assert build_encoder(name, 3, conv1_t_stride=1).conv1.stride == (1, 1)  # still overridable


def test_unknown_name_lists_known_encoders() -> None:
    with pytest.raises(ConfigError, match="known encoders: small, resnet18"):
        build_encoder("vit-huge", 3)


def test_bad_kwargs_and_pretrained_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="cannot build encoder 'small'"):
        build_encoder("small", 3, depth=7)
    with pytest.raises(ConfigError, match="never downloads"):
        build_encoder("densenet121", 3, pretrained=True)


def test_small_encoder_widths() -> None:
    encoder = build_encoder("small", 3, widths=[8, 16, 32])
    assert encoder.out_features == 32
    assert encoder(torch.rand(1, 3, 32, 32)).shape == (1, 32)


def test_small_encoder_avgmax_pooling_keeps_a_one_cell_signal() -> None:
    encoder = build_encoder("small", 3, widths=[8, 16, 32], pool="avgmax").eval()
    assert encoder.out_features == 64
    feature_map = torch.zeros(1, 32, 4, 4)
    feature_map[0, :, 1, 2] = 1.0  # one cell of sixteen lights up
    pooled = encoder.pool(feature_map).flatten(1)
    assert torch.allclose(pooled[0, :32], torch.full((32,), 1 / 16)) and torch.all(pooled[0, 32:] == 1)
    assert encoder(torch.rand(2, 3, 32, 32)).shape == (2, 64)
    with pytest.raises(ConfigError, match="pool must be one of avg, avgmax"):
        build_encoder("small", 3, pool="median")


def _eval_output(encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder.eval()(x)


def test_weights_round_trip_with_prefix_and_classifier(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_encoder("small", 3)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(2, 192)  # a classifier the encoder does not have
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": state}, path)
    loaded = build_encoder("small", 3, pretrained_weights=path)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(_eval_output(loaded, x), _eval_output(source, x))


def test_weights_from_an_ich3d_model_state_dict(tmp_path: Path) -> None:
    source = build_encoder("small", 3)
    state = {f"encoder.{k}": v for k, v in source.state_dict().items()} | {"head.out.weight": torch.zeros(6, 4)}
    torch.save(state, tmp_path / "model.pt")
    loaded = build_encoder("small", 3, pretrained_weights=tmp_path / "model.pt")
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(_eval_output(loaded, x), _eval_output(source, x))


def test_first_conv_adapted_from_3_to_9_channels(tmp_path: Path) -> None:
    source = build_encoder("small", 3)
    torch.save(source.state_dict(), tmp_path / "rgb.pt")
    target = build_encoder("small", 9, pretrained_weights=tmp_path / "rgb.pt")
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(_eval_output(target, x.repeat(1, 3, 1, 1)), _eval_output(source, x))
    assert adapt_input_conv(torch.ones(4, 3, 3, 3), 1).shape == (4, 1, 3, 3)


def test_unusable_weights_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="encoder weights not found"):
        build_encoder("small", 3, pretrained_weights=tmp_path / "missing.pt")
    torch.save(build_encoder("small", 3, widths=[8, 16]).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="do not fit the encoder"):
        build_encoder("small", 3, pretrained_weights=tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="cannot read encoder weights"):
        build_encoder("small", 3, pretrained_weights=tmp_path / "junk.pt")
    torch.save({"lr": 0.1}, tmp_path / "nostate.pt")
    with pytest.raises(ConfigError, match="no state dict"):
        build_encoder("small", 3, pretrained_weights=tmp_path / "nostate.pt")


def test_a_timm_encoder_without_timm_installed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError, as where it is not installed
    with pytest.raises(ConfigError, match=r"pip install 'ich3d\[timm\]'"):
        build_encoder("timm/resnet18", 3)
