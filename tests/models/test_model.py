"""Tests of ich3d.models.model: folded slices into the encoder batch, the head path, build_model."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ich3d.checkpoint import load_checkpoint, save_checkpoint
from ich3d.errors import ConfigError
from ich3d.models.model import IchModel, build_model


def _cfg(head: str = "gru", encoder: str = "small", weights: str | None = None) -> dict:
    kwargs = {"widths": [8, 16, 32]} if encoder == "small" else {}
    return {
        "encoder": {"name": encoder, "weights": weights, "kwargs": kwargs},
        "head": {"name": head, "hidden": 16, "num_layers": 2, "dropout": 0.1},
    }


def _batch(in_channels: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.rand(2, 5, in_channels, 32, 32)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    readable = mask.clone()
    readable[0, 1] = False
    x[~readable] = float("nan")  # neither padding nor unreadable slices may reach the encoder
    return x, mask, readable


@pytest.mark.parametrize("head", ["gru", "slice"])
def test_forward_equals_encode_then_head(head: str) -> None:
    model = build_model(_cfg(head), in_channels=3).eval()
    x, mask, readable = _batch()
    keep = mask & readable
    logits = model(x[keep], mask, readable)
    assert logits.shape == (2, 5, 6) and torch.isfinite(logits).all()
    embeddings = torch.full((2, 5, model.out_features), float("nan"))
    embeddings[keep] = model.encode(x[keep])
    torch.testing.assert_close(model.head(embeddings, mask, readable), logits)
    with pytest.raises(ValueError, match="x holds 8 images, mask & readable select 7"):
        model(x[mask], mask, readable)  # the unreadable slice must not be among the images


def test_single_slices_are_series_of_one() -> None:
    model = build_model(_cfg("slice"), in_channels=3).eval()
    x = _batch()[0][1, :3]
    single = torch.ones((3, 1), dtype=torch.bool)
    torch.testing.assert_close(model(x, single)[:, 0], model.head(model.encode(x)[:, None], single)[:, 0])


def test_training_step_with_unreadable_and_no_readable_slices() -> None:
    model = build_model(_cfg(), in_channels=9).train()
    x, mask, readable = _batch(in_channels=9)
    model(x[mask & readable], mask, readable).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    nothing = torch.zeros_like(mask)
    assert torch.isfinite(model(x[nothing], mask, nothing)).all()
    assert model.encode(x[nothing]).shape == (0, model.out_features)


def test_channels_last_and_autocast() -> None:
    model = build_model(_cfg(), in_channels=3).eval()
    x, mask, readable = _batch()
    x = x[mask & readable]
    reference = model(x, mask, readable)
    model = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x, mask, readable), reference, atol=1e-5, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x, mask, readable)
    torch.testing.assert_close(logits.float(), reference, atol=0.1, rtol=0.1)


def test_build_model_from_config_dataclasses() -> None:
    @dataclasses.dataclass
    class Encoder:
        name: str = "small"
        weights: str | None = None
        kwargs: dict = dataclasses.field(default_factory=dict)

    @dataclasses.dataclass
    class Head:
        name: str = "slice"
        hidden: int = 128
        num_layers: int = 2
        dropout: float = 0.1

    @dataclasses.dataclass
    class Model:
        encoder: Encoder = dataclasses.field(default_factory=Encoder)
        head: Head = dataclasses.field(default_factory=Head)

    model = build_model(dataclasses.asdict(Model()), in_channels=3)
    assert isinstance(model, IchModel) and model.out_features == model.encoder.out_features


def test_build_model_errors_and_load_weights(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.head"):
        build_model({"encoder": {"name": "small"}}, 3)
    with pytest.raises(ConfigError, match="model.encoder"):
        build_model({"encoder": {"name": "small", "depth": 3}, "head": {"name": "gru"}}, 3)
    missing = str(tmp_path / "imagenet.pt")
    with pytest.raises(ConfigError, match="encoder weights not found"):
        build_model(_cfg(weights=missing), 3)
    assert isinstance(build_model(_cfg(weights=missing), 3, load_weights=False), IchModel)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build_model(_cfg(), in_channels=3).eval()
    save_checkpoint(tmp_path / "model.pt", {"model": _cfg(), "in_channels": 3, "state_dict": model.state_dict()})
    payload = load_checkpoint(tmp_path / "model.pt")
    restored = build_model(payload["model"], payload["in_channels"]).eval()
    restored.load_state_dict(payload["state_dict"])
    x, mask, readable = _batch()
    x = x[mask & readable]
    assert torch.equal(restored(x, mask, readable), model(x, mask, readable))


def test_importing_the_model_does_not_import_monai() -> None:
    code = "import sys, ich3d.models.model; assert 'monai' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
