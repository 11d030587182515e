"""The engine that runs any training stage: optimiser, schedule, epochs, validation, best epoch, resume.

A stage is an object with a small protocol (:class:`Stage`); the engine owns everything the stages
share: AdamW with a warmup-cosine schedule, the per-epoch random streams derived from (seed, stage,
epoch), the step (:func:`train_step`, which ``scripts/bench_train.py`` times), validation on every
rank's share of the series, keeping the best epoch, and the resume state written after every epoch.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ich3d.checkpoint import save_checkpoint
from ich3d.config import Config, StageConfig
from ich3d.data.tables import SeriesTable
from ich3d.layout import FoldFolder
from ich3d.metrics import evaluate
from ich3d.models.model import IchModel
from ich3d.progress import progress_bar
from ich3d.runtime import Runtime, barrier, derive_seed, gather_objects, seed_everything


@dataclass(frozen=True)
class FoldData:
    """The series of one fold: ``train`` and ``valid`` tables, the training prevalence (6,) and the
    training series' median slice spacing (mm; inference resamples thinner series to it)."""

    fold: int
    train: SeriesTable
    valid: SeriesTable
    prevalence: np.ndarray
    slice_spacing: float


@dataclass
class StageContext:
    """What a stage is built from and the engine reports to.

    Attributes:
        config: the run's resolved config.
        runtime: device and distribution of this process.
        data: the fold's tables.
        folder: the fold's folder (checkpoints, metrics, caches).
        report: called on the main process with each epoch's record.
        progress: per-step progress bars (main process only).
        completed: stages finished so far, in order (stored in the resume state).
        other_folds: with out-of-fold training, the other folds' validation tables and fold folders
            (fold → (table, folder)): the sequence stage reads its training series' features from
            them; None for a single fold.
    """

    config: Config
    runtime: Runtime
    data: FoldData
    folder: FoldFolder
    report: Callable[[dict[str, Any]], None] = lambda record: None
    progress: bool = False
    completed: list[str] = field(default_factory=list)
    other_folds: dict[int, tuple[SeriesTable, FoldFolder]] | None = None


class Stage(Protocol):
    """A training stage, as the engine runs it.

    Attributes:
        name: ``slice``, ``sequence`` or ``finetune``.
        cfg: the stage's config section.
        model: the full model whose weights are checkpointed.
    """

    name: str
    cfg: StageConfig
    model: IchModel

    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch on this rank (for the schedule and progress)."""

    def parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimiser updates."""

    def train_mode(self) -> None:
        """Puts the model in training mode (frozen parts stay in eval mode)."""

    def batches(self, epoch: int, rng: np.random.Generator, generator: torch.Generator) -> Iterable[Any]:
        """This rank's batches of an epoch; ``rng`` draws the epoch's plan, ``generator`` augmentation."""

    def loss(self, batch: Any, generator: torch.Generator) -> torch.Tensor:
        """Forward pass and loss of one batch (a scalar, on the device)."""

    def predict_valid(self, series_ids: np.ndarray) -> np.ndarray:
        """(n_valid_slices, 6) probabilities of these validation series (NaN on other rows)."""

    def save(self, record: dict[str, Any]) -> None:
        """Writes the stage's checkpoints once it is done (main process), given the best record."""


def warmup_cosine(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """Learning-rate factor: linear warmup, then cosine decay to 0 at ``total_steps``."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def wrap_ddp(module: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` when running under torchrun; else the module."""
    if runtime.world_size == 1:
        return module
    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)


@dataclass
class Optimisation:
    """AdamW, its learning-rate schedule and the gradient scaler of one stage."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler

    @classmethod
    def of(cls, stage: Stage, runtime: Runtime) -> Optimisation:
        cfg = stage.cfg
        optimizer = torch.optim.AdamW(stage.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = warmup_cosine(cfg.epochs * stage.steps_per_epoch(), cfg.warmup_fraction)
        return cls(optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), runtime.grad_scaler())


def train_step(stage: Stage, batch: Any, generator: torch.Generator, optimisation: Optimisation) -> float:
    """One optimiser step on one batch: the stage's loss, backward, AdamW, schedule. Returns the loss."""
    optimizer, scaler = optimisation.optimizer, optimisation.scaler
    loss = stage.loss(batch, generator)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimisation.scheduler.step()
    return float(loss.detach())


def validate(stage: Stage, valid: SeriesTable, runtime: Runtime) -> tuple[dict[str, Any], np.ndarray]:
    """Validation metrics of the stage's per-slice probabilities, each rank predicting a share.

    Returns:
        (metrics of :func:`ich3d.metrics.evaluate`, (n_valid_slices, 6) probabilities).
    """
    mine = np.arange(runtime.rank, len(valid.series_uids), runtime.world_size)
    parts = gather_objects(stage.predict_valid(mine), runtime)
    probs = parts[0]
    for part in parts[1:]:
        probs = np.where(np.isnan(probs), part, probs)
    usable = valid.labeled_readable()
    series_ids = valid.series_uids[valid.series_of_slice()][usable]
    return evaluate(valid.labels[usable], probs[usable], series_ids=series_ids), probs


def save_resume_state(ctx: StageContext, payload: dict[str, Any]) -> None:
    """Writes ``last.pt`` (main process): ``payload`` plus the fold, the finished stages and the config."""
    if ctx.runtime.is_main:
        save_checkpoint(ctx.folder.last, {**payload, "fold": ctx.data.fold, "completed": list(ctx.completed),
                                          "config": ctx.config.to_dict()})
    barrier(ctx.runtime)


def run_stage(stage: Stage, ctx: StageContext, state: dict[str, Any] | None) -> dict[str, Any]:
    """Trains ``stage`` for its epochs (from ``state`` when resuming), keeping the best validation epoch.

    Args:
        stage: the stage object.
        ctx: the fold's context.
        state: this stage's resume state from ``last.pt``, or None.

    Returns:
        The best epoch's record (``stage``, ``epoch``, ``train_loss``, ``valid`` metrics, ``lr``,
        ``seconds``); the stage's model holds the best weights and its checkpoints are written.
    """
    optimisation = Optimisation.of(stage, ctx.runtime)
    best: dict[str, Any] = {"loss": math.inf, "epoch": -1, "state": None, "record": None}
    start = 0
    if state is not None:
        stage.model.load_state_dict(state["model"])
        optimisation.optimizer.load_state_dict(state["optimizer"])
        optimisation.scheduler.load_state_dict(state["scheduler"])
        best, start = state["best"], state["epoch"] + 1
    for epoch in range(start, stage.cfg.epochs):
        record = _epoch(stage, ctx, epoch, optimisation)
        if record["valid"]["weighted_log_loss"] < best["loss"]:
            best = {"loss": record["valid"]["weighted_log_loss"], "epoch": epoch,
                    "state": copy.deepcopy(stage.model.state_dict()), "record": record}
        save_resume_state(ctx, {"stage": stage.name, "epoch": epoch, "model": stage.model.state_dict(), "best": best,
                                "optimizer": optimisation.optimizer.state_dict(),
                                "scheduler": optimisation.scheduler.state_dict()})
        _log_epoch(ctx, record)
    stage.model.load_state_dict(best["state"])
    if ctx.runtime.is_main:
        stage.save(best["record"])
    barrier(ctx.runtime)
    return best["record"]


def _epoch(stage: Stage, ctx: StageContext, epoch: int, optimisation: Optimisation) -> dict[str, Any]:
    """One epoch of training and its validation; randomness derived from (seed, stage, epoch)."""
    seed, runtime = ctx.config.seed, ctx.runtime
    generator = seed_everything(derive_seed(seed, stage.name, epoch, runtime.rank))
    rng = np.random.default_rng(derive_seed(seed, stage.name, epoch))
    began = time.perf_counter()
    stage.train_mode()
    losses = []
    with progress_bar(ctx.progress and runtime.is_main, f"{stage.name} epoch {epoch}", stage.steps_per_epoch()) as advance:
        for batch in stage.batches(epoch, rng, generator):
            losses.append(train_step(stage, batch, generator, optimisation))
            advance(1)
    metrics, _ = validate(stage, ctx.data.valid, runtime)
    return {"fold": ctx.data.fold, "stage": stage.name, "epoch": epoch, "train_loss": float(np.mean(losses)),
            "valid": metrics,
            "lr": optimisation.scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - began, 2)}


def _log_epoch(ctx: StageContext, record: dict[str, Any]) -> None:
    if not ctx.runtime.is_main:
        return
    with open(ctx.folder.metrics, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    ctx.report(record)
