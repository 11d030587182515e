"""Tests of ich3d.checkpoint: round trip with weights_only, atomicity, payload validation, versions."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import ich3d.checkpoint as checkpoint
from ich3d import __version__
from ich3d.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from ich3d.constants import Status
from ich3d.errors import ConfigError, InputError


def _payload() -> dict:
    model = torch.nn.Linear(4, 6)
    return {
        "model": model.state_dict(),
        "config": {"model": {"encoder": {"name": "small", "weights": None, "kwargs": {}}}, "lr": 1e-3},
        "labels": ["any", "epidural"],
        "stage": "sequence",
        "epoch": 3,
        "metrics": {"weighted_log_loss": np.float64(0.25), "auc": {"any": None}},
        "shape": (1, 2),
        "dtype": torch.float16,
    }


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "run" / "model.pt"
    payload = _payload()
    save_checkpoint(path, payload)
    loaded = load_checkpoint(path)
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION and raw["ich3d_version"] == __version__
    assert isinstance(loaded["model"], OrderedDict)
    for key, value in payload["model"].items():
        assert torch.equal(loaded["model"][key], value)
    assert loaded["config"] == payload["config"]
    assert loaded["metrics"]["weighted_log_loss"] == 0.25
    assert type(loaded["metrics"]["weighted_log_loss"]) is float
    assert loaded["shape"] == (1, 2) and loaded["dtype"] is torch.float16
    assert "format_version" not in payload  # the caller's dict is not modified
    assert list(path.parent.iterdir()) == [path]


@dataclasses.dataclass
class _Config:
    lr: float = 1e-3


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        ({"config": _Config()}, "config"),
        ({"run": {"dir": Path("/tmp")}}, "run.dir"),
        ({"preds": [0.1, np.zeros(3)]}, "preds[1]"),
        ({"status": Status.OK}, "status"),
        ({"fn": len}, "fn"),
    ],
)
def test_rejects_non_plain_payload(tmp_path: Path, payload: dict, key: str) -> None:
    path = tmp_path / "model.pt"
    with pytest.raises(TypeError, match=key.replace("[", r"\[").replace("]", r"\]")):
        save_checkpoint(path, payload)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_old_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})

    def broken_save(obj: object, handle) -> None:  # noqa: ANN001 - mimics torch.save
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert list(tmp_path.iterdir()) == [path]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="checkpoint not found.*ich3d train"):
        load_checkpoint(tmp_path / "model.pt")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_corrupt_file(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "model.pt"
    if content is None:  # a truncated real checkpoint
        save_checkpoint(path, _payload())
        content = path.read_bytes()[:200]
    path.write_bytes(content)
    with pytest.raises(InputError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"config": _Config(), "format_version": FORMAT_VERSION}, path)
    with pytest.raises(InputError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_other_format_version(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"format_version": FORMAT_VERSION + 1, "ich3d_version": "9.9"}, path)
    with pytest.raises(ConfigError, match=f"format version {FORMAT_VERSION + 1}.*format version {FORMAT_VERSION}"):
        load_checkpoint(path)
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(InputError, match="not an ich3d checkpoint"):
        load_checkpoint(path)
