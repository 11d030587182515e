"""Model checkpoints and the :class:`TrainedModel` they load into: the one place that reads their keys.

A model checkpoint (``encoder.pt``, ``model.pt``) is self-contained: the model description, weights,
the resolved config, label names, the training prevalence (the prior), the fold, the training slice
spacing, the stage and epoch it comes from and their validation metrics, the per-label calibration
and the operating thresholds (docs/design.md §4). ``last.pt`` is resume state, not a model.

Every key of the payload is read here and nowhere else: :func:`load_trained` returns a frozen
:class:`TrainedModel` with typed fields, after upgrading a checkpoint of an older
:data:`MODEL_VERSION` once (:func:`upgrade`); a checkpoint of a newer or unknown version is refused
with one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ich3d.checkpoint import load_checkpoint, save_checkpoint
from ich3d.config import Config, DataConfig, InferConfig
from ich3d.constants import LABELS, RSNA_SLICE_SPACING_MM
from ich3d.errors import InputError
from ich3d.layout import RunFolder
from ich3d.models.calibration import identity
from ich3d.models.model import IchModel, build_model
from ich3d.models.operating import OperatingPoints, default_points
from ich3d.provenance import provenance  # the machine and versions; Provenance below is the training origin

#: Version of the model payload (the keys below); ``checkpoint.FORMAT_VERSION`` is the container's.
#: 1: before operating thresholds (no ``model_version`` key); 2: ``operating_points``, every field present.
MODEL_VERSION = 2


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A trained model and everything needed to use it, as loaded from its checkpoint.

    Attributes:
        module: the network, on its device, in eval mode.
        spec: the plain-dict model description (:func:`model_spec`) it was built from.
        data: how slices become its input (size, windows, 2.5D context, the cache's crop).
        tta: its test-time augmentation.
        prevalence: (6,) float64 label prevalence of its training slices (the prior).
        slice_spacing: its training series' median slice spacing, mm (thin series are read as slabs of it).
        calibration: per-label Platt scaling ``{"a", "b", "fitted"}`` (the identity when not fitted).
        operating: per-label operating thresholds (:mod:`ich3d.models.operating`).
        fold, stage, epoch: where it comes from (None when unknown).
        metrics: its validation metrics at that epoch.
        calibration_report: what the calibration was fitted on, with metrics before and after.
        path: the checkpoint file (None for a model held in memory, e.g. while training).
    """

    module: IchModel
    spec: dict[str, Any]
    data: DataConfig
    tta: InferConfig
    prevalence: np.ndarray
    slice_spacing: float = RSNA_SLICE_SPACING_MM
    calibration: dict[str, Any] = field(default_factory=identity)
    operating: OperatingPoints = field(default_factory=default_points)
    fold: int | None = None
    stage: str | None = None
    epoch: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    calibration_report: dict[str, Any] | None = None
    path: Path | None = None

    @property
    def crop(self) -> str:
        """The ``build-series --crop`` of the cache it reads."""
        return self.data.crop

    @property
    def image_size(self) -> int:
        return self.data.image_size


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


@dataclass(frozen=True)
class Provenance:
    """Where a saved model comes from: its fold, stage, epoch and that epoch's validation metrics."""

    fold: int | None = None
    stage: str | None = None
    epoch: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def save_model(path: Path, model: IchModel, config: Config, facts: TrainedFacts) -> None:
    """Writes a model checkpoint of :data:`MODEL_VERSION`.

    Args:
        path: ``encoder.pt`` or ``model.pt`` of a fold folder.
        model: the trained model (its state dict is stored).
        config: the run's resolved config.
        facts: its description and what training measured (:class:`TrainedFacts`).
    """
    save_checkpoint(path, {
        "model_version": MODEL_VERSION, "model": facts.spec, "state_dict": model.state_dict(),
        "config": config.to_dict(), "in_channels": config.data.in_channels, "image_size": config.data.image_size,
        "labels": list(LABELS), "prevalence": [float(p) for p in facts.prevalence],
        "slice_spacing": float(facts.slice_spacing), "fold": facts.origin.fold, "stage": facts.origin.stage,
        "epoch": facts.origin.epoch, "metrics": facts.origin.metrics, "calibration": identity(),
        "calibration_report": None, "operating_points": default_points().to_dict(),
        "provenance": provenance(next(model.parameters()).device, config.num_workers),
    })


@dataclass(frozen=True)
class TrainedFacts:
    """What a model checkpoint records besides weights and config.

    Attributes:
        spec: the model description (:func:`model_spec`).
        prevalence: (6,) label prevalence of the training slices.
        slice_spacing: the training series' median slice spacing, mm.
        origin: fold, stage, epoch and metrics.
    """

    spec: dict[str, Any]
    prevalence: np.ndarray
    slice_spacing: float
    origin: Provenance = Provenance()


def store_fitted(path: Path, calibration: dict[str, Any], report: dict[str, Any],
                 operating: OperatingPoints) -> None:
    """Writes the calibration (with its report) and the operating thresholds into a model checkpoint."""
    checkpoint = _read(path)
    save_checkpoint(path, checkpoint | {"calibration": calibration, "calibration_report": report,
                                        "operating_points": operating.to_dict()})


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a model checkpoint (e.g. the slice stage's encoder for the next stage)."""
    return _read(path)["state_dict"]


def load_trained(path: Path, device: torch.device | str = "cpu") -> TrainedModel:
    """Rebuilds the model of a checkpoint (weights_only loading), upgrading an older version once.

    Raises:
        InputError: not a model checkpoint (e.g. ``last.pt``, the resume state), unreadable, or of a
            newer model version than this ich3d reads.
    """
    checkpoint = _read(path)
    module = build_model(checkpoint["model"], checkpoint["in_channels"], load_weights=False)
    module.load_state_dict(checkpoint["state_dict"])
    return trained_model(checkpoint, module.to(device).eval(), Path(path))


def read_payload(path: Path) -> dict[str, Any]:
    """A model checkpoint's payload at :data:`MODEL_VERSION`, without its state dict (plain data:
    what an export records next to its graphs).

    Raises:
        InputError: as :func:`load_trained`.
    """
    return {key: value for key, value in _read(path).items() if key != "state_dict"}


def trained_model(checkpoint: dict[str, Any], module: Any, path: Path | None = None) -> TrainedModel:
    """The :class:`TrainedModel` of a model payload (any known version) around ``module``: the rebuilt
    network, or another engine's stand-in with its ``encode`` and ``head``
    (:class:`ich3d.inference.onnx_engine.OnnxMember`)."""
    checkpoint = upgrade(checkpoint, path or "checkpoint")
    config = checkpoint["config"]
    return TrainedModel(
        module=module, spec=checkpoint["model"], data=DataConfig(**config["data"]),
        tta=InferConfig(**config["infer"]), prevalence=np.asarray(checkpoint["prevalence"], dtype=np.float64),
        slice_spacing=float(checkpoint["slice_spacing"]), calibration=checkpoint["calibration"],
        operating=OperatingPoints.from_dict(checkpoint["operating_points"]), fold=checkpoint["fold"],
        stage=checkpoint["stage"], epoch=checkpoint["epoch"], metrics=checkpoint["metrics"] or {},
        calibration_report=checkpoint["calibration_report"], path=path)


def model_checkpoints(runs: Sequence[Path]) -> list[Path]:
    """The model checkpoints of ``--run`` arguments: run folders (every fold's ``model.pt``), fold
    folders (their ``model.pt``) or checkpoint files.

    Raises:
        InputError: an argument that holds no trained model.
    """
    found = []
    for run in map(Path, runs):
        if run.is_file():
            found.append(run)
            continue
        folds = RunFolder(run).folds_present()
        members = [RunFolder(run).fold(k).model for k in folds] if folds else [run / "model.pt"]
        members = [path for path in members if path.is_file()]
        if not members:
            raise InputError(f"no trained model at {run}: train one with `ich3d train --out {run}` "
                             f"(or point --run at a run folder, a fold folder or a model.pt)")
        found += members
    return found


def read_calibration_report(path: Path) -> dict[str, Any] | None:
    """The calibration report stored in a model checkpoint (None before calibration)."""
    return _read(path)["calibration_report"]


def _read(path: Path) -> dict[str, Any]:
    """A model checkpoint's payload at :data:`MODEL_VERSION`.

    Raises:
        InputError: not a model checkpoint, or a newer/unknown model version.
    """
    checkpoint = load_checkpoint(path)
    if "state_dict" not in checkpoint or "model" not in checkpoint:
        raise InputError(f"{path} is not a model checkpoint (a resume state or another file): give a run folder, "
                         f"or its fold_<K>/model.pt or fold_<K>/encoder.pt")
    return upgrade(checkpoint, path)


def _v1_to_v2(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Version 1 (ich3d 0.1-0.2): optional keys absent. Documented defaults (docs/design.md §4): the
    cache crop ``none`` (crops came later), the RSNA slice spacing, the identity calibration, the
    default operating threshold (:data:`ich3d.models.operating.DEFAULT_THRESHOLD`, not fitted), and
    the infer section without its old machine settings (batch size)."""
    config = dict(checkpoint["config"])
    config["data"] = {"crop": "none"} | dict(config["data"])
    known = {f.name for f in fields(InferConfig)}
    config["infer"] = {key: value for key, value in (config.get("infer") or {}).items() if key in known}
    defaults = {"fold": None, "stage": None, "epoch": None, "metrics": {}, "calibration_report": None}
    return defaults | checkpoint | {
        "config": config, "slice_spacing": checkpoint.get("slice_spacing") or RSNA_SLICE_SPACING_MM,
        "calibration": checkpoint.get("calibration") or identity(), "operating_points": default_points().to_dict(),
        "model_version": 2}


#: The upgrade from each old model version to the next.
_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}


def upgrade(checkpoint: dict[str, Any], path: Path | str = "checkpoint") -> dict[str, Any]:
    """A model payload of any known version as one of :data:`MODEL_VERSION` (step by step).

    Raises:
        InputError: a version newer than this ich3d's, or not a version at all.
    """
    version = checkpoint.get("model_version", 1)
    if not isinstance(version, int) or not 1 <= version <= MODEL_VERSION:
        raise InputError(f"{path}: model checkpoint version {version!r} (ich3d {checkpoint.get('ich3d_version')}); "
                         f"this ich3d reads versions 1-{MODEL_VERSION}: upgrade ich3d, or re-train")
    while version < MODEL_VERSION:
        checkpoint = _UPGRADES[version](checkpoint)
        version = checkpoint["model_version"]
    return checkpoint
