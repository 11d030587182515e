"""The three training stages: slice (encoder + slice head), sequence (GRU on cached embeddings),
finetune (end to end over series crops). Each is a small function over the shared engine."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ich3d.checkpoint import load_checkpoint, save_checkpoint
from ich3d.constants import ENCODER_CHECKPOINT, MODEL_CHECKPOINT
from ich3d.data.tables import SeriesTable, SliceDataset, batches, sample_slices
from ich3d.training.engine import RunContext, load_model, model_spec, run_epochs, save_model, wrap_ddp
from ich3d.training.losses import WeightedBCELoss
from ich3d.models.model import IchModel, build_model
from ich3d.inference.predictor import (encode_table, predict_from_embeddings, predict_table, sequence_index, series_input,
                           series_loader)
from ich3d.runtime import barrier, derive_seed, seed_everything
from ich3d.data.transforms import sample_augment, to_input

EMBEDDINGS_FILE = "embeddings.pt"


class SliceForward(nn.Module):
    """Encoder + head on single slices: (M, C, S, S) → (M, 1, 6) logits (the module DDP wraps)."""

    def __init__(self, model: IchModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.model.encode(x)[:, None]
        mask = torch.ones(emb.shape[:2], dtype=torch.bool, device=emb.device)
        return self.model.forward_embeddings(emb, mask, mask)


class EmbeddingForward(nn.Module):
    """The head alone on embedding sequences (B, N, F) → (B, N, 6) (the encoder is frozen)."""

    def __init__(self, model: IchModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, emb: torch.Tensor, mask: torch.Tensor, readable: torch.Tensor) -> torch.Tensor:
        return self.model.forward_embeddings(emb, mask, readable)


class SeriesForward(nn.Module):
    """End to end on series: kept slices (M, C, S, S) placed by ``keep`` (B, N) → (B, N, 6)."""

    def __init__(self, model: IchModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, keep: torch.Tensor, mask: torch.Tensor, readable: torch.Tensor) -> torch.Tensor:
        emb = self.model.encode(x)
        full = emb.new_zeros((*keep.shape, emb.shape[-1]))
        full[keep] = emb
        return self.model.forward_embeddings(full, mask, readable)


def _step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler) -> float:
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return float(loss.detach())


def _channels_last(x: torch.Tensor, ctx: RunContext) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if ctx.config.channels_last else x


def _to_device(model: IchModel, ctx: RunContext) -> IchModel:
    """The model on the run's device, in channels_last memory format when configured."""
    model = model.to(ctx.runtime.device)
    return model.to(memory_format=torch.channels_last) if ctx.config.channels_last else model


def slice_stage(ctx: RunContext, state: dict[str, Any] | None) -> dict[str, Any]:
    """Stage 1: encoder + per-slice head on sampled single slices (positives oversampled)."""
    cfg, data, runtime = ctx.config.stages["slice"], ctx.config.data, ctx.runtime
    spec = model_spec(ctx.config, head="slice")
    seed_everything(derive_seed(ctx.config.seed, "slice", "init"))
    model = _to_device(build_model(spec, data.in_channels), ctx)
    trainable = wrap_ddp(SliceForward(model), runtime)
    criterion, scaler = WeightedBCELoss(), runtime.grad_scaler()
    count = cfg.samples_per_epoch or int(ctx.train.labeled_readable().sum())
    steps = math.ceil(count // runtime.world_size / cfg.batch_size)
    context = data.context if data.input == "bsb25d" else 0

    def train_epoch(epoch: int, rng: np.random.Generator, generator: torch.Generator, optimizer: Any, scheduler: Any) -> float:
        ids = sample_slices(ctx.train, cfg.samples_per_epoch, cfg.positive_fraction, rng)
        plan = list(batches(np.arange(len(ids)), cfg.batch_size, runtime.rank, runtime.world_size))
        loader = DataLoader(SliceDataset(ctx.train, ids, context), batch_sampler=plan,
                            num_workers=ctx.config.num_workers, pin_memory=runtime.device.type == "cuda")
        model.train()
        losses = []
        with ctx.step_bar(f"slice epoch {epoch}", len(plan)) as advance:
            for hu, target in loader:
                params = sample_augment(len(hu), ctx.config.augment, generator)
                x = _channels_last(to_input(hu.to(runtime.device, non_blocking=True), data.image_size, params, True), ctx)
                with runtime.autocast():
                    logits = trainable(x)[:, 0].float()
                losses.append(_step(criterion(logits, target.to(runtime.device)), optimizer, scheduler, scaler))
                advance(1)
        return float(np.mean(losses))

    record = run_epochs(ctx, "slice", model, cfg, steps, train_epoch, _table_predictor(ctx, model), state)
    save_model(ctx, ctx.out / ENCODER_CHECKPOINT, model, spec, record)
    if ctx.config.stage_names() == ["slice"]:
        save_model(ctx, ctx.out / MODEL_CHECKPOINT, model, spec, record)
    return record


def _table_predictor(ctx: RunContext, model: IchModel) -> Any:
    def predict(series_ids: np.ndarray) -> np.ndarray:
        return predict_table(model, ctx.valid, ctx.config.data, ctx.runtime, series_ids,
                             num_workers=ctx.config.num_workers)
    return predict


def _model_from_encoder(ctx: RunContext) -> tuple[IchModel, dict[str, Any]]:
    """The configured sequence model with the slice stage's encoder weights."""
    spec = model_spec(ctx.config)
    seed_everything(derive_seed(ctx.config.seed, "sequence", "init"))
    model = build_model(spec, ctx.config.data.in_channels, load_weights=False)
    trained = load_checkpoint(ctx.out / ENCODER_CHECKPOINT)["state_dict"]
    model.encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in trained.items() if k.startswith("encoder.")})
    return _to_device(model, ctx), spec


def _embeddings(ctx: RunContext, model: IchModel) -> dict[str, list[torch.Tensor]]:
    """Plain and flipped embeddings of every training and validation slice, cached in the run folder.

    Each rank embeds a share of the series and writes it; the shares are then summed (rows of other
    ranks' series are zero).
    """
    path = ctx.out / EMBEDDINGS_FILE
    if not path.is_file():
        runtime = ctx.runtime
        part = {}
        for name, table in (("train", ctx.train), ("valid", ctx.valid)):
            mine = np.arange(runtime.rank, len(table.series_uids), runtime.world_size)
            views = encode_table(model, table, ctx.config.data, runtime, mine, (False, True),
                                 num_workers=ctx.config.num_workers)
            part[name] = [view.half() for view in views]
        _merge_rank_parts(ctx, part, path)
    cached = load_checkpoint(path)
    return {name: [view.float() for view in cached[name]] for name in ("train", "valid")}


def _merge_rank_parts(ctx: RunContext, part: dict[str, list[torch.Tensor]], path: Path) -> None:
    runtime = ctx.runtime
    rank_file = path.with_name(f"{path.stem}.rank{runtime.rank}.pt")
    save_checkpoint(rank_file, part)
    barrier(runtime)
    if runtime.is_main:
        parts = [load_checkpoint(path.with_name(f"{path.stem}.rank{r}.pt")) for r in range(runtime.world_size)]
        merged = {name: [sum(p[name][v] for p in parts) for v in range(2)] for name in ("train", "valid")}
        save_checkpoint(path, merged)
        for r in range(runtime.world_size):
            path.with_name(f"{path.stem}.rank{r}.pt").unlink()
    barrier(runtime)


def _crop_plan(table: SeriesTable, crop_len: int, rng: np.random.Generator) -> np.ndarray:
    """(n_series,) random first slice of each series' training crop (0 when it fits)."""
    room = np.maximum(table.lengths - crop_len, 0) if crop_len else np.zeros(len(table.lengths), dtype=np.int64)
    return (rng.random(len(room)) * (room + 1)).astype(np.int64)


def _hide_slices(readable: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Marks a random share ``rate`` of readable slices as unreadable (model input only)."""
    if rate == 0:
        return readable
    return readable & (torch.rand(readable.shape, generator=generator) >= rate)


def sequence_stage(ctx: RunContext, state: dict[str, Any] | None) -> dict[str, Any]:
    """Stage 2: the sequence head on cached per-slice embeddings of whole series (or crops)."""
    cfg, runtime = ctx.config.stages["sequence"], ctx.runtime
    model, spec = _model_from_encoder(ctx)
    views = _embeddings(ctx, model)
    model.encoder.requires_grad_(False)
    trainable = wrap_ddp(EmbeddingForward(model), runtime)
    criterion, scaler = WeightedBCELoss(), runtime.grad_scaler()
    stacked = torch.stack(views["train"])  # (V, n_slices, F)
    steps = math.ceil(len(ctx.train.series_uids) // runtime.world_size / cfg.batch_size)

    def train_epoch(epoch: int, rng: np.random.Generator, generator: torch.Generator, optimizer: Any, scheduler: Any) -> float:
        order, starts = rng.permutation(len(ctx.train.series_uids)), _crop_plan(ctx.train, cfg.crop_len, rng)
        view_of = torch.from_numpy(rng.integers(len(stacked), size=len(order)))
        model.train()
        model.encoder.eval()
        losses = []
        for chunk in batches(order, cfg.batch_size, runtime.rank, runtime.world_size):
            index, mask = sequence_index(ctx.train, chunk, starts=starts[chunk], crop_len=cfg.crop_len)
            emb = stacked[view_of[chunk][:, None], index]
            readable = torch.from_numpy(ctx.train.readable)[index] & mask
            labels = torch.from_numpy(ctx.train.labels)[index]
            shown = _hide_slices(readable, cfg.drop_slices, generator)
            with runtime.autocast():
                logits = trainable(*(t.to(runtime.device) for t in (emb, mask, shown))).float()
            loss = criterion(logits, labels.to(runtime.device), (readable & mask).to(runtime.device))
            losses.append(_step(loss, optimizer, scheduler, scaler))
        return float(np.mean(losses))

    def predict(series_ids: np.ndarray) -> np.ndarray:
        return predict_from_embeddings(model, ctx.valid, views["valid"][:1], runtime, series_ids)

    record = run_epochs(ctx, "sequence", model, cfg, steps, train_epoch, predict, state)
    save_model(ctx, ctx.out / MODEL_CHECKPOINT, model, spec, record)
    return record


def finetune_stage(ctx: RunContext, state: dict[str, Any] | None) -> dict[str, Any]:
    """Stage 3: encoder and head end to end over augmented series crops."""
    cfg, data, runtime = ctx.config.stages["finetune"], ctx.config.data, ctx.runtime
    if (ctx.out / MODEL_CHECKPOINT).is_file():
        model, checkpoint = load_model(ctx.out / MODEL_CHECKPOINT, runtime.device)
        model, spec = _to_device(model, ctx), checkpoint["model"]
    else:
        model, spec = _model_from_encoder(ctx)
    trainable = wrap_ddp(SeriesForward(model), runtime)
    criterion, scaler = WeightedBCELoss(), runtime.grad_scaler()
    steps = math.ceil(len(ctx.train.series_uids) // runtime.world_size / cfg.batch_size)

    def train_epoch(epoch: int, rng: np.random.Generator, generator: torch.Generator, optimizer: Any, scheduler: Any) -> float:
        order, starts = rng.permutation(len(ctx.train.series_uids)), _crop_plan(ctx.train, cfg.crop_len, rng)
        mine = np.concatenate(list(batches(order, len(order), runtime.rank, runtime.world_size)))
        loader = series_loader(ctx.train, mine, cfg.batch_size, ctx.config.num_workers, runtime,
                               cfg.crop_len, starts[mine])
        model.train()
        losses = []
        with ctx.step_bar(f"finetune epoch {epoch}", len(loader)) as advance:
            for batch in loader:
                params = sample_augment(len(batch["hu"]), ctx.config.augment, generator)
                x, keep = series_input(batch, data, runtime, params)
                mask, readable = batch["mask"].to(runtime.device), batch["readable"].to(runtime.device)
                with runtime.autocast():
                    logits = trainable(_channels_last(x, ctx), keep, mask, readable).float()
                loss = criterion(logits, batch["labels"].to(runtime.device), readable & mask)
                losses.append(_step(loss, optimizer, scheduler, scaler))
                advance(1)
        return float(np.mean(losses))

    record = run_epochs(ctx, "finetune", model, cfg, steps, train_epoch, _table_predictor(ctx, model), state)
    save_model(ctx, ctx.out / MODEL_CHECKPOINT, model, spec, record)
    return record
