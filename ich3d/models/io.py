"""Model checkpoints: what a trained model's file holds, writing it, and rebuilding the model from it.

A model checkpoint (``encoder.pt``, ``model.pt``) is self-contained: the model description, weights,
the resolved config, label names, the training prevalence (the prior), the fold, the training slice
spacing, the stage and epoch it comes from and their validation metrics, and, once fitted, the
per-label calibration (docs/design.md §4). ``last.pt`` is resume state, not a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ich3d.checkpoint import load_checkpoint, save_checkpoint
from ich3d.provenance import provenance
from ich3d.config import Config
from ich3d.constants import LABELS
from ich3d.errors import InputError
from ich3d.models.model import IchModel, build_model


def model_spec(config: Config, head: str | None = None) -> dict[str, Any]:
    """The plain-dict model description given to :func:`build_model` (and stored in checkpoints).

    Args:
        config: the run's config; its ``model`` section is used.
        head: another head name than the config's (the slice stage trains the ``slice`` head).
    """
    spec = config.to_dict()["model"]
    if head is not None:
        spec["head"]["name"] = head
    return spec


def save_model(path: Path, model: IchModel, spec: dict[str, Any], config: Config, **facts: Any) -> None:
    """Writes a model checkpoint.

    Args:
        path: ``encoder.pt`` or ``model.pt`` of a fold folder.
        model: the trained model (its state dict is stored).
        spec: its :func:`model_spec`.
        config: the run's resolved config.
        **facts: what else the checkpoint records, plain values only: ``prevalence`` (6 floats),
            ``fold``, ``slice_spacing`` (mm), ``stage``, ``epoch``, ``metrics``, ``calibration``.
    """
    save_checkpoint(path, {
        "model": spec, "state_dict": model.state_dict(), "config": config.to_dict(),
        "in_channels": config.data.in_channels, "image_size": config.data.image_size, "labels": list(LABELS),
        "provenance": provenance(next(model.parameters()).device, config.num_workers), **facts,
    })


def load_model(path: Path, device: torch.device) -> tuple[IchModel, dict[str, Any]]:
    """Rebuilds the model of a checkpoint written by :func:`save_model` (weights_only loading).

    Returns:
        (model on ``device`` in eval mode, the checkpoint dict without its state dict).

    Raises:
        InputError: not a model checkpoint (e.g. ``last.pt``, the resume state), or unreadable.
    """
    checkpoint = load_checkpoint(path)
    if "state_dict" not in checkpoint or "model" not in checkpoint:
        raise InputError(f"{path} is not a model checkpoint (a resume state or another file): give a run folder, "
                         f"or its fold_<K>/model.pt or fold_<K>/encoder.pt")
    model = build_model(checkpoint["model"], checkpoint["in_channels"], load_weights=False)
    model.load_state_dict(checkpoint.pop("state_dict"))
    return model.to(device).eval(), checkpoint
