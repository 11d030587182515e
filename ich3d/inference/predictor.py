"""The :class:`Predictor`: trained models held once on a device, answering series, datasets and DICOM folders.

Shaped like nnU-Net's ``nnUNetPredictor``: built once (:meth:`Predictor.from_runs`, or from
:class:`~ich3d.models.io.TrainedModel` objects) and then asked again and again, so a long-running
process (the DICOM node) loads its models once (docs/design.md §6).

Inference runs in two passes per member: the encoder embeds every readable slice once (optionally also
its left-right flip), then the sequence head runs over each series' embedding sequence (optionally
also reversed). Test-time augmentation therefore costs one extra encoder pass at most. Unreadable
slices get no encoder pass; the model's missing-slice embedding stands in for them, so they are
predicted from their series context. The two network calls are :meth:`Predictor.embed` and
:meth:`Predictor.head`: another engine (e.g. onnxruntime) replaces those two and keeps the rest.
Members' probabilities are calibrated and averaged by :mod:`ich3d.inference.ensemble`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from ich3d.constants import LABELS
from ich3d.data.batching import AugmentedView, flat_positions, sequence_index, series_input, series_loader
from ich3d.data.datasets import SeriesDataset
from ich3d.data.tables import SeriesTable
from ich3d.errors import InputError
from ich3d.inference import ensemble
from ich3d.models.io import TrainedModel, load_trained, model_checkpoints
from ich3d.models.operating import OperatingPoints
from ich3d.runtime import Runtime, eval_mode

if TYPE_CHECKING:
    from ich3d.dataset.opened import Dataset
    from ich3d.inference.job import PredictionResult, PredictOptions

ENGINES = ("torch", "onnxruntime")
_TORCH_DTYPES = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}
Advance = Callable[[int], None]


@dataclass(frozen=True)
class RuntimeOptions:
    """Where and how the models run (the machine's settings; the models' own, e.g. TTA, come with them).

    Attributes:
        device: "cpu", "cuda", "cuda:1"... or None for CUDA when available, else the CPU.
        amp: mixed precision on CUDA.
        batch_series: series per encoder batch.
        workers: processes reading DICOM when a folder is built (None: every core).
        loader_workers: data-loader processes feeding the encoder (None: ``workers``, or 1).
        engine: what runs the networks: ``torch``, or ``onnxruntime`` for folders written by ``ich3d
            export`` (:mod:`ich3d.inference.onnx_engine`: the same pipeline, other network calls).
    """

    device: str | None = None
    amp: bool = True
    batch_series: int = 8
    workers: int | None = None
    loader_workers: int | None = None
    engine: str = "torch"

    def __post_init__(self) -> None:
        if self.batch_series < 1 or (self.workers is not None and self.workers < 1):
            raise InputError(f"--batch {self.batch_series} and --workers {self.workers} must be at least 1")
        if self.engine not in ENGINES:
            raise InputError(f"--engine {self.engine}: must be one of {', '.join(ENGINES)}")

    @property
    def loaders(self) -> int:
        """Data-loader processes."""
        if self.loader_workers is not None:
            return self.loader_workers
        return self.workers if self.workers is not None else 1


@dataclass(frozen=True)
class Reading:
    """How a table of series is read by the ensemble.

    Attributes:
        resample: ``auto`` reads series less than half as thick as a member's training slice spacing
            as slabs of that thickness; ``off`` reads every series as it is.
        calibrate: apply each member's calibration before averaging.
    """

    resample: str = "auto"
    calibrate: bool = True

    def __post_init__(self) -> None:
        if self.resample not in ("auto", "off"):
            raise InputError(f"--resample {self.resample}: must be one of auto, off")


@dataclass(eq=False)
class Predictor:
    """One or more trained models on one device, with the machine settings to run them.

    Built once, asked many times; one call at a time (a server with several workers holds one
    Predictor per worker, or serialises its calls).

    Args:
        models: the ensemble's members (their probabilities are averaged).
        runtime: device, mixed precision and distributed ranks (:func:`ich3d.runtime.setup_runtime`).
        options: batch size and workers.
    """

    models: list[TrainedModel]
    runtime: Runtime
    options: RuntimeOptions = field(default_factory=RuntimeOptions)

    def __post_init__(self) -> None:
        if not self.models:
            raise InputError("a Predictor needs at least one trained model")
        self.models = list(self.models)

    @classmethod
    def from_runs(cls, runs: Sequence[Path], options: RuntimeOptions = RuntimeOptions()) -> Predictor:
        """Loads every model of ``runs`` (run folders: each fold's ``model.pt``; fold folders; checkpoints;
        with ``options.engine`` ``onnxruntime``: export folders).

        Raises:
            InputError: an argument without a trained model, an unreadable or too new checkpoint,
                members trained on differently cropped caches.
            ConfigError: a device this machine does not have.
        """
        from ich3d.runtime import setup_runtime

        runtime = setup_runtime(options.device, options.amp)
        if options.engine == "onnxruntime":
            from ich3d.inference.onnx_engine import load_exported

            models = [model for run in runs for model in load_exported(Path(run), options.device)]
        else:
            models = [load_trained(path, runtime.device) for path in model_checkpoints(runs)]
        ensemble.shared_crop(models)  # members must share a crop: fail now, not at the first study
        return cls(models, runtime, options)

    # --- what the members agree on ---

    @property
    def crop(self) -> str:
        """The ``build-series --crop`` of the caches the members read."""
        return ensemble.shared_crop(self.models)

    @property
    def image_size(self) -> int:
        """The cache size a folder is built at (the largest member input)."""
        return max(model.image_size for model in self.models)

    @property
    def training_spacing(self) -> float:
        """The members' median training slice spacing, mm."""
        return ensemble.training_spacing(self.models)

    @property
    def prior(self) -> np.ndarray:
        """(6,) the members' mean training prevalence."""
        return ensemble.prior(self.models)

    @property
    def operating(self) -> OperatingPoints:
        """The ensemble's per-label operating thresholds (exam flags)."""
        return ensemble.operating_points(self.models)

    # --- the two network calls (an engine replaces these) ---

    def embed(self, member: int, x: torch.Tensor) -> torch.Tensor:
        """Slice embeddings: (M, C, S, S) float32 images in [0, 1] on the device → (M, F) float32 on the CPU."""
        with self.runtime.autocast():
            return self.models[member].module.encode(x).float().cpu()

    def head(self, member: int, embeddings: torch.Tensor, mask: torch.Tensor, readable: torch.Tensor) -> torch.Tensor:
        """Per-slice logits: (B, N, F) float32 embeddings, (B, N) bool mask and readable → (B, N, 6) float32 CPU."""
        device = self.runtime.device
        with self.runtime.autocast():
            logits = self.models[member].module.head(embeddings.to(device), mask.to(device), readable.to(device))
        return logits.float().cpu()

    # --- one member over a table ---

    def embed_table(self, member: int, table: SeriesTable, series_ids: np.ndarray, flips: tuple[bool, ...] = (False,),
                    out: list[np.ndarray] | None = None, advance: Advance | None = None,
                    augmented: AugmentedView | None = None) -> list[np.ndarray]:
        """Embeds the readable slices of ``series_ids``, once per view, in one pass over the data.

        Args:
            flips: one view per entry: the slices as they are (False) or flipped left-right (True).
            out: one (n_slices, F) array per view to write into (any float dtype, e.g. an fp16 memory
                map); None allocates float32 arrays.
            advance: called with the number of series done after each batch (progress bars).
            augmented: the slices as that view's draws show them (training features), before any flip.

        Returns:
            One (n_slices, F) array per view, for the whole table; rows of other series and of
            unreadable slices are left as they were (zero when allocated here).
        """
        views, model = out, self.models[member]
        dataset = SeriesDataset(table, series_ids, acquisition=None if augmented is None else augmented.acquisition())
        loader = series_loader(dataset, self.options.batch_series, self.options.loaders, self.runtime)
        with eval_mode(model.module):
            for batch in loader:
                params = None if augmented is None else augmented.params(table.series_uids[batch["index"].numpy()])
                x, keep = series_input(batch, model.data, self.runtime, params)
                rows = flat_positions(table, batch)[keep.cpu()].numpy()
                for view, flip in enumerate(flips):
                    emb = self.embed(member, x.flip(-1) if flip else x)
                    if views is None:
                        views = [np.zeros((table.n_slices, emb.shape[1]), dtype=np.float32) for _ in flips]
                    views[view][rows] = emb.to(_TORCH_DTYPES[views[view].dtype]).numpy()
                if advance is not None:
                    advance(len(batch["index"]))
        if views is None:
            raise ValueError("embed_table: no series to embed")
        return views

    def head_table(self, member: int, table: SeriesTable, views: Sequence[np.ndarray], series_ids: np.ndarray,
                   reverse: bool = False) -> np.ndarray:
        """Head probabilities of ``series_ids`` from embedding views (e.g. plain and flipped), averaged over
        the views and, with ``reverse``, over both reading directions.

        Args:
            views: (n_slices, F) float16/float32 arrays (e.g. memory-mapped); only the batches' rows are read.

        Returns:
            (n_slices, 6) float32 probabilities; NaN on rows of other series.
        """
        total, count = torch.zeros((table.n_slices, len(LABELS))), 0
        with eval_mode(self.models[member].module):
            for emb in views:
                for backwards in [False, True] if reverse else [False]:
                    for start in range(0, len(series_ids), 64):
                        index, mask = sequence_index(table, series_ids[start:start + 64], backwards)
                        readable = torch.from_numpy(table.readable)[index] & mask
                        x = torch.from_numpy(np.asarray(emb[index.numpy()], dtype=np.float32))
                        total[index[mask]] += torch.sigmoid(self.head(member, x, mask, readable)[mask])
                    count += 1
        probs = (total / count).numpy()
        covered = np.zeros(table.n_slices, dtype=bool)
        covered[table.rows_of(series_ids)] = True
        probs[~covered] = np.nan
        return probs

    def predict_member(self, member: int, table: SeriesTable, series_ids: np.ndarray | None = None,
                       advance: Advance | None = None) -> np.ndarray:
        """One member's raw (uncalibrated) probabilities with its own TTA.

        Works through the series in chunks of ``64 * batch_series`` (a multiple of every batch size
        used, so the batches and results are those of a single pass): only a chunk's embeddings are held.

        Returns:
            (n_slices, 6) float32; NaN on rows of other series.
        """
        series_ids = np.arange(len(table.series_uids)) if series_ids is None else np.asarray(series_ids)
        tta = self.models[member].tta
        flips = (False, True) if tta.tta_flip else (False,)
        probs = np.full((table.n_slices, len(LABELS)), np.nan, dtype=np.float32)
        chunk = 64 * self.options.batch_series
        for start in range(0, len(series_ids), chunk):
            part = table.subset(series_ids[start:start + chunk])
            everything = np.arange(len(part.series_uids))
            views = self.embed_table(member, part, everything, flips, advance=advance)
            probs[table.rows_of(series_ids[start:start + chunk])] = self.head_table(member, part, views, everything,
                                                                                    tta.tta_reverse)
        return probs

    # --- the ensemble ---

    def predict_table(self, table: SeriesTable, reading: Reading = Reading(),
                      advance: Advance | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every series of ``table`` read by every member (its own TTA, slab thickness and calibration), averaged.

        Returns:
            probs: (n_slices, 6) float32.
            reasons: (n_slices,) str, how each slice was read ("" when as it is).
        """
        from ich3d.data.resample import resample_table

        reasons = np.full(table.n_slices, "", dtype=object)
        if len(table.series_uids) == 0:
            return np.zeros((0, len(LABELS)), dtype=np.float32), reasons
        members = []
        for k, model in enumerate(self.models):
            read, slab_of = table, np.arange(table.n_slices)
            if reading.resample == "auto":
                read, slab_of = resample_table(table, model.slice_spacing)
                reasons[read.slabs.count[slab_of] > 1] = f"thin series read as {model.slice_spacing:g} mm slabs"
            probs = self.predict_member(k, read, advance=advance)
            members.append(ensemble.member_probabilities(model, probs, reading.calibrate)[slab_of])
        return ensemble.average(members), reasons

    def predict_series(self, dataset: Dataset, series_id: str, reading: Reading = Reading()) -> np.ndarray:
        """(N, 6) float32 probabilities of one series of an opened dataset, in slice order.

        Raises:
            InputError: a series the dataset does not hold.
        """
        from ich3d.data.tables import build_table

        if series_id not in set(dataset.series["series_id"]):
            raise InputError(f"series {series_id!r} is not in {dataset.root}: see its index/series.parquet")
        return self.predict_table(build_table(dataset.root, dataset.slices, [series_id]), reading)[0]

    def predict_dataset(self, dataset: Dataset | Path, out: Path,
                        options: PredictOptions | None = None) -> PredictionResult:
        """Predicts every series a built dataset (opened, or its folder) chooses and writes ``out`` (``predictions.parquet``,
        ``submission.csv``, ``exams.csv``/``exams.json``, ``infer.json``), as ``ich3d infer --dataset``.

        Raises:
            InputError: a dataset of another crop, requested images without a prediction, an output
                folder in use or not writable.
        """
        from ich3d.inference.job import PredictOptions, run_job

        return run_job(self, out, options or PredictOptions(), dataset=dataset)

    def predict_folder(self, dicom_dirs: Path | Sequence[Path], out: Path,
                       options: PredictOptions | None = None) -> PredictionResult:
        """Builds ``out/dataset`` from DICOM (or NIfTI) folders with the series choice of
        :mod:`ich3d.dataset.roles` (target thickness: the members' training spacing) at the members'
        size and crop, then predicts it as :meth:`predict_dataset`: the path of ``ich3d infer --dicom-dir``.

        Called study after study by a long-running process: nothing is reloaded between calls.

        Raises:
            InputError: as :meth:`predict_dataset`, and unreadable inputs.
        """
        from ich3d.inference.job import PredictOptions, run_job

        dirs = [Path(dicom_dirs)] if isinstance(dicom_dirs, (str, Path)) else [Path(d) for d in dicom_dirs]
        return run_job(self, out, options or PredictOptions(), dicom_dirs=dirs)
