"""``ich3d export``: a run's members as portable ONNX graphs, with what they expect written down (docs/design.md §6b).

Every member (a fold's ``model.pt``; several runs or folds make an ensemble) becomes two graphs:

* ``member_<i>/encoder.onnx``: ``images`` (M, C, S, S) float32 windowed slices in [0, 1] ->
  ``features`` (M, F) float32 (the encoder, its input normalisation and, with ``model.features:
  logits``, the slice stage's projection), M dynamic;
* ``member_<i>/head.onnx``: ``features`` (B, N, F) float32 and ``readable`` (B, N) bool of B whole
  series of N slices -> ``logits`` (B, N, 6) float32, B and N dynamic. Rows are whole series (no
  padding): run series of different lengths one at a time.

What stays outside the graphs is the data path every engine shares (reading, windows, 2.5D stacks,
resampling thin series, test-time augmentation, calibration, averaging, exams): ``export.json``
records it for a reader elsewhere, and ``ich3d infer --engine onnxruntime`` runs the graphs through
the same Python pipeline as PyTorch. The model card of the run is copied next to the graphs.

The exporter is ``torch.onnx.export(..., dynamo=False)`` (the TorchScript-based one) at opset 17: it
maps ``nn.GRU`` to one ONNX ``GRU`` operator and takes the dynamic axes as declared, where the
dynamo exporter specialises axes whose example size is 0 or 1 and needs shape constraints per model.
Each member is checked after export: ONNX Runtime and PyTorch must give the same probabilities on a
synthetic series within :data:`TOLERANCE` (the difference is recorded).
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ich3d import __version__
from ich3d.atomic import write_json_atomic
from ich3d.config import DataConfig
from ich3d.constants import BSB_WINDOWS, LABELS, WINDOWS
from ich3d.data.transforms import series_neighbours, to_input
from ich3d.errors import InputError
from ich3d.folders import FolderLock, prepare_output
from ich3d.layout import ExportFolder, RunFolder
from ich3d.models.model import IchModel

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx",)
OPSET = 17
#: The largest absolute difference of probabilities allowed between ONNX Runtime and PyTorch.
TOLERANCE = 1e-4


class EncoderGraph(nn.Module):
    """The exported encoder: (M, C, S, S) images -> (M, F') head features (encoder + projection)."""

    def __init__(self, model: IchModel) -> None:
        super().__init__()
        self.encoder, self.projection = model.encoder, model.projection

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.encoder(images)
        return features if self.projection is None else self.projection(features)


class HeadGraph(nn.Module):
    """The exported head: (B, N, F') features and (B, N) readable of whole series -> (B, N, 6) logits."""

    def __init__(self, model: IchModel) -> None:
        super().__init__()
        self.head = model.head

    def forward(self, features: torch.Tensor, readable: torch.Tensor) -> torch.Tensor:
        return self.head.whole_series(features, readable)


def export_run(runs: Sequence[Path], out: Path, fmt: str = "onnx") -> dict[str, Any]:
    """Exports every member of ``runs`` (run folders, fold folders or checkpoints) to ``out``.

    Args:
        runs: as ``ich3d infer --run``.
        out: the export folder (created; must be empty or an earlier export).
        fmt: ``onnx``.

    Returns:
        The contents of ``export.json``.

    Raises:
        InputError: an unknown format, no trained model, an output folder in use, or a graph whose
            probabilities differ from PyTorch's by more than :data:`TOLERANCE`.
    """
    from ich3d.models.io import load_trained, model_checkpoints, read_payload

    if fmt not in EXPORT_FORMATS:
        raise InputError(f"--format {fmt}: ich3d exports {', '.join(EXPORT_FORMATS)}")
    checkpoints = model_checkpoints(runs)
    folder = ExportFolder(prepare_output(Path(out), "--out"))
    with FolderLock(folder.lock, f"export folder {folder.root}"):
        members = []
        for i, path in enumerate(checkpoints):
            model = load_trained(path).module
            members.append(_export_member(model, read_payload(path), folder, i) | {"source": str(Path(path).resolve())})
        _copy_model_card(runs, folder)
        info = _describe(members)
        write_json_atomic(folder.info, info)
    return info


def _export_member(model: IchModel, checkpoint: dict[str, Any], folder: ExportFolder, member: int) -> dict[str, Any]:
    """Writes one member's two graphs and checks them against PyTorch; its entry of ``export.json``.

    Args:
        checkpoint: the member's payload without its state dict (:func:`ich3d.models.io.read_payload`).
    """
    data = DataConfig(**checkpoint["config"]["data"])
    folder.encoder(member).parent.mkdir(parents=True, exist_ok=True)
    images = torch.rand(2, data.in_channels, data.image_size, data.image_size)
    features = torch.randn(2, 3, model.out_features)
    readable = torch.ones(2, 3, dtype=torch.bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes: the check below decides
        torch.onnx.export(EncoderGraph(model).eval(), (images,), str(folder.encoder(member)), dynamo=False,
                          input_names=["images"], output_names=["features"], opset_version=OPSET,
                          dynamic_axes={"images": {0: "M"}, "features": {0: "M"}})
        torch.onnx.export(HeadGraph(model).eval(), (features, readable), str(folder.head(member)), dynamo=False,
                          input_names=["features", "readable"], output_names=["logits"], opset_version=OPSET,
                          dynamic_axes={"features": {0: "B", 1: "N"}, "readable": {0: "B", 1: "N"},
                                        "logits": {0: "B", 1: "N"}})
    from ich3d.inference.onnx_engine import OnnxMember

    difference = max_difference(model, OnnxMember(folder.encoder(member), folder.head(member)), data)
    if not difference <= TOLERANCE:
        raise InputError(f"the ONNX graphs of member {member} give probabilities {difference:.2e} away from "
                         f"PyTorch's (more than {TOLERANCE:g}): report this with the run's config")
    return {"encoder": str(folder.encoder(member).relative_to(folder.root)),
            "head": str(folder.head(member).relative_to(folder.root)), "fold": checkpoint.get("fold"),
            "features": model.out_features, "max_abs_diff": difference, "checkpoint": _json_ready(checkpoint)}


def synthetic_series(data: DataConfig, n_slices: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic series as encoder input: a bright disc (skull), brain, a dense blob, noise.

    Returns:
        images: (N, C, S, S) float32 windowed input; readable: (1, N) bool with one unreadable slice.
    """
    rng = np.random.default_rng(seed)
    size = data.image_size
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    radius = np.hypot(yy, xx)
    hu = np.where(radius < 0.4, 35.0, -1000.0) + np.where((radius > 0.36) & (radius < 0.4), 1000.0, 0.0)
    series = np.stack([hu + 70.0 * (np.hypot(yy - 0.1, xx - 0.1 * k / n_slices) < 0.06) for k in range(n_slices)])
    series = torch.from_numpy(series + rng.normal(0, 8, series.shape)).to(torch.int16)
    readable = torch.ones(1, n_slices, dtype=torch.bool)
    readable[0, n_slices // 3] = False
    stacked = series_neighbours(series[None], readable, data.slices_per_sample // 2)[0]  # (N, K, S, S)
    return to_input(stacked, size), readable


def max_difference(model: IchModel, member: Any, data: DataConfig) -> float:
    """Largest absolute difference between PyTorch's and ``member``'s probabilities on a synthetic series
    (:func:`synthetic_series`), through the encoder and the head."""
    images, readable = synthetic_series(data)
    keep = readable[0]
    with torch.inference_mode():
        model.eval()
        features = model.encode(images[keep])
        embeddings = features.new_zeros((1, len(keep), model.out_features))
        embeddings[readable] = features
        expected = torch.sigmoid(model.head(embeddings, torch.ones_like(readable), readable))
    got_features = member.encode(images[keep])
    got_embeddings = got_features.new_zeros((1, len(keep), got_features.shape[1]))
    got_embeddings[readable] = got_features
    got = torch.sigmoid(member.head(got_embeddings, torch.ones_like(readable), readable))
    return float((got - expected).abs().max())


def _copy_model_card(runs: Sequence[Path], folder: ExportFolder) -> None:
    """Copies the model card of the (first) run folder among ``runs``, when it has one."""
    for run in map(Path, runs):
        source = RunFolder(run if run.is_dir() else run.parent)
        if not source.model_card.is_file() and source.root.parent != source.root:
            source = RunFolder(source.root.parent)  # a fold folder or a checkpoint inside one
        if source.model_card.is_file():
            shutil.copyfile(source.model_card, folder.model_card)
            if source.model_card_json.is_file():
                shutil.copyfile(source.model_card_json, folder.model_card_json)
            return
    log.warning("no model card in %s: the export has none", ", ".join(map(str, runs)))


def _describe(members: list[dict[str, Any]]) -> dict[str, Any]:
    """``export.json``: the graphs, their inputs, and what the pipeline around them does."""
    import onnx

    first = members[0]["checkpoint"]
    data = DataConfig(**first["config"]["data"])
    return {
        "format": "onnx", "opset": OPSET, "exporter": "torch.onnx.export(dynamo=False)",
        "ich3d_version": __version__, "torch_version": torch.__version__, "onnx_version": onnx.__version__,
        "labels": list(LABELS), "tolerance": TOLERANCE,
        "input": {
            "windows": {name: list(WINDOWS[name]) for name in BSB_WINDOWS},
            "channels": f"{data.in_channels} = {data.slices_per_sample} slice(s) x {len(BSB_WINDOWS)} windows, "
                        "ordered (slice, window); neighbours of a 2.5D stack from the previous to the next slice",
            "values": "HU windowed to [0, 1]: (hu - (centre - width / 2)) / width, clipped; the encoder graph "
                      "applies the normalisation its weights expect itself",
            "image_size": data.image_size, "crop": data.crop, "input": data.input,
            "context": data.context if data.input == "bsb25d" else 0,
            "cache": "int16 HU per series, resized once (area weights) after the build-series crop; see "
                     "docs/design.md §3",
        },
        "graphs": {
            "encoder": {"inputs": {"images": ["M", data.in_channels, data.image_size, data.image_size]},
                        "outputs": {"features": ["M", "F"]}, "dtype": "float32"},
            "head": {"inputs": {"features": ["B", "N", "F"], "readable": ["B", "N"]},
                     "outputs": {"logits": ["B", "N", len(LABELS)]},
                     "note": "B whole series of N slices each (no padding); readable False = pixels could not "
                             "be read (the feature row is ignored)"},
        },
        "pipeline": {
            "tta": "per member: mean of the sigmoid over the flip (encoder input flipped left-right) and reverse "
                   "(series order reversed) views its config enables (members[i].checkpoint.config.infer)",
            "calibration": "per member and label: sigmoid(a * logit(p) + b) (members[i].checkpoint.calibration)",
            "thresholds": "exam flags: the exam probability (a study's maximum over its chosen series' slices) at or "
                          "above the label's operating threshold, the members' mean "
                          "(members[i].checkpoint.operating_points, with the sensitivity/specificity measured)",
            "ensemble": "mean of the members' calibrated probabilities",
            "thin_series": "series thinner than half a member's slice_spacing are read as slabs of it",
        },
        "members": members,
    }


def _json_ready(value: Any) -> Any:
    """``value`` with tensors and numpy values as lists and numbers (checkpoint facts hold only those)."""
    if isinstance(value, torch.Tensor | np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    json.dumps(value)  # anything else must already be plain
    return value
