"""ONNX Runtime as an inference engine: the exported graphs (:mod:`ich3d.inference.export`) in place of
the two network calls of the pipeline, the slice encoder and the sequence head (docs/design.md §6b).

Everything around them (reading, windows, 2.5D stacks, slabs, test-time augmentation, calibration,
averaging, exams) is the PyTorch pipeline's own code: an :class:`OnnxMember` answers ``encode`` and
``head`` exactly as :class:`~ich3d.models.model.IchModel` does, on CPU tensors. ONNX Runtime runs on
the CPU, or with the CUDA execution provider where the installed onnxruntime has it and the device
asked for is not the CPU. ``onnxruntime`` is imported when a member is built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ich3d.errors import InputError
from ich3d.layout import ExportFolder

if TYPE_CHECKING:
    from ich3d.models.io import TrainedModel

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def execution_providers(device: str | None = None) -> list[str]:
    """ONNX Runtime's providers for a ``--device``: CUDA first where available (and not ``cpu``), then the CPU."""
    import onnxruntime

    wanted = device is None or not str(device).startswith("cpu")
    if wanted and CUDA in onnxruntime.get_available_providers():
        return [CUDA, CPU]
    if device is not None and str(device).startswith("cuda"):
        raise InputError(f"--device {device}: this onnxruntime has no CUDA execution provider "
                         f"({', '.join(onnxruntime.get_available_providers())}): pip install onnxruntime-gpu")
    return [CPU]


class OnnxMember:
    """One exported member: its encoder and head graphs in ONNX Runtime sessions.

    Args:
        encoder: ``encoder.onnx`` (images -> features).
        head: ``head.onnx`` (features, readable -> logits).
        providers: ONNX Runtime execution providers (default: the CPU).
        threads: intra-op threads (None: ONNX Runtime's default, one per physical core).
    """

    training = False

    def __init__(self, encoder: Path, head: Path, providers: list[str] | None = None,
                 threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._encoder = onnxruntime.InferenceSession(str(encoder), options, providers=providers or [CPU])
            self._head = onnxruntime.InferenceSession(str(head), options, providers=providers or [CPU])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for unreadable graphs
            raise InputError(f"cannot load the ONNX graphs {encoder}, {head}: {str(exc).splitlines()[0]}: "
                             f"export the run again with `ich3d export`") from None
        self.out_features = int(self._head.get_inputs()[0].shape[-1])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(M, C, S, S) float images in [0, 1] -> (M, F) float32 features on the CPU; M may be 0."""
        if x.shape[0] == 0:
            return torch.zeros((0, self.out_features))
        images = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self._encoder.run(None, {"images": images})[0])

    def head(self, embeddings: torch.Tensor, mask: torch.Tensor, readable: torch.Tensor | None = None) -> torch.Tensor:
        """Per-slice logits of padded series, one series per graph call (the graph takes whole series).

        Args:
            embeddings: (B, N, F) float features.
            mask: (B, N) bool, True = real slice (padding is a suffix of each row).
            readable: (B, N) bool, False = a slice whose pixels could not be read; None: all readable.

        Returns:
            (B, N, 6) float32 logits on the CPU; zero at padding.
        """
        features = embeddings.detach().float().cpu().numpy()
        mask = mask.cpu().numpy()
        readable = mask if readable is None else readable.cpu().numpy() & mask
        logits = np.zeros((*mask.shape, 6), dtype=np.float32)
        for row, length in enumerate(mask.sum(axis=1)):
            if length:
                logits[row, :length] = self._head.run(None, {
                    "features": np.ascontiguousarray(features[row:row + 1, :length]),
                    "readable": np.ascontiguousarray(readable[row:row + 1, :length])})[0][0]
        return torch.from_numpy(logits)

    # the pipeline switches a torch model to eval mode around inference; a graph has no modes
    def eval(self) -> OnnxMember:
        return self

    def train(self, mode: bool = True) -> OnnxMember:
        return self


def load_exported(folder: Path, device: str | None = None, threads: int | None = None) -> list[TrainedModel]:
    """The members of an export folder as :class:`~ich3d.models.io.TrainedModel` objects whose ``module``
    is an :class:`OnnxMember` (their config, prevalence, calibration and thresholds from ``export.json``).

    Raises:
        InputError: not an export folder (no ``export.json``), or unreadable graphs.
    """
    from ich3d.models.io import trained_model

    export = ExportFolder(Path(folder))
    if not export.info.is_file():
        raise InputError(f"--engine onnxruntime --run {folder}: no {export.info.name} there: give a folder written "
                         f"by `ich3d export RUN --format onnx --out {folder}`")
    info = json.loads(export.info.read_text())
    providers = execution_providers(device)
    return [trained_model(entry["checkpoint"], OnnxMember(export.root / entry["encoder"], export.root / entry["head"],
                                                          providers, threads), export.info)
            for entry in info["members"]]
