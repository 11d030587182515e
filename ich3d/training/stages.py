"""The three training stages as objects the engine runs (:class:`ich3d.training.engine.Stage`).

slice: encoder + per-slice head on sampled single slices (positives oversampled);
sequence: the sequence head on cached embeddings of whole series (or crops), the encoder frozen;
finetune: encoder and head end to end over augmented series crops.
Each builds its model and trainable module, plans an epoch's batches, computes one batch's loss and
predicts validation series; the engine (:mod:`ich3d.training.engine`) does the rest.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ich3d.config import FinetuneStageConfig, InferConfig, SequenceStageConfig, SliceStageConfig, StageConfig
from ich3d.data.acquisition import epoch_acquisition
from ich3d.data.batching import AugmentedView, sequence_index, series_input, series_loader
from ich3d.data.datasets import SeriesDataset, SliceDataset
from ich3d.data.samplers import batches, sample_slices, sampling_logit_offset
from ich3d.data.tables import SeriesTable
from ich3d.data.transforms import sample_augment, to_input
from ich3d.inference.predictor import Predictor, RuntimeOptions
from ich3d.models.io import Provenance, TrainedFacts, TrainedModel, load_trained, load_weights, model_spec, save_model
from ich3d.models.model import IchModel, build_model
from ich3d.runtime import derive_seed, seed_everything
from ich3d.training.embeddings import Embeddings, OutOfFold, cached_embeddings, fingerprint, out_of_fold
from ich3d.training.engine import StageContext, wrap_ddp
from ich3d.training.losses import WeightedBCELoss


class _Stage:
    """What the stages share: the context, the loss, device placement and checkpoint writing."""

    name = ""

    def __init__(self, ctx: StageContext, cfg: StageConfig) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.runtime = ctx.runtime
        self.criterion = WeightedBCELoss(label_smoothing=cfg.label_smoothing)

    def _place(self, model: IchModel) -> IchModel:
        """The model on the run's device, in channels_last memory format when configured."""
        model = model.to(self.runtime.device)
        return model.to(memory_format=torch.channels_last) if self.ctx.config.channels_last else model

    def _channels_last(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.ctx.config.channels_last else x

    def _steps(self, items: int) -> int:
        return math.ceil(items // self.runtime.world_size / self.cfg.batch_size)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def train_mode(self) -> None:
        self.model.train()

    def _save(self, path: Any, record: dict[str, Any]) -> None:
        data = self.ctx.data
        origin = Provenance(fold=data.fold, stage=record["stage"], epoch=record["epoch"], metrics=record["valid"])
        save_model(path, self.model, self.ctx.config, TrainedFacts(self.spec, data.prevalence, data.slice_spacing,
                                                                   origin))

    def predictor(self) -> Predictor:
        """The model being trained as a one-member :class:`Predictor` (no TTA, no calibration): what
        validation and the embedding caches run."""
        trained = TrainedModel(self.model, self.spec, self.ctx.config.data, InferConfig(tta_flip=False, tta_reverse=False),
                               self.ctx.data.prevalence, self.ctx.data.slice_spacing)
        return Predictor([trained], self.runtime, stage_runtime(self.ctx))

    def _predict_table(self, series_ids: np.ndarray) -> np.ndarray:
        return self.predictor().predict_member(0, self.ctx.data.valid, series_ids)

    def model_from_encoder(self, spec: dict[str, Any]) -> IchModel:
        """The series model of ``spec``, with the slice stage's encoder weights (and classifier, as the
        projection of ``model.features: logits``)."""
        seed_everything(derive_seed(self.ctx.config.seed, "sequence", "init"))
        model = build_model(spec, self.ctx.config.data.in_channels, load_weights=False)
        trained = load_weights(self.ctx.folder.encoder)
        model.encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in trained.items()
                                       if k.startswith("encoder.")})
        if model.projection is not None:  # the slice head's classifier (and its sampling correction)
            model.projection.load_state_dict({name: trained[f"head.{name}"] for name in
                                              ("out.weight", "out.bias", "logit_offset")})
        return self._place(model)


class SliceStage(_Stage):
    """Stage 1: encoder + per-slice head on single slices, ``positive_fraction`` of them positive.

    A batch is ``(hu, target)``: (M, K, S0, S0) int16 HU (K neighbours for 2.5D) and (M, 6) labels.
    """

    name = "slice"
    cfg: SliceStageConfig

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx, ctx.config.stages.slice)
        self.spec = model_spec(ctx.config, head="slice")
        seed_everything(derive_seed(ctx.config.seed, "slice", "init"))
        model = build_model(self.spec, ctx.config.data.in_channels)
        offset = sampling_logit_offset(ctx.data.train, self.cfg.positive_fraction)
        model.head.logit_offset.copy_(torch.from_numpy(offset))
        self.model = self._place(model)
        self.trainable = wrap_ddp(self.model, self.runtime)
        data = ctx.config.data
        self.context = data.context if data.input == "bsb25d" else 0

    def steps_per_epoch(self) -> int:
        return self._steps(self.cfg.samples_per_epoch or int(self.ctx.data.train.labeled_readable().sum()))

    def batches(self, epoch: int, rng: np.random.Generator, generator: torch.Generator) -> Iterator[Any]:
        train = self.ctx.data.train
        ids = sample_slices(train, self.cfg.samples_per_epoch, self.cfg.positive_fraction, rng)
        plan = list(batches(np.arange(len(ids)), self.cfg.batch_size, self.runtime.rank, self.runtime.world_size))
        acquisition = epoch_acquisition(self.ctx.config.augment, self.ctx.config.seed, epoch)
        yield from DataLoader(SliceDataset(train, ids, self.context, acquisition), batch_sampler=plan,
                              num_workers=self.ctx.config.num_workers, pin_memory=self.runtime.device.type == "cuda")

    def loss(self, batch: Any, generator: torch.Generator) -> torch.Tensor:
        hu, target = batch
        device = self.runtime.device
        params = sample_augment(len(hu), self.ctx.config.augment, generator)
        x = self._channels_last(to_input(hu.to(device, non_blocking=True), self.ctx.config.data.image_size, params,
                                         augment=True))
        single = torch.ones((len(x), 1), dtype=torch.bool, device=device)
        with self.runtime.autocast():
            logits = self.trainable(x, single, single)[:, 0].float()
        return self.criterion(logits, target.to(device))

    def predict_valid(self, series_ids: np.ndarray) -> np.ndarray:
        return self._predict_table(series_ids)

    def save(self, record: dict[str, Any]) -> None:
        self._save(self.ctx.folder.encoder, record)
        if self.ctx.config.stages.names() == ["slice"]:
            self._save(self.ctx.folder.model, record)


def stage_runtime(ctx: StageContext) -> RuntimeOptions:
    """The batch size and loader workers training's predictions run with."""
    return RuntimeOptions(batch_series=4, loader_workers=ctx.config.num_workers)


def _embedding_key(ctx: StageContext) -> dict[str, Any]:
    return {"fold": ctx.data.fold, "encoder": fingerprint(ctx.folder.encoder)}


def augmented_views(ctx: StageContext) -> tuple[AugmentedView, ...]:
    """The config's augmented embedding views (``stages.sequence.augmented_views``; docs/design.md §4)."""
    sequence = ctx.config.stages.sequence
    count = sequence.augmented_views if sequence is not None else 0
    return tuple(AugmentedView(ctx.config.augment, ctx.config.seed, v) for v in range(count))


def embed_validation(ctx: StageContext, model: IchModel | None = None) -> Embeddings:
    """The fold's validation embeddings by its own encoder, cached in the fold folder: plain and flipped
    (what validation scores, with the inference TTA) and the augmented views.

    Out-of-fold training computes them for every fold before any sequence stage: they are also the
    training features of the other folds' sequence heads, augmented views included.
    """
    stage = _Stage(ctx, ctx.config.stages.slice)  # for its model placement and predictor; it trains nothing
    stage.spec = model_spec(ctx.config)
    stage.model = stage.model_from_encoder(stage.spec) if model is None else model
    return cached_embeddings(stage.predictor(), ctx.data.valid, ctx.folder.embedding_set("valid"), _embedding_key(ctx),
                             (False, True), augmented_views(ctx))


def crop_starts(table: SeriesTable, crop_len: int, rng: np.random.Generator) -> np.ndarray:
    """(n_series,) random first slice of each series' training crop (0 when it fits)."""
    room = np.maximum(table.lengths - crop_len, 0) if crop_len else np.zeros(len(table.lengths), dtype=np.int64)
    return (rng.random(len(room)) * (room + 1)).astype(np.int64)


def hide_slices(readable: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Marks a random share ``rate`` of readable slices as unreadable (model input only)."""
    if rate == 0:
        return readable
    return readable & (torch.rand(readable.shape, generator=generator) >= rate)


class SequenceStage(_Stage):
    """Stage 2: the sequence head on cached embeddings of whole series (or crops); encoder frozen.

    The embeddings (plain, flipped and ``augmented_views`` augmented views of every training and
    validation slice; validation scores the first two) are computed once per fold into
    ``fold_<K>/embeddings/`` (:mod:`ich3d.training.embeddings`).
    A batch is a dict of ``index``/``mask`` (B, N) and ``view`` (B,) (which view each series is
    drawn from this epoch).
    """

    name = "sequence"
    cfg: SequenceStageConfig

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx, ctx.config.stages.sequence)
        self.spec = model_spec(ctx.config)
        self.model = self.model_from_encoder(self.spec)
        self.model.encoder.requires_grad_(False)
        if self.model.projection is not None:
            self.model.projection.requires_grad_(False)
        self.valid_embeddings = embed_validation(ctx, self.model)
        if ctx.other_folds is None:
            self.train_embeddings: Embeddings | OutOfFold = cached_embeddings(
                self.predictor(), ctx.data.train, ctx.folder.embedding_set("train"), _embedding_key(ctx), (False, True),
                augmented_views(ctx))
        else:  # each training series embedded by the encoder of the fold that held it out
            self.train_embeddings = out_of_fold(ctx.data.train, {j: table for j, (table, _) in ctx.other_folds.items()},
                                                {j: folder.embedding_set("valid") for j, (_, folder) in
                                                 ctx.other_folds.items()})
        self.trainable = wrap_ddp(self.model.head, self.runtime)

    def steps_per_epoch(self) -> int:
        return self._steps(len(self.ctx.data.train.series_uids))

    def train_mode(self) -> None:
        self.model.train()
        self.model.encoder.eval()
        if self.model.projection is not None:
            self.model.projection.eval()

    def batches(self, epoch: int, rng: np.random.Generator, generator: torch.Generator) -> Iterator[Any]:
        train = self.ctx.data.train
        order, starts = rng.permutation(len(train.series_uids)), crop_starts(train, self.cfg.crop_len, rng)
        view_of = rng.integers(len(self.train_embeddings.views), size=len(order))
        for chunk in batches(order, self.cfg.batch_size, self.runtime.rank, self.runtime.world_size):
            index, mask = sequence_index(train, chunk, starts=starts[chunk], crop_len=self.cfg.crop_len)
            yield {"index": index, "mask": mask, "view": view_of[chunk]}

    def loss(self, batch: Any, generator: torch.Generator) -> torch.Tensor:
        train, device = self.ctx.data.train, self.runtime.device
        index, mask = batch["index"], batch["mask"]
        emb = self.train_embeddings.gather(batch["view"], index)
        readable = torch.from_numpy(train.readable)[index] & mask
        labels = torch.from_numpy(train.labels)[index]
        shown = hide_slices(readable, self.cfg.drop_slices, generator)
        with self.runtime.autocast():
            logits = self.trainable(*(t.to(device) for t in (emb, mask, shown))).float()
        return self.criterion(logits, labels.to(device), (readable & mask).to(device))

    def predict_valid(self, series_ids: np.ndarray) -> np.ndarray:
        return self.predictor().head_table(0, self.ctx.data.valid, self.valid_embeddings.tta, series_ids)

    def save(self, record: dict[str, Any]) -> None:
        self._save(self.ctx.folder.model, record)


class FinetuneStage(_Stage):
    """Stage 3: encoder and head end to end over augmented series crops.

    Starts from the fold's ``model.pt`` when the sequence stage wrote one, else from the encoder.
    A batch is a padded series batch of :func:`ich3d.data.datasets.pad_series`.
    """

    name = "finetune"
    cfg: FinetuneStageConfig

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx, ctx.config.stages.finetune)
        if ctx.folder.model.is_file():
            trained = load_trained(ctx.folder.model, self.runtime.device)
            self.model, self.spec = self._place(trained.module), trained.spec
        else:
            self.spec = model_spec(ctx.config)
            self.model = self.model_from_encoder(self.spec)
        self.trainable = wrap_ddp(self.model, self.runtime)

    def steps_per_epoch(self) -> int:
        return self._steps(len(self.ctx.data.train.series_uids))

    def batches(self, epoch: int, rng: np.random.Generator, generator: torch.Generator) -> Iterator[Any]:
        train, runtime = self.ctx.data.train, self.runtime
        order, starts = rng.permutation(len(train.series_uids)), crop_starts(train, self.cfg.crop_len, rng)
        mine = np.concatenate(list(batches(order, len(order), runtime.rank, runtime.world_size)))
        acquisition = epoch_acquisition(self.ctx.config.augment, self.ctx.config.seed, epoch)
        dataset = SeriesDataset(train, mine, self.cfg.crop_len, starts[mine], acquisition)
        yield from series_loader(dataset, self.cfg.batch_size, self.ctx.config.num_workers, runtime)

    def loss(self, batch: Any, generator: torch.Generator) -> torch.Tensor:
        device = self.runtime.device
        params = sample_augment(len(batch["hu"]), self.ctx.config.augment, generator)
        x, keep = series_input(batch, self.ctx.config.data, self.runtime, params)
        mask, readable = batch["mask"].to(device), batch["readable"].to(device)
        shown = hide_slices(batch["readable"], self.cfg.drop_slices, generator).to(device)
        x = x[shown[keep]] if self.cfg.drop_slices else x
        with self.runtime.autocast():
            logits = self.trainable(self._channels_last(x), mask, shown).float()
        return self.criterion(logits, batch["labels"].to(device), readable & mask)

    def predict_valid(self, series_ids: np.ndarray) -> np.ndarray:
        return self._predict_table(series_ids)

    def save(self, record: dict[str, Any]) -> None:
        self._save(self.ctx.folder.model, record)


#: The stages by name, in the order they run.
STAGES: dict[str, type[_Stage]] = {"slice": SliceStage, "sequence": SequenceStage, "finetune": FinetuneStage}
