"""Model checkpoints: saved and loaded as a TrainedModel, version 1 upgraded once, other versions refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ich3d.checkpoint import save_checkpoint
from ich3d.config import load_config
from ich3d.constants import RSNA_SLICE_SPACING_MM
from ich3d.errors import InputError
from ich3d.models.calibration import identity
from ich3d.models.io import (
    MODEL_VERSION,
    Provenance,
    TrainedFacts,
    load_trained,
    model_spec,
    save_model,
    store_fitted,
)
from ich3d.models.model import build_model
from ich3d.models.operating import DEFAULT_THRESHOLD, fit_operating_points

CONFIG = load_config("cpu_small", ["model.head.hidden=8", "data.image_size=32", "infer.tta_reverse=false"])


def _logits(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(0)
    x, mask = torch.rand(4, 3, 32, 32), torch.ones(1, 4, dtype=torch.bool)
    with torch.no_grad():
        return model(x, mask, mask)


def _v1_payload(model: torch.nn.Module) -> dict:
    """What ich3d 0.1 wrote: no model_version, no crop, no calibration or spacing, a batch size under infer."""
    config = CONFIG.to_dict()
    config["data"].pop("crop")
    config["infer"]["batch_size"] = 16
    return {"model": model_spec(CONFIG), "state_dict": model.state_dict(), "config": config, "in_channels": 3,
            "image_size": 32, "labels": ["any"], "prevalence": [0.1] * 6, "fold": 0, "stage": "sequence", "epoch": 2,
            "metrics": {"weighted_log_loss": 0.5}}


def test_saved_model_loads_as_a_trained_model(tmp_path: Path) -> None:
    model = build_model(model_spec(CONFIG), 3).eval()
    facts = TrainedFacts(model_spec(CONFIG), np.full(6, 0.2), 2.5, Provenance(fold=1, stage="sequence", epoch=3))
    save_model(tmp_path / "model.pt", model, CONFIG, facts)
    trained = load_trained(tmp_path / "model.pt")
    assert torch.equal(_logits(trained.module), _logits(model))
    assert (trained.fold, trained.stage, trained.epoch, trained.slice_spacing) == (1, "sequence", 3, 2.5)
    assert trained.data == CONFIG.data and trained.tta == CONFIG.infer and trained.crop == CONFIG.data.crop
    np.testing.assert_array_equal(trained.prevalence, np.full(6, 0.2))
    assert trained.calibration == identity() and trained.operating.threshold == (DEFAULT_THRESHOLD,) * 6
    operating = fit_operating_points(np.linspace(0, 1, 20)[:, None].repeat(6, 1), np.tile([0, 1], 10)[:, None].repeat(6, 1)
                                     .astype(float), "test exams")
    store_fitted(tmp_path / "model.pt", identity() | {"a": [0.5] * 6}, {"fitted_on": "test"}, operating)
    again = load_trained(tmp_path / "model.pt")
    assert again.operating == operating and again.calibration["a"] == [0.5] * 6
    assert again.calibration_report == {"fitted_on": "test"}


def test_version_1_checkpoint_is_upgraded_with_documented_defaults(tmp_path: Path) -> None:
    model = build_model(model_spec(CONFIG), 3).eval()
    save_checkpoint(tmp_path / "old.pt", _v1_payload(model))
    trained = load_trained(tmp_path / "old.pt")
    assert trained.crop == "none"  # caches were not cropped before crops were recorded
    assert trained.tta == CONFIG.infer  # the old batch size is dropped
    assert trained.slice_spacing == RSNA_SLICE_SPACING_MM
    assert trained.calibration == identity() and trained.calibration_report is None
    assert trained.operating.threshold == (DEFAULT_THRESHOLD,) * 6 and not any(trained.operating.fitted)
    assert torch.equal(_logits(trained.module), _logits(model))


@pytest.mark.parametrize("version", [MODEL_VERSION + 1, 0, "2"])
def test_other_model_versions_are_refused_in_one_line(tmp_path: Path, version: object) -> None:
    model = build_model(model_spec(CONFIG), 3).eval()
    save_checkpoint(tmp_path / "new.pt", _v1_payload(model) | {"model_version": version})
    with pytest.raises(InputError, match=f"new.pt: model checkpoint version {version!r}.*upgrade ich3d") as error:
        load_trained(tmp_path / "new.pt")
    assert "\n" not in str(error.value)


def test_a_resume_state_is_not_a_model(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "last.pt", {"stage": "slice", "epoch": 0})
    with pytest.raises(InputError, match="not a model checkpoint"):
        load_trained(tmp_path / "last.pt")
